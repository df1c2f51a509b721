"""The other models' per-sample tables of an evaluation: read from their evaluation directories
(the CLI's --oracle DIR and --target DIR) and joined to the evaluated model's rows by (split, id).

The oracle's table is passed to the metrics as it is (`forgetlab.metrics.compute_metrics`); it is
also the reference table of mia_reference, as open-unlearning's retain model. The target's scores
are attached to the model's rows as TARGET_COLUMNS, for the relearning attack's metric.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from forgetlab.metrics import EvalInputError

# what each input is and how it is given, for error messages
INPUTS = {
    "oracle": "the oracle's per-sample table (--oracle DIR with DIR/samples.parquet, "
              "results/<study>/eval/<reg>/seed<k>/<split>/oracle/samples.parquet)",
    "target": "the target's per-sample table (--target DIR with DIR/samples.parquet, "
              "results/<study>/eval/<reg>/seed<k>/<split>/target/samples.parquet)",
}
OPTIONS = {"oracle": "--oracle", "target": "--target"}
# the table of a metric's contract (`forgetlab.metrics.uses`) -> the input that provides it
SOURCES = {"oracle": "oracle", "reference": "oracle", "target": "target"}
# the target's columns -> their names on the model's rows
TARGET_COLUMNS = {"prob": "target_prob", "rouge_l_recall": "target_rouge_l_recall"}


def read_table(directory: Path, role: str) -> pd.DataFrame:
    """The per-sample table of another evaluation (the oracle's or the target's)."""
    path = Path(directory) / "samples.parquet"
    if not path.exists():
        raise EvalInputError(f"{OPTIONS[role]} {directory}: {path} not found ({INPUTS[role]})")
    return pd.read_parquet(path)


def attach_columns(samples: pd.DataFrame, table: pd.DataFrame, columns: dict[str, str], needed: tuple[str, ...],
                   role: str, where: Path) -> pd.DataFrame:
    """Add another evaluation's per-sample `columns` (its name -> the name here) to the rows of the
    same (split, id); every row of the `needed` splits must get them."""
    missing = [c for c in columns if c not in table]
    if missing:
        raise EvalInputError(f"{role} table {where} has no column(s) {', '.join(missing)}")
    other = table[["split", "id", *columns]].rename(columns=columns)
    if other.duplicated(["split", "id"]).any():
        raise EvalInputError(f"{role} table {where}: duplicate (split, id) rows")
    out = samples.merge(other, on=["split", "id"], how="left")
    first = next(iter(columns.values()))
    lost = out["split"].isin(needed) & out[first].isna()
    if lost.any():
        ids = out.loc[lost, "id"].tolist()
        raise EvalInputError(f"{role} table {where} lacks {len(ids)} {'/'.join(needed)} row(s) of this "
                             f"evaluation, e.g. {ids[0]!r}: was it evaluated on the same split and data?")
    return out


def attach_target(samples: pd.DataFrame, target: pd.DataFrame, where: Path) -> pd.DataFrame:
    """Add TARGET_COLUMNS, the target's scores of the same (split, id), for the relearning attack
    (the target itself passes its own table)."""
    return attach_columns(samples, target, TARGET_COLUMNS, ("forget",), "target", where)
