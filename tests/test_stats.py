"""The report's statistics on hand-worked examples: Holm, the bootstrap CI, the Wilcoxon test, and
the two tables built from them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forgetlab.stats import (
    STATS_COLUMNS,
    TEST_COLUMNS,
    bootstrap_ci,
    holm,
    paired_test,
    paired_tests,
    seed_stats,
)


# --- Holm ---------------------------------------------------------------------------------------
def test_holm_on_hand_worked_p_values():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    assert list(adjusted <= 0.05) == [True, False, False, True]


def test_holm_caps_at_one_keeps_ties_and_accepts_an_empty_family():
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # 0.5*2 = 1.0, then max(1.0, 0.6)
    np.testing.assert_allclose(holm([0.02, 0.02]), [0.04, 0.04])
    np.testing.assert_allclose(holm([0.3]), [0.3])  # a family of one is not corrected
    assert holm([]).shape == (0,)
    with pytest.raises(ValueError):
        holm([0.1, float("nan")])
    with pytest.raises(ValueError):
        holm([1.5])


# --- bootstrap ----------------------------------------------------------------------------------
def test_bootstrap_ci_is_the_percentiles_of_seeded_resample_means():
    x = np.array([0.1, 0.5, 0.9, 2.0, 3.7])
    mean, low, high = bootstrap_ci(x, n_boot=50, confidence=0.9, seed=3)
    rng = np.random.default_rng(3)
    means = x[rng.integers(0, 5, size=(50, 5))].mean(axis=1)  # 50 resamples of 5 indices
    assert mean == pytest.approx(1.44)
    assert low == pytest.approx(np.percentile(means, 5)) and high == pytest.approx(np.percentile(means, 95))
    assert low < mean < high
    assert bootstrap_ci(x, n_boot=50, confidence=0.9, seed=3) == (mean, low, high)  # reproducible
    assert bootstrap_ci(x, n_boot=50, confidence=0.9, seed=4) != (mean, low, high)


def test_bootstrap_ci_of_two_values_spans_them():
    # resample means of {0, 1} are 0, 0.5, 1 with probability 1/4, 1/2, 1/4: both 2.5% tails are
    # deep inside the extreme atoms, so the 95% CI is exactly [0, 1]
    assert bootstrap_ci([0.0, 1.0]) == (0.5, 0.0, 1.0)


def test_bootstrap_ci_degenerate_samples_have_zero_width_and_nan_is_an_error():
    assert bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    mean, low, high = bootstrap_ci([0.1, 0.1, 0.1])
    assert low <= mean <= high and high - low < 1e-15 and mean == pytest.approx(0.1)
    for bad in ([], [1.0, float("nan")]):
        with pytest.raises(ValueError):
            bootstrap_ci(bad)


# --- Wilcoxon signed-rank -------------------------------------------------------------------------
def test_paired_test_all_six_differences_positive_gives_the_exact_p():
    # under H0 each of the 2^6 sign patterns is equally likely; W- = 0 only for "all positive", so
    # the two-sided p is 2/64
    out = paired_test([2, 3, 4, 5, 6, 7], [1, 1, 1, 1, 1, 1])
    assert out["p_value"] == pytest.approx(2 / 64) and out["statistic"] == 0.0 and out["testable"]
    assert (out["n_pairs"], out["n_nonzero"], out["n_positive"]) == (6, 6, 6)
    assert paired_test([1] * 6, [2, 3, 4, 5, 6, 7])["p_value"] == pytest.approx(2 / 64)  # all negative


def test_paired_test_one_negative_difference_by_hand():
    # d = 1..5, -6: W- = 6. Subsets of {1..6} with sum <= 6: sum 0:1, 1:1, 2:1, 3:2, 4:2, 5:3, 6:4
    # = 14, so p = 2 * 14/64
    out = paired_test([1, 2, 3, 4, 5, -6], [0] * 6)
    assert out["statistic"] == 6.0 and out["p_value"] == pytest.approx(28 / 64)


def test_paired_test_drops_zero_differences():
    out = paired_test([5, 2, 3, 4, 5, 6, 7], [5, 1, 1, 1, 1, 1, 1])
    assert (out["n_pairs"], out["n_nonzero"]) == (7, 6) and out["p_value"] == pytest.approx(2 / 64)


def test_paired_test_with_too_few_pairs_is_not_testable_and_not_nan():
    for a, b in (([], []), ([1.0], [0.0]), ([1.0, 2.0], [1.0, 2.0])):
        out = paired_test(a, b)
        assert out["testable"] is False and out["p_value"] == 1.0 and out["note"].startswith("not testable")
    assert paired_test([1.0, 2.0], [0.0, 0.0])["testable"]  # two non-zero differences: p = 2/4
    assert paired_test([1.0, 2.0], [0.0, 0.0])["p_value"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        paired_test([1.0, 2.0], [1.0])


# --- the tables -----------------------------------------------------------------------------------
def test_seed_stats_groups_over_seeds_and_leaves_nan_out():
    long = pd.DataFrame({
        "regularizer": ["none"] * 5, "method": ["npo"] * 5, "split": ["forget10"] * 5,
        "seed": [0, 1, 2, 0, 1], "metric": ["model_utility"] * 3 + ["forget_prob"] * 2,
        "value": [0.2, 0.4, 0.9, 0.3, np.nan],
    })
    table = seed_stats(long)
    assert list(table.columns) == STATS_COLUMNS and not table.isna().any().any()
    utility = table[table.metric == "model_utility"].iloc[0]
    assert utility["n_seeds"] == 3 and utility["mean"] == pytest.approx(0.5)
    assert (utility["ci_low"], utility["ci_high"]) == pytest.approx(bootstrap_ci([0.2, 0.4, 0.9])[1:])
    prob = table[table.metric == "forget_prob"].iloc[0]
    assert prob["n_seeds"] == 1 and prob["mean"] == prob["ci_low"] == prob["ci_high"] == pytest.approx(0.3)


def wide_table():
    """none vs dropout on 2 methods x 3 seeds (6 pairs), and weight_decay with a single pair."""
    rows = []
    log_d = iter([1, 2, 3, 4, 5, -6])
    util_d = iter([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    for method in ("npo", "grad_ascent"):
        for seed in (0, 1, 2):
            base = {"method": method, "split": "forget10", "seed": seed}
            rows.append({**base, "regularizer": "none", "forget_quality": 1e-8, "model_utility": 0.5})
            rows.append({**base, "regularizer": "dropout", "forget_quality": 1e-8 * 10.0 ** next(log_d),
                         "model_utility": 0.5 + next(util_d)})
    rows.append({"method": "npo", "split": "forget10", "seed": 0, "regularizer": "weight_decay",
                 "forget_quality": 1e-7, "model_utility": 0.6})
    return pd.DataFrame(rows)


def test_paired_tests_match_pairs_test_forget_quality_on_log10_and_apply_holm():
    tests = paired_tests(wide_table(), {"forget_quality": "log10", "model_utility": "identity"})
    assert list(tests.columns) == TEST_COLUMNS and not tests.isna().any().any()
    row = tests.set_index(["regularizer", "metric"])
    fq, mu = row.loc[("dropout", "forget_quality")], row.loc[("dropout", "model_utility")]
    # log10 differences 1..5, -6: p = 28/64 (on the raw scale the negative one would rank lowest: 4/64)
    assert fq["p_value"] == pytest.approx(28 / 64) and fq["n_pairs"] == 6 and fq["mean_diff"] == pytest.approx(1.5)
    assert mu["p_value"] == pytest.approx(2 / 64) and mu["n_positive"] == 6 and mu["mean_diff"] == pytest.approx(0.035)
    # Holm over the 2 testable rows only: 2 * 2/64 = 0.0625, then max(0.0625, 28/64)
    assert mu["p_holm"] == pytest.approx(0.0625) and fq["p_holm"] == pytest.approx(28 / 64)
    assert not tests["reject"].any()
    single = row.loc[("weight_decay", "model_utility")]
    assert single["n_pairs"] == 1 and not single["testable"] and single["p_value"] == single["p_holm"] == 1.0
    assert single["mean_diff"] == pytest.approx(0.1) and single["diff_ci_low"] == single["diff_ci_high"]


def test_paired_tests_without_the_baseline_is_an_empty_table():
    wide = wide_table()
    tests = paired_tests(wide[wide.regularizer != "none"], {"model_utility": "identity"})
    assert tests.empty and list(tests.columns) == TEST_COLUMNS
