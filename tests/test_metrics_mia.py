"""Hand-worked checks of the membership-inference metrics (AUC of forget vs holdout)."""

import math

import numpy as np
import pandas as pd
import pytest

from forgetlab.metrics import METRICS, EvalInputError, compute_metrics
from forgetlab.metrics._mia import k_lowest_mean, min_k_plus_plus_tokens
from forgetlab.metrics.mia_min_k import min_k_metric


def table(forget: list[dict], holdout: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"split": "forget", **r} for r in forget] + [{"split": "holdout", **r} for r in holdout])


def test_mia_loss_hand_worked():
    # scores -NLL: forget -1, -3; holdout -2, -4. Pairs (f, h) with f > h: (-1,-2), (-1,-4), (-3,-4) -> 3/4
    t = table([{"answer_nll": 1.0}, {"answer_nll": 3.0}], [{"answer_nll": 2.0}, {"answer_nll": 4.0}])
    assert METRICS.get("mia_loss")(t, None) == pytest.approx(0.75)
    # memorised forget (low loss everywhere) is fully recognisable; swapped, not at all
    t = table([{"answer_nll": 0.1}, {"answer_nll": 0.2}], [{"answer_nll": 2.0}, {"answer_nll": 3.0}])
    assert METRICS.get("mia_loss")(t, None) == 1.0
    t = table([{"answer_nll": 2.0}], [{"answer_nll": 0.5}])
    assert METRICS.get("mia_loss")(t, None) == 0.0


def test_mia_zlib_hand_worked_with_a_tie():
    # scores -NLL/zlib: forget -0.2, -0.3; holdout -0.3, -0.025 -> 1 win + 1 tie (1/2) of 4 pairs = 0.375
    t = table([{"answer_nll": 2.0, "answer_zlib": 10}, {"answer_nll": 6.0, "answer_zlib": 20}],
              [{"answer_nll": 3.0, "answer_zlib": 10}, {"answer_nll": 1.0, "answer_zlib": 40}])
    assert METRICS.get("mia_zlib")(t, None) == pytest.approx(0.375)


def test_min_k_selection_hand_worked():
    assert k_lowest_mean([-1, -2, -3, -4, -5], 0.4) == pytest.approx(-4.5)   # floor(0.4*5) = 2 lowest
    assert k_lowest_mean([-1, -2], 0.4) == pytest.approx(-2.0)               # floor(0.8) = 0 -> at least 1
    assert k_lowest_mean([-3, -1, -2], 1.0) == pytest.approx(-2.0)           # k = 1: the mean
    with pytest.raises(ValueError):
        k_lowest_mean([-1.0], 0.0)


def test_mia_min_k_hand_worked():
    # the last entry of each answer is its eos token, which Min-K% drops (open-unlearning's
    # tokenwise_logprobs). k = 0.4: forget scores mean of 2 lowest of 5: -0.5 and -4.5; holdout
    # -2.5 -> AUC 1/2
    t = table([{"answer_token_logp": [-0.1, -0.2, -0.3, -0.4, -0.6, -50.0]},
               {"answer_token_logp": [-1, -2, -3, -4, -5, -0.01]}],
              [{"answer_token_logp": [-2.0, -3.0, -0.01]}])
    assert METRICS.get("mia_min_k")(t, None) == pytest.approx(0.5)
    # with k = 1 the score is the mean log-prob: -0.32, -3 vs -2.5 -> still 1/2; k is a parameter
    assert min_k_metric(1.0, "k1")(t, None) == pytest.approx(0.5)
    # with the eos kept (forgetlab's former variant) all 6, 6 and 3 values count: forget means of the
    # 2 lowest (-50 - 0.6) / 2 = -25.3 and (-5 - 4) / 2 = -4.5, holdout the 1 lowest -3 -> AUC 0
    assert min_k_metric(name="eos", eos=True)(t, None) == pytest.approx(0.0)


def test_min_k_plus_plus_token_scores_hand_worked():
    # p = (1/2, 1/4, 1/4): mu = -(3/2) log 2, sigma = (1/2) log 2; target of p = 1/2 -> s = 1
    l2 = math.log(2)
    s = min_k_plus_plus_tokens([-l2], [-1.5 * l2], [0.5 * l2])
    assert s[0] == pytest.approx(1.0)
    # target of p = 1/4 -> (-2 log 2 + 1.5 log 2) / (0.5 log 2) = -1
    assert min_k_plus_plus_tokens([-2 * l2], [-1.5 * l2], [0.5 * l2])[0] == pytest.approx(-1.0)
    # a uniform distribution has sigma 0: open-unlearning's floor on sigma^2 (1e-6) keeps the
    # score finite; a target 0.001 above mu then scores 0.001 / sqrt(1e-6) = 1
    assert np.isfinite(min_k_plus_plus_tokens([-math.log(4)], [-math.log(4)], [0.0])).all()
    assert min_k_plus_plus_tokens([-1.0 + 1e-3], [-1.0], [0.0])[0] == pytest.approx(1.0)


def test_mia_min_k_plus_plus_hand_worked():
    l2 = math.log(2)
    # one answer token then the eos (dropped: its entries would score -100)
    row = lambda z: {"answer_token_logp": [z * 0.5 * l2 - 1.5 * l2, -100.0], "answer_token_mu": [-1.5 * l2, 0.0],
                     "answer_token_sigma": [0.5 * l2, 1.0]}
    # token scores z: forget 1, -1; holdout 0 -> AUC 1/2; forget 1, 2 vs 0 -> 1
    assert METRICS.get("mia_min_k_plus_plus")(table([row(1), row(-1)], [row(0)]), None) == pytest.approx(0.5)
    assert METRICS.get("mia_min_k_plus_plus")(table([row(1), row(2)], [row(0)]), None) == pytest.approx(1.0)


def test_mia_gradnorm_hand_worked():
    t = table([{"grad_norm": 0.1}, {"grad_norm": 0.3}], [{"grad_norm": 0.2}, {"grad_norm": 0.4}])
    assert METRICS.get("mia_gradnorm")(t, None) == pytest.approx(0.75)
    t.loc[0, "grad_norm"] = math.nan
    with pytest.raises(EvalInputError, match="mia_gradnorm.*1 forget rows.*grad_norm"):
        METRICS.get("mia_gradnorm")(t, None)


def test_mia_reference_hand_worked_and_needs_the_oracle():
    # the reference is the oracle (open-unlearning: a retain model); its NLLs matched on (split, id).
    # scores -(NLL - ref): forget 2, 0; holdout -1, 1 -> 3/4
    t = table([{"id": 0, "answer_nll": 1.0}, {"id": 1, "answer_nll": 2.0}],
              [{"id": 2, "answer_nll": 2.0}, {"id": 3, "answer_nll": 3.0}])
    oracle = table([{"id": 1, "answer_nll": 2.0}, {"id": 0, "answer_nll": 3.0}],   # another row order
                   [{"id": 2, "answer_nll": 1.0}, {"id": 3, "answer_nll": 4.0}])
    assert METRICS.get("mia_reference")(t, oracle) == pytest.approx(0.75)
    assert METRICS.get("mia_reference")(oracle, oracle) == pytest.approx(0.5)  # every score 0
    with pytest.raises(EvalInputError, match="'mia_reference' needs the oracle's per-sample table, and none was given"):
        METRICS.get("mia_reference")(t, None)
    with pytest.raises(EvalInputError, match=r"mia_reference.*oracle's table lacks 1 holdout row.*id 3"):
        METRICS.get("mia_reference")(t, oracle[oracle["id"] != 3])


def test_mia_needs_both_splits():
    t = table([{"answer_nll": 1.0}], [])
    with pytest.raises(EvalInputError, match="mia_loss.*split 'holdout' has no rows"):
        compute_metrics(["mia_loss"], t, None)
    with pytest.raises(EvalInputError, match="mia_min_k.*no column.*answer_token_logp"):
        compute_metrics(["mia_min_k"], table([{"answer_nll": 1.0}], [{"answer_nll": 2.0}]), None)
