"""Aggregate metrics over a per-sample score table (see `forgetlab.eval.scoring`).

A metric is a function ``(samples, oracle=None, role="model") -> float | dict[str, float]``
registered with ``@METRICS.register(name)`` and declaring its contract with ``@uses(tables=...,
columns=...)``. ``samples`` is the evaluated model's per-sample table, ``oracle`` the retain-only
oracle's table (or None), which is also the reference table: the reference model of
mia_reference is the oracle, as open-unlearning's retain model. ``role`` is the evaluated model's
role in the study (``params["model"]``); ``"oracle"`` says that the table is the oracle's own,
so that ``compute_metrics`` makes it its own oracle and reference and the metrics defined
relative to the oracle give their values by definition (privleak 0, relearn_recovery 0). A
metric returning a dict contributes each of its keys to the result of ``compute_metrics``
(flattened, the metric's own name is not used). Adding a metric is adding one module to this
package.

The contract (`Uses`): the tables a metric reads, out of TABLES, and the per-sample columns it
reads from them (besides the keys ``split`` and ``id``). A "target" table means the target's
scores attached to the model's rows as ``target_*`` columns. The evaluation (`forgetlab.eval.plan`)
reads the contracts of the configured metrics to know which tables a model needs and which
passes to run; a metric reads nothing it does not declare (tests/test_metrics_all.py).

Inputs are checked, never papered over: a metric that needs the oracle's table and gets None, a
split with no rows or no values, or a result that is not finite raises ``EvalInputError`` naming
the metric, the split and the missing input, so no NaN reaches a summary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from forgetlab.registry import Registry, import_all

METRICS = Registry("metric")

# the tables a metric may read: the evaluated model's, the oracle's, the reference model's (the
# oracle's, as in open-unlearning) and the target's (its columns attached to the model's rows)
TABLES = ("model", "oracle", "reference", "target")
KEYS = ("split", "id")  # the columns every table has, read by any metric without declaring them


class EvalInputError(ValueError):
    """An evaluation input is missing, empty or unusable; the message names it."""


@dataclass(frozen=True)
class Uses:
    """A metric's contract: the tables (of TABLES) and the per-sample columns it reads."""

    tables: tuple[str, ...]
    columns: tuple[str, ...]

    def __post_init__(self):
        unknown = [t for t in self.tables if t not in TABLES]
        if unknown or "model" not in self.tables:
            raise ValueError(f"a metric's tables are among {', '.join(TABLES)} and include 'model', "
                             f"got {', '.join(self.tables)}")
        if not self.columns:
            raise ValueError("a metric declares the per-sample columns it reads")


def uses(tables=("model",), columns=()):
    """Declare a metric's contract (`Uses`): the tables it reads and the per-sample columns."""
    contract = Uses(tuple(tables), tuple(dict.fromkeys(columns)))

    def deco(fn):
        fn.uses = contract
        return fn
    return deco


def uses_of(name: str) -> Uses:
    """The declared contract of the registered metric ``name``."""
    contract = getattr(METRICS.get(name), "uses", None)
    if contract is None:
        raise TypeError(f"metric {name!r} declares no contract: decorate it with @uses(tables=..., columns=...)")
    return contract


def require_oracle(oracle: pd.DataFrame | None, metric: str) -> pd.DataFrame:
    if oracle is None:
        raise EvalInputError(f"metric {metric!r} needs the oracle's per-sample table, and none was given")
    return oracle


def split_values(samples: pd.DataFrame | None, split: str, column: str) -> pd.Series:
    """Non-NaN values of ``column`` on rows with ``split == split`` (empty if none)."""
    if samples is None or len(samples) == 0 or column not in samples:
        return pd.Series([], dtype=float)
    return samples.loc[samples["split"] == split, column].astype(float).dropna()


def split_rows(samples: pd.DataFrame, split: str, metric: str, columns=(), table: str = "model") -> pd.DataFrame:
    """The rows of ``split``; an error naming the metric if there are none or a column is missing."""
    missing = [c for c in columns if c not in samples]
    if missing:
        raise EvalInputError(f"metric {metric!r}: the {table}'s per-sample table has no column(s) "
                             f"{', '.join(missing)} (written by an older forgetlab? re-run its evaluation)")
    rows = samples[samples["split"] == split] if len(samples) else samples
    if len(rows) == 0:
        present = sorted(set(samples["split"])) if len(samples) else []
        raise EvalInputError(f"metric {metric!r}: split {split!r} has no rows in the {table}'s per-sample "
                             f"table (splits present: {', '.join(present) or 'none'})")
    return rows


def require_values(samples: pd.DataFrame, split: str, column: str, metric: str, table: str = "model") -> pd.Series:
    """Non-NaN values of ``column`` on ``split``; an error naming the metric if there are none."""
    values = split_values(split_rows(samples, split, metric, [column], table), split, column)
    if len(values) == 0:
        raise EvalInputError(f"metric {metric!r}: no {column} values on split {split!r} of the {table}'s table")
    return values


def answer_tokens(values, metric: str, eos: bool = False) -> np.ndarray:
    """One answer's per-token values (a cell of an answer_token_* column) as a token-level metric
    sees them. The columns hold one value per token of " " + answer + eos; open-unlearning's
    token-level statistics (``tokenwise_logprobs``, ``tokenwise_vocab_logprobs``: Min-K%, Min-K%++,
    GradNorm, exact memorization, extraction strength) drop the last labelled token, the eos, and so
    does this unless ``eos``. An answer left without tokens is an error naming the metric."""
    values = np.asarray(values)
    values = values if eos else values[:-1]
    if len(values) == 0:
        raise EvalInputError(f"metric {metric!r}: an answer without tokens{'' if eos else ' besides the eos'}")
    return values


def mean_or_nan(values) -> float:
    values = pd.Series(values, dtype=float)
    return float(values.mean()) if len(values) else math.nan


def compute_metrics(names: list[str] | None, samples: pd.DataFrame, oracle: pd.DataFrame | None = None,
                    role: str = "model") -> dict[str, float]:
    """Run the named metrics (all registered ones if ``names`` is None); dict results are flattened.
    With ``role="oracle"`` the table is the oracle's own, its own oracle and reference.

    Raises EvalInputError if a metric's input is missing or a value is not finite."""
    if role == "oracle" and oracle is None:
        oracle = samples
    out: dict[str, float] = {}
    for name in METRICS.names() if names is None else names:
        uses_of(name)  # an undeclared metric is an error, not a metric the evaluation cannot plan for
        value = METRICS.get(name)(samples, oracle, role=role)
        for key, v in (value.items() if isinstance(value, dict) else [(name, value)]):
            v = float(v)
            if not np.isfinite(v):
                raise EvalInputError(f"metric {name!r} gave {key} = {v}; check its input splits")
            out[key] = v
    return out


import_all(__name__, __path__)
