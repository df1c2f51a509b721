"""Plain per-split means of the per-sample table.

* ``{split}_prob``  = mean length-normalised answer probability P(a|q)^(1/|a|), eos included
  (TOFU "Prob.", open-unlearning's *_Q_A_Prob; for real authors and world facts TOFU's utility
  normalises over the options instead: *_option_prob);
* ``{split}_rouge`` = mean ROUGE-L recall (rouge-score, stemming) of the greedy answer against the
  true answer (TOFU "ROUGE", open-unlearning's *_Q_A_ROUGE with rougeL_recall).

Registered by name for the five known splits (an error naming the split when it is missing),
plus ``split_means`` returning a dict with both keys for every split present in the table.
"""

from __future__ import annotations

from forgetlab.metrics import METRICS, EvalInputError, require_values, uses

SPLITS = ("forget", "retain", "holdout", "real_authors", "world_facts")
COLUMNS = {"prob": "prob", "rouge": "rouge_l_recall"}


def split_mean(samples, split: str, key: str, metric: str | None = None) -> float:
    return float(require_values(samples, split, COLUMNS[key], metric or f"{split}_{key}").mean())


def _register(split: str, key: str) -> None:
    @METRICS.register(f"{split}_{key}")
    @uses(columns=(COLUMNS[key],))
    def metric(samples, oracle=None, role="model") -> float:
        return split_mean(samples, split, key)

    metric.__name__ = f"{split}_{key}"
    metric.__doc__ = f"Mean {COLUMNS[key]} on the {split} split (an error if absent)."


for _split in SPLITS:
    for _key in COLUMNS:
        _register(_split, _key)


@METRICS.register("split_means")
@uses(columns=COLUMNS.values())
def split_means(samples, oracle=None, role="model") -> dict[str, float]:
    present = [] if samples is None or len(samples) == 0 else list(dict.fromkeys(samples["split"]))
    if not present:
        raise EvalInputError("metric 'split_means': the per-sample table is empty")
    return {f"{s}_{k}": split_mean(samples, s, k, "split_means") for s in present for k in COLUMNS}
