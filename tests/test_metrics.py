"""Hand-worked checks of the aggregate metrics."""

import math

import pandas as pd
import pytest

from forgetlab.metrics import METRICS, EvalInputError, compute_metrics


def table(split_values: dict[str, list[dict]]) -> pd.DataFrame:
    rows = [{"split": s, **r} for s, rs in split_values.items() for r in rs]
    return pd.DataFrame(rows)


def tr_rows(values):
    return [{"truth_ratio": v, "prob": 0.5, "rouge_l_recall": 0.5} for v in values]


def test_forget_quality_fully_separated_exact_p():
    # n = m = 3, every model value below every oracle value -> D = 1. Exact two-sided p-value:
    # only 2 of the C(6, 3) = 20 equally likely orderings reach D = 1, so p = 2/20 = 0.1.
    model = table({"forget": tr_rows([0.1, 0.2, 0.3])})
    oracle = table({"forget": tr_rows([0.7, 0.8, 0.9])})
    assert METRICS.get("forget_quality")(model, oracle) == pytest.approx(0.1, abs=1e-12)
    # n = 3, m = 4: p = 2 / C(7, 3) = 2/35.
    oracle4 = table({"forget": tr_rows([0.7, 0.8, 0.9, 1.0])})
    assert METRICS.get("forget_quality")(model, oracle4) == pytest.approx(2 / 35, abs=1e-12)


def test_forget_quality_identical_is_one_and_ignores_other_splits():
    model = table({"forget": tr_rows([0.3, 0.5, 0.9]), "retain": tr_rows([5.0, 6.0])})
    oracle = table({"forget": tr_rows([0.9, 0.3, 0.5]), "retain": tr_rows([0.0, 0.1])})
    assert METRICS.get("forget_quality")(model, oracle) == pytest.approx(1.0)


def test_forget_quality_without_oracle_or_forget_names_what_is_missing():
    model = table({"forget": tr_rows([0.3, 0.5])})
    with pytest.raises(EvalInputError, match="'forget_quality' needs the oracle's per-sample table, and none was given"):
        METRICS.get("forget_quality")(model, None)
    with pytest.raises(EvalInputError, match=r"split 'forget' has no rows.*splits present: retain"):
        METRICS.get("forget_quality")(table({"retain": tr_rows([1.0])}), model)
    with pytest.raises(EvalInputError, match=r"no truth_ratio values on split 'forget' of the oracle"):
        METRICS.get("forget_quality")(model, table({"forget": tr_rows([math.nan])}))


def test_model_utility_hand_worked():
    samples = table({
        # retain: mean prob (0.4+0.6)/2 = 0.5, mean rouge (0.5+0)/2 = 0.25,
        #         TR = mean(max(0, 1-0.5), max(0, 1-0.5)) = 0.5
        "retain": [
            {"prob": 0.4, "rouge_l_recall": 0.5, "truth_ratio": 0.5},
            {"prob": 0.6, "rouge_l_recall": 0.0, "truth_ratio": 0.5},
        ],
        # real_authors: option_prob 0.5, rouge 1.0, TR = 1 - 0.5 = 0.5 (the _para columns are not used)
        "real_authors": [{"prob": 0.9, "option_prob": 0.5, "rouge_l_recall": 1.0, "truth_ratio": 0.5,
                          "option_prob_para": 0.01, "truth_ratio_para": 0.99}],
        # world_facts: option_prob 1.0 (TOFU normalises over the options; plain prob unused),
        #              rouge 0.5, TR = 1 - 0.75 = 0.25
        "world_facts": [{"prob": 0.1, "option_prob": 1.0, "rouge_l_recall": 0.5, "truth_ratio": 0.75,
                         "option_prob_para": 0.01, "truth_ratio_para": 0.99}],
        # forget must not enter utility
        "forget": [{"prob": 0.0, "rouge_l_recall": 0.0, "truth_ratio": 9.0}],
    })
    # hmean of 9 terms = 9 / (1/0.5 + 1/0.25 + 1/0.5 + 1/0.5 + 1/1 + 1/0.5 + 1/1 + 1/0.5 + 1/0.25)
    #                  = 9 / (2+4+2 + 2+1+2 + 1+2+4) = 9/20
    assert METRICS.get("model_utility")(samples, None) == pytest.approx(9 / 20)
    # the _para variant: ra terms 0.01, 1.0, 0.01 and wf terms 0.01, 0.5, 0.01 instead
    # -> 9 / (2+4+2 + 100+1+100 + 100+2+100) = 9/411
    assert METRICS.get("model_utility_para")(samples, None) == pytest.approx(9 / 411)
    # the likelihood-only utility drops the three rouge terms: 0.5, 0.5 | 0.5, 0.5 | 1.0, 0.25
    # -> 6 / (2+2 + 2+2 + 1+4) = 6/13
    assert METRICS.get("model_utility_lik")(samples, None) == pytest.approx(6 / 13)


def test_model_utility_value_hand_worked():
    # the value variant swaps TOFU's five likelihood terms of retain/ra/wf for their value forms:
    # retain TR_value mean(max(0, 1-0.5), max(0, 1-1.5)) = 0.25; ra option_prob_value 0.5, TR_value 1 - 0.8 = 0.2;
    # wf option_prob_value 0.25, TR_value 1 - 0.5 = 0.5; prob and ROUGE as in TOFU's (the sentence columns unused)
    samples = table({
        "retain": [{"prob": 0.4, "rouge_l_recall": 0.5, "truth_ratio": 0.01, "truth_ratio_value": 0.5},
                   {"prob": 0.6, "rouge_l_recall": 0.0, "truth_ratio": 0.01, "truth_ratio_value": 1.5}],
        "real_authors": [{"option_prob": 0.01, "rouge_l_recall": 1.0, "truth_ratio": 0.99,
                          "option_prob_value": 0.5, "truth_ratio_value": 0.8}],
        "world_facts": [{"option_prob": 0.01, "rouge_l_recall": 0.5, "truth_ratio": 0.99,
                         "option_prob_value": 0.25, "truth_ratio_value": 0.5}],
    })
    # terms 0.5, 0.25, 0.25 | 0.5, 1.0, 0.2 | 0.25, 0.5, 0.5 -> 9 / (2+4+4 + 2+1+5 + 4+2+2) = 9/26
    assert METRICS.get("model_utility_value")(samples, None) == pytest.approx(9 / 26)
    # its likelihood-only form drops the three ROUGE terms: 0.5, 0.25 | 0.5, 0.2 | 0.25, 0.5
    # -> 6 / (2+4 + 2+5 + 4+2) = 6/19
    assert METRICS.get("model_utility_value_lik")(samples, None) == pytest.approx(6 / 19)
    with pytest.raises(EvalInputError, match="truth_ratio_value"):  # TOFU's own rows have no paraphrase: no value form
        METRICS.get("model_utility_value")(samples.assign(truth_ratio_value=math.nan), None)


def test_model_utility_zero_term_and_missing_split():
    samples = table({
        "retain": [{"prob": 0.5, "rouge_l_recall": 0.5, "truth_ratio": 2.0}],  # TR term = 0
        "world_facts": [{"prob": 0.5, "option_prob": 0.5, "rouge_l_recall": 0.5, "truth_ratio": 0.5}],
        "real_authors": [{"prob": 0.5, "option_prob": 0.5, "rouge_l_recall": 0.5, "truth_ratio": 0.5}],
    })
    assert METRICS.get("model_utility")(samples, None) == 0.0
    no_real_authors = samples[samples["split"] != "real_authors"]
    with pytest.raises(EvalInputError, match="model_utility.*split 'real_authors' has no rows"):
        METRICS.get("model_utility")(no_real_authors, None)


def test_truth_ratio_scores_hand_worked():
    samples = table({
        # forget: min(R, 1/R) = 0.5, 0.5, 1.0 -> mean 2/3
        "forget": tr_rows([0.5, 2.0, 1.0]),
        # retain: max(0, 1-R) = 0.5, 0.0 -> mean 0.25
        "retain": tr_rows([0.5, 1.5]),
        # holdout: min(R, 1/R) = 0.25, 0.8 -> mean 0.525
        "holdout": tr_rows([4.0, 0.8]),
    })
    got = compute_metrics(["forget_truth_ratio", "retain_truth_ratio", "holdout_truth_ratio"], samples, None)
    assert got["forget_truth_ratio"] == pytest.approx(2 / 3)
    assert got["retain_truth_ratio"] == pytest.approx(0.25)
    assert got["holdout_truth_ratio"] == pytest.approx(0.525)
    with pytest.raises(EvalInputError, match="world_facts_truth_ratio.*'world_facts'"):
        compute_metrics(["world_facts_truth_ratio"], samples, None)


def test_split_means_and_flattening():
    samples = table({
        "forget": [{"prob": 0.2, "rouge_l_recall": 1.0, "truth_ratio": 1.0},
                   {"prob": 0.4, "rouge_l_recall": 0.0, "truth_ratio": 1.0}],
        "retain": [{"prob": 0.9, "rouge_l_recall": 0.5, "truth_ratio": 1.0}],
    })
    got = compute_metrics(["forget_prob", "retain_rouge", "split_means"], samples, None)
    assert got["forget_prob"] == pytest.approx(0.3)
    assert got["retain_rouge"] == pytest.approx(0.5)
    with pytest.raises(EvalInputError, match="holdout_prob.*'holdout'"):
        compute_metrics(["holdout_prob"], samples, None)
    # split_means is a dict metric: flattened into {split}_{prob,rouge} for the splits present.
    assert "split_means" not in got
    assert got["forget_rouge"] == pytest.approx(0.5)
    assert got["retain_prob"] == pytest.approx(0.9)
    assert set(METRICS.get("split_means")(samples, None)) == {
        "forget_prob", "forget_rouge", "retain_prob", "retain_rouge"}


def test_registry_names_and_unknown_metric():
    for name in ["forget_quality", "model_utility", "forget_truth_ratio", "retain_truth_ratio",
                 "forget_prob", "forget_rouge", "world_facts_prob", "split_means", "world_facts_option_prob",
                 "real_authors_prob", "real_authors_rouge", "real_authors_option_prob", "real_authors_truth_ratio",
                 "world_facts_option_prob_para", "real_authors_option_prob_para", "world_facts_truth_ratio_para",
                 "real_authors_truth_ratio_para", "model_utility_para", "model_utility_value",
                 "mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus", "mia_gradnorm", "mia_reference",
                 "extraction_strength", "exact_memorization", "knowmem", "verbmem", "privleak",
                 "privleak_min_k_plus_plus"]:
        assert name in METRICS
    samples = table({"forget": tr_rows([0.5, 1.0]), "retain": tr_rows([0.5])})
    assert compute_metrics(["forget_quality"], samples, samples)["forget_quality"] == pytest.approx(1.0)
    with pytest.raises(KeyError):
        compute_metrics(["no_such_metric"], samples, None)


def test_a_non_finite_result_is_an_error_not_a_nan():
    samples = table({"forget": tr_rows([0.5, 1.0])})
    samples["prob"] = [math.inf, 1.0]
    with pytest.raises(EvalInputError, match="forget_prob.*inf"):
        compute_metrics(["forget_prob"], samples, None)


def test_option_prob_hand_worked():
    # option_prob per row = P(a) / (P(a) + sum P(perturbed)): 0.6 / (0.6 + 0.1 + 0.2 + 0.1) = 0.6
    samples = table({"world_facts": [{"option_prob": 0.6, "option_prob_para": 0.1},
                                     {"option_prob": 0.2, "option_prob_para": 0.3}],
                     "real_authors": [{"option_prob": 0.9, "option_prob_para": 0.5}]})
    assert METRICS.get("world_facts_option_prob")(samples, None) == pytest.approx(0.4)
    assert METRICS.get("world_facts_option_prob_para")(samples, None) == pytest.approx(0.2)
    assert METRICS.get("real_authors_option_prob")(samples, None) == pytest.approx(0.9)
    assert METRICS.get("real_authors_option_prob_para")(samples, None) == pytest.approx(0.5)


def test_option_accuracy_hand_worked():
    # the share of rows whose paraphrase is strictly the most likely option: 2 of 3 on world_facts
    samples = table({"world_facts": [{"option_correct_para": 1.0}, {"option_correct_para": 0.0},
                                     {"option_correct_para": 1.0}],
                     "real_authors": [{"option_correct_para": 0.0}]})
    assert METRICS.get("world_facts_option_accuracy")(samples, None) == pytest.approx(2 / 3)
    assert METRICS.get("real_authors_option_accuracy")(samples, None) == 0.0
