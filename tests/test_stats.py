"""The report's statistics on hand-worked examples: Holm, the bootstrap CI, the Wilcoxon test, the
t-test of unit means, and the two tables built from them."""

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
    unit_t_test,
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


def effect_table(diffs, fq_decades, collapsed=()):
    """none and dropout on three methods x 2 seeds; dropout's utility is none's + diffs[i] and its
    forget quality fq_decades[i] decades higher; the pairs listed in `collapsed` flag dropout."""
    rows = []
    for i, (d, dec) in enumerate(zip(diffs, fq_decades)):
        key = {"method": f"m{i % 3}", "split": "forget10", "seed": i // 3}
        rows.append({**key, "regularizer": "none", "model_utility": 0.5, "forget_quality": 1e-6, "collapsed": 0.0})
        rows.append({**key, "regularizer": "dropout", "model_utility": 0.5 + d, "forget_quality": 1e-6 * 10.0 ** dec,
                     "collapsed": float(i in collapsed)})
    return pd.DataFrame(rows)


def test_effect_size_is_the_mean_paired_difference_on_the_tested_scale_with_a_seeded_ci():
    diffs, decades = [0.01, 0.02, 0.03, 0.04, 0.05, 0.07], [1, 1, 2, 2, 3, 3]
    metrics = {"model_utility": "identity", "forget_quality": "log10"}
    tests = paired_tests(effect_table(diffs, decades), metrics)
    row = tests.set_index("metric")
    # by hand: (0.01 + 0.02 + 0.03 + 0.04 + 0.05 + 0.07) / 6 = 0.22 / 6; log10 decades (1+1+2+2+3+3) / 6 = 2
    assert row.loc["model_utility", "mean_diff"] == pytest.approx(0.22 / 6)
    assert row.loc["forget_quality", "mean_diff"] == pytest.approx(2.0)
    for metric, mean in (("model_utility", 0.22 / 6), ("forget_quality", 2.0)):
        low, high = row.loc[metric, "diff_ci_low"], row.loc[metric, "diff_ci_high"]
        assert low < mean < high
        # the CI is the seeded bootstrap of the differences, the same on every run
        assert (low, high) == pytest.approx(bootstrap_ci(decades if metric == "forget_quality" else diffs)[1:])
    # n pairs, the raw p (all 6 signs positive: exact 2/64) and Holm over the two rows (2 * 2/64)
    assert (row["n_pairs"] == 6).all() and row.loc["model_utility", "p_value"] == pytest.approx(2 / 64)
    assert row["p_holm"].tolist() == pytest.approx([4 / 64, 4 / 64])
    pd.testing.assert_frame_equal(tests, paired_tests(effect_table(diffs, decades), metrics))


def test_pairs_with_a_collapsed_model_leave_the_excluded_metric_only():
    table = effect_table([0.01] * 6, [1, 1, 2, 2, 3, 3], collapsed=(4, 5))  # the two 3-decade pairs collapsed
    tests = paired_tests(table, {"model_utility": "identity", "forget_quality": "log10"},
                         exclude={"forget_quality": "collapsed"}).set_index("metric")
    assert tests.loc["forget_quality", "n_pairs"] == 4 and tests.loc["forget_quality", "n_excluded"] == 2
    assert tests.loc["forget_quality", "mean_diff"] == pytest.approx(1.5)  # (1 + 1 + 2 + 2) / 4
    assert "2 pair(s) with a collapsed model left out" in tests.loc["forget_quality", "note"]
    assert tests.loc["model_utility", "n_pairs"] == 6 and tests.loc["model_utility", "n_excluded"] == 0


def test_the_aa_control_is_a_holm_family_of_its_own():
    base = effect_table([0.01, 0.02, 0.03, 0.04, 0.05, 0.07], [0] * 6)
    copy = base[base.regularizer == "none"].assign(regularizer="none_aa")
    copy["model_utility"] += [0.001, -0.002, 0.003, -0.004, 0.005, -0.006]
    wide = pd.concat([base, copy], ignore_index=True)
    alone = paired_tests(base, {"model_utility": "identity"})
    both = paired_tests(wide, {"model_utility": "identity"}, aa_controls=["none_aa"]).set_index("regularizer")
    assert both.loc["dropout", "family"] == "regularizer" and both.loc["none_aa", "family"] == "aa_control"
    # the control does not dilute the regularizers' correction: dropout's p_holm is the same without it
    assert both.loc["dropout", "p_holm"] == pytest.approx(alone["p_holm"].iloc[0])
    # alone in its family, the A/A p_holm is its raw p: signs +-+-+- on ranks 1..6 give W+ = 1+3+5 = 9;
    # 27 of the 64 sign patterns have W+ <= 9, so the exact two-sided p = 2 * 27/64
    assert both.loc["none_aa", "p_holm"] == both.loc["none_aa", "p_value"] == pytest.approx(54 / 64)
    assert not both.loc["none_aa", "reject"]


# --- the t-test of unit means ---------------------------------------------------------------------
def test_unit_t_test_by_hand_with_the_closed_form_t_distribution_of_3_degrees_of_freedom():
    # d = 1, 2, 3, 6: mean 3, sd sqrt((4 + 1 + 0 + 9) / 3), t = 3 / (sd / 2)
    out = unit_t_test([1.0, 2.0, 3.0, 6.0])
    sd = np.sqrt(14 / 3)
    t = 3 / (sd / 2)
    # Student's t with 3 df: F(t) = 1/2 + (t / (sqrt(3) (1 + t^2/3)) + atan(t / sqrt(3))) / pi
    cdf = 0.5 + (t / (np.sqrt(3) * (1 + t * t / 3)) + np.arctan(t / np.sqrt(3))) / np.pi
    assert out["statistic"] == pytest.approx(t) and out["p_value"] == pytest.approx(2 * (1 - cdf))
    assert (out["n_pairs"], out["n_positive"], out["testable"]) == (4, 4, True)
    # the 95% t-interval: t_{0.975, 3} = 3.182446 (the table value)
    assert (out["diff_ci_low"], out["diff_ci_high"]) == pytest.approx((3 - 3.182446 * sd / 2, 3 + 3.182446 * sd / 2))


def test_unit_t_test_degenerate_samples():
    assert not unit_t_test([0.5])["testable"] and unit_t_test([0.5])["p_value"] == 1.0
    assert not unit_t_test([0.0, 0.0, 0.0])["testable"]
    flat = unit_t_test([0.2, 0.2, 0.2])  # no spread: the exact sign-flip p (2 of 8 sign patterns), no width
    assert flat["testable"] and flat["p_value"] == pytest.approx(2 / 8) and flat["diff_ci_low"] == flat["diff_ci_high"] == pytest.approx(0.2)
    with pytest.raises(ValueError):
        unit_t_test([1.0, float("nan")])


def unit_table():
    """none vs dropout on 2 methods x 3 seeds; dropout's utility differences per (method, seed):
    m0 0.01, 0.03, 0.05 and m1 0.03, 0.03, 0.07, so the seed means are 0.02, 0.03, 0.06."""
    rows = []
    diffs = {"m0": [0.01, 0.03, 0.05], "m1": [0.03, 0.03, 0.07]}
    for method, ds in diffs.items():
        for seed, d in enumerate(ds):
            key = {"method": method, "split": "forget10", "seed": seed}
            rows.append({**key, "regularizer": "none", "model_utility": 0.5})
            rows.append({**key, "regularizer": "dropout", "model_utility": 0.5 + d})
    return pd.DataFrame(rows)


def test_paired_tests_with_units_average_the_methods_of_a_seed_and_t_test_the_seed_means():
    tests = paired_tests(unit_table(), {"model_utility": "identity"}, units=["split", "seed"])
    row = tests.iloc[0]
    assert list(tests.columns) == TEST_COLUMNS and not tests.isna().any().any()
    means = np.array([0.02, 0.03, 0.06])
    sd = np.sqrt(((means - means.mean()) ** 2).sum() / 2)
    t = means.mean() / (sd / np.sqrt(3))
    # Student's t with 2 df: F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided p is 1 - t / sqrt(2 + t^2)
    assert row["statistic"] == pytest.approx(t) and row["p_value"] == pytest.approx(1 - t / np.sqrt(2 + t * t))
    assert (row["n_pairs"], row["n_model_pairs"], row["unit"], row["test"]) == (3, 6, "split x seed", "t_test_of_unit_means")
    assert row["mean_diff"] == pytest.approx(0.11 / 3) and row["median_diff"] == pytest.approx(0.03)
    # t_{0.975, 2} = 4.302653 (the table value)
    half = 4.302653 * sd / np.sqrt(3)
    assert (row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx((0.11 / 3 - half, 0.11 / 3 + half))
    # without units the same table is 6 pairs of the Wilcoxon test: all positive, exact p 2/64
    pairs = paired_tests(unit_table(), {"model_utility": "identity"}).iloc[0]
    assert (pairs["n_pairs"], pairs["unit"], pairs["p_value"]) == (6, "pair", pytest.approx(2 / 64))
