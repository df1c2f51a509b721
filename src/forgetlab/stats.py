"""Statistics of the report: seed-level bootstrap CIs, a paired test against a baseline, Holm.

Four small components, each usable on its own:

* ``bootstrap_ci(values)``: the mean and a percentile bootstrap CI of the mean (numpy, seeded);
* ``paired_test(a, b)``: the Wilcoxon signed-rank test of the paired differences a - b;
* ``unit_t_test(d)``: the one-sample t-test of per-unit mean differences, with its t-interval;
* ``holm(pvalues)``: Holm's step-down adjustment of a family of p-values.

and two table builders used by ``forgetlab report``: ``seed_stats`` (mean and CI per
regularizer, method, split and metric) and ``paired_tests`` (each regularizer against a baseline).
The report's pairs are not all independent: the methods of one (seed, path) unlearn the same
target, so ``paired_tests(units=...)`` first averages the differences within each independent
unit (a fine-tuned target: seed x path) and tests the unit means (docs/metrics.md, "Statistics").
None of them ever returns NaN: a sample of one gives a zero-width CI and says so through
``n_seeds``; a comparison without enough non-zero differences is marked ``testable = False``
with p-value 1 and stays out of the Holm family.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

N_BOOT = 10_000
CONFIDENCE = 0.95
SEED = 0
ALPHA = 0.05
MIN_PAIRS = 2  # non-zero differences needed for a test; fewer: "not testable"

STATS_COLUMNS = ["regularizer", "method", "split", "metric", "n_seeds", "mean", "ci_low", "ci_high"]
TEST = "wilcoxon_signed_rank"
UNIT_TEST = "t_test_of_unit_means"  # paired_tests with units
TEST_COLUMNS = ["regularizer", "baseline", "metric", "scale", "test", "n_pairs", "n_nonzero", "n_positive",
                "mean_diff", "median_diff", "diff_ci_low", "diff_ci_high", "statistic", "p_value",
                "p_holm", "reject", "testable", "note", "family", "n_excluded", "unit", "n_model_pairs"]
AA_FAMILY = "aa_control"  # the family of the A/A control's tests (Holm-corrected on their own)


def bootstrap_ci(values: Sequence[float], n_boot: int = N_BOOT, confidence: float = CONFIDENCE,
                 seed: int = SEED) -> tuple[float, float, float]:
    """(mean, low, high): the sample mean and the percentile bootstrap CI of the mean.

    Draws n_boot resamples of len(values) indices with numpy's default_rng(seed), takes each
    resample's mean, and returns the (1-confidence)/2 and (1+confidence)/2 percentiles of those
    means (numpy's linear interpolation). One value gives (x, x, x); NaNs are an error.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) == 0 or not np.isfinite(x).all():
        raise ValueError(f"bootstrap_ci needs a non-empty 1-d sample of finite values, got {values!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = float(x.mean())
    if len(x) == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    # the mean of resamples of equal values can differ from it by rounding: keep mean inside the CI
    return mean, float(min(low, mean)), float(max(high, mean))


def paired_test(a: Sequence[float], b: Sequence[float], min_pairs: int = MIN_PAIRS) -> dict:
    """Two-sided Wilcoxon signed-rank test of the paired differences d = a - b.

    Zero differences are dropped (Wilcoxon's convention) and the rest go to scipy.stats.wilcoxon
    with its default method (the exact null distribution for up to 50 differences, else the normal
    approximation). With fewer than min_pairs non-zero differences there is nothing to test: the
    result has testable False and p_value 1.0. Note that with n differences the smallest two-sided
    p-value is 2 / 2**n, so n < 6 can never reach p < 0.05.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_test needs two 1-d samples of equal length, got {a.shape} and {b.shape}")
    d = a - b
    if not np.isfinite(d).all():
        raise ValueError("paired_test: the samples hold NaN or inf")
    nonzero = d[d != 0]
    out = {"n_pairs": int(len(d)), "n_nonzero": int(len(nonzero)), "n_positive": int((d > 0).sum())}
    if len(nonzero) < min_pairs:
        why = "no pairs" if len(d) == 0 else f"{len(nonzero)} non-zero difference(s) < {min_pairs}"
        return {**out, "statistic": 0.0, "p_value": 1.0, "testable": False, "note": f"not testable: {why}"}
    result = sps.wilcoxon(nonzero, alternative="two-sided")
    return {**out, "statistic": float(result.statistic), "p_value": float(result.pvalue), "testable": True,
            "note": f"tested on {len(nonzero)} non-zero differences"}


def unit_t_test(d: Sequence[float], confidence: float = CONFIDENCE, min_units: int = MIN_PAIRS) -> dict:
    """Two-sided one-sample t-test of the unit differences d against 0 (scipy.stats.ttest_1samp),
    and the t-interval of their mean: mean +- t_{(1+confidence)/2, n-1} * sd / sqrt(n).

    With fewer than min_units units, or every difference 0, there is nothing to test (testable
    False, p 1). Equal non-zero differences (no spread, e.g. a step count that moved by the same
    whole number in every seed) leave the t statistic undefined: then p is the exact sign-flip
    test's, 2 / 2^n (the n equal signs are 2 of the 2^n equally likely sign patterns under the
    null), with a zero-width interval, said in the note."""
    d = np.asarray(d, dtype=float)
    if d.ndim != 1 or not np.isfinite(d).all():
        raise ValueError(f"unit_t_test needs a 1-d sample of finite values, got {d!r}")
    n, mean = len(d), float(d.mean()) if len(d) else 0.0
    out = {"n_pairs": n, "n_nonzero": int((d != 0).sum()), "n_positive": int((d > 0).sum()),
           "diff_ci_low": mean, "diff_ci_high": mean}
    if n < min_units or not (d != 0).any():
        why = "no pairs" if n == 0 else (f"{n} unit(s) < {min_units}" if n < min_units else "every difference 0")
        return {**out, "statistic": 0.0, "p_value": 1.0, "testable": False, "note": f"not testable: {why}"}
    if np.ptp(d) == 0:
        return {**out, "statistic": float(np.copysign(np.inf, mean)), "p_value": 2.0 / 2 ** n, "testable": True,
                "note": f"{n} units, every difference {mean:.3g} (no spread): the exact sign-flip p 2/2^{n}"}
    result = sps.ttest_1samp(d, 0.0)
    half = float(sps.t.ppf((1 + confidence) / 2, n - 1)) * float(d.std(ddof=1)) / np.sqrt(n)
    return {**out, "statistic": float(result.statistic), "p_value": float(result.pvalue), "testable": True,
            "diff_ci_low": mean - half, "diff_ci_high": mean + half, "note": f"t-test of {n} unit means"}


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order.

    Sorted ascending, the i-th smallest of m p-values (i from 1) is scaled by (m - i + 1), the
    running maximum keeps the adjusted values monotone, and they are capped at 1. Rejecting where
    the adjusted value is <= alpha controls the family-wise error rate at alpha.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1 or ((p < 0) | (p > 1) | np.isnan(p)).any():
        raise ValueError(f"holm needs p-values in [0, 1], got {pvalues!r}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    adjusted = np.empty(m)
    adjusted[order] = scaled
    return adjusted


def holm_by_family(table: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """`table` (a tests table) with p_holm, Holm's correction over the testable rows of each
    `family` separately (1 for a row that is not testable), and reject = testable and p_holm <= alpha."""
    testable = table["testable"].astype(bool).to_numpy()
    table["p_holm"] = 1.0
    for family in table["family"].unique():
        rows = testable & (table["family"] == family).to_numpy()
        table.loc[rows, "p_holm"] = holm(table.loc[rows, "p_value"].to_numpy())
    table["reject"] = testable & (table["p_holm"].to_numpy() <= alpha)
    return table


def seed_stats(long: pd.DataFrame, n_boot: int = N_BOOT, confidence: float = CONFIDENCE,
               seed: int = SEED) -> pd.DataFrame:
    """Mean and bootstrap CI over seeds per (regularizer, method, split, metric).

    long: one row per (regularizer, method, split, seed, metric) with a `value`. NaN values are
    left out (n_seeds counts the rest); a group with no value left gives no row.
    """
    rows = []
    long = long[long["value"].notna()]
    for key, group in long.groupby(["regularizer", "method", "split", "metric"], sort=True):
        mean, low, high = bootstrap_ci(group["value"].to_numpy(), n_boot, confidence, seed)
        rows.append({**dict(zip(["regularizer", "method", "split", "metric"], key)),
                     "n_seeds": int(group["seed"].nunique()), "mean": mean, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=STATS_COLUMNS)


def log10_clipped(values) -> np.ndarray:
    """log10, with 0 (a KS p-value that underflowed) clipped to the smallest positive double."""
    return np.log10(np.clip(np.asarray(values, dtype=float), np.finfo(float).tiny, None))


SCALES = {"identity": lambda v: np.asarray(v, dtype=float), "log10": log10_clipped}


def paired_tests(wide: pd.DataFrame, metrics: dict[str, str], baseline: str = "none",
                 keys: Sequence[str] = ("method", "split", "seed"), alpha: float = ALPHA,
                 n_boot: int = N_BOOT, seed: int = SEED, factor: str = "regularizer",
                 aa_controls: Sequence[str] = (), exclude: dict[str, str] | None = None,
                 units: Sequence[str] | None = None) -> pd.DataFrame:
    """Each level of `factor` (a regularizer) against `baseline`, per metric, on pairs matched on `keys`.

    wide: one row per unlearned model (factor + keys) with a column per metric. metrics maps a
    metric to the scale it is tested on ("identity" or "log10"); mean_diff and its bootstrap CI are
    on that scale. A pair needs both values. exclude maps a metric to a 0/1 flag column: for that
    metric a pair where either model has the flag set is left out (counted in n_excluded). The
    levels named in aa_controls are the A/A control (family "aa_control"), the rest family
    `factor`; Holm's correction runs over the testable rows of each family separately, so adding
    the control leaves the other tests' p_holm unchanged. The output's first column is `factor`.

    units (a subset of keys, e.g. path, split, seed): the independent replicates. The differences
    of the pairs are averaged within each unit (over the other keys, e.g. the methods that unlearn
    one target) and unit_t_test tests the unit means: n_pairs counts units, n_model_pairs the
    pairs averaged, and the CI is the t-interval. Without units every pair is its own unit and
    the Wilcoxon test (paired_test) with a bootstrap CI is used.
    """
    rows = []
    keys, exclude = list(keys), exclude or {}
    base = wide[wide[factor] == baseline]
    others = sorted(set(wide[factor]) - {baseline}) if len(base) else []  # no baseline: no test
    for level in others:
        other = wide[wide[factor] == level]
        for metric, scale in metrics.items():
            flag = [exclude[metric]] if exclude.get(metric) in wide else []
            pairs = other[keys + [metric] + flag].merge(base[keys + [metric] + flag], on=keys,
                                                        suffixes=("", "_base")).dropna(subset=[metric, f"{metric}_base"])
            dropped = (pairs[flag[0]].fillna(0).astype(bool) | pairs[f"{flag[0]}_base"].fillna(0).astype(bool)
                       if flag else pd.Series(False, index=pairs.index))
            pairs = pairs[~dropped]
            a, b = SCALES[scale](pairs[metric]), SCALES[scale](pairs[f"{metric}_base"])
            if units:
                d = pairs[list(units)].assign(d=a - b).groupby(list(units), sort=True)["d"].mean().to_numpy()
                test = unit_t_test(d)
            else:
                d = a - b
                test = paired_test(a, b)
                test["diff_ci_low"], test["diff_ci_high"] = (bootstrap_ci(d, n_boot, seed=seed)[1:] if len(d)
                                                              else (0.0, 0.0))
            if flag and dropped.any():
                test["note"] += f"; {int(dropped.sum())} pair(s) with a {flag[0]} model left out"
            rows.append({factor: level, "baseline": baseline, "metric": metric, "scale": scale,
                         "test": UNIT_TEST if units else TEST, **test,
                         "mean_diff": float(d.mean()) if len(d) else 0.0,
                         "median_diff": float(np.median(d)) if len(d) else 0.0,
                         "family": AA_FAMILY if level in aa_controls else factor, "n_excluded": int(dropped.sum()),
                         "unit": " x ".join(units) if units else "pair", "n_model_pairs": int(len(pairs))})
    table = holm_by_family(pd.DataFrame(rows, columns=[factor, *TEST_COLUMNS[1:]]), alpha)
    for col in ("testable", "reject"):
        table[col] = table[col].astype(bool)
    for col in ("n_excluded", "n_model_pairs"):
        table[col] = table[col].astype(int)
    assert not table.isna().any().any(), "paired_tests produced NaN"
    return table
