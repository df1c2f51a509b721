"""Plain per-split means of the per-sample table.

* ``{split}_prob``  = mean length-normalised answer probability P(a|q)^(1/|a|) (TOFU "Prob.");
* ``{split}_rouge`` = mean ROUGE-L recall of the greedy answer against the true answer.

Registered by name for the four known splits (NaN when the split is missing), plus ``split_means``
returning a dict with both keys for every split present in the table.
"""

from __future__ import annotations

from forgetlab.metrics import METRICS, mean_or_nan, split_values

SPLITS = ("forget", "retain", "holdout", "world_facts")
COLUMNS = {"prob": "prob", "rouge": "rouge_l_recall"}


def split_mean(samples, split: str, key: str) -> float:
    return mean_or_nan(split_values(samples, split, COLUMNS[key]))


def _register(split: str, key: str) -> None:
    @METRICS.register(f"{split}_{key}")
    def metric(samples, oracle=None) -> float:
        return split_mean(samples, split, key)

    metric.__name__ = f"{split}_{key}"
    metric.__doc__ = f"Mean {COLUMNS[key]} on the {split} split (NaN if absent)."


for _split in SPLITS:
    for _key in COLUMNS:
        _register(_split, _key)


@METRICS.register("split_means")
def split_means(samples, oracle=None) -> dict[str, float]:
    present = [] if samples is None or len(samples) == 0 else list(dict.fromkeys(samples["split"]))
    return {f"{s}_{k}": split_mean(samples, s, k) for s in present for k in COLUMNS}
