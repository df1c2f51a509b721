"""Aggregate metrics over a per-sample score table (see `forgetlab.evaluate`).

A metric is a function ``(samples, oracle) -> float | dict[str, float]`` registered with
``@METRICS.register(name)``; ``samples`` is the model's per-sample table, ``oracle`` the retain-only
oracle's table (or None). A metric returning a dict contributes each of its keys to the result of
``compute_metrics`` (flattened, the metric's own name is not used). Adding a metric is adding one
module to this package.
"""

from __future__ import annotations

import math

import pandas as pd

from forgetlab.registry import Registry, import_all

METRICS = Registry("metric")


def split_values(samples: pd.DataFrame | None, split: str, column: str) -> pd.Series:
    """Non-NaN values of ``column`` on rows with ``split == split`` (empty if none)."""
    if samples is None or len(samples) == 0 or column not in samples:
        return pd.Series([], dtype=float)
    return samples.loc[samples["split"] == split, column].astype(float).dropna()


def mean_or_nan(values) -> float:
    values = pd.Series(values, dtype=float)
    return float(values.mean()) if len(values) else math.nan


def compute_metrics(names: list[str] | None, samples: pd.DataFrame,
                    oracle: pd.DataFrame | None = None) -> dict[str, float]:
    """Run the named metrics (all registered ones if ``names`` is None); dict results are flattened."""
    out: dict[str, float] = {}
    for name in METRICS.names() if names is None else names:
        value = METRICS.get(name)(samples, oracle)
        if isinstance(value, dict):
            out.update({k: float(v) for k, v in value.items()})
        else:
            out[name] = float(value)
    return out


import_all(__name__, __path__)
