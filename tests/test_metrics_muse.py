"""Hand-worked checks of the MUSE metrics: knowmem, verbmem, privleak."""

import pandas as pd
import pytest

from forgetlab.eval.scoring import rouge_l_f1
from forgetlab.metrics import METRICS, EvalInputError, compute_metrics
from forgetlab.metrics.privleak import privleak_of


def test_rouge_l_f1_hand_worked():
    # LCS("a b c", "a x c d") = 2: precision 2/3, recall 2/4 -> F1 = 2 * (2/3)(1/2) / (2/3 + 1/2) = 4/7
    assert rouge_l_f1("a b c", "a x c d") == pytest.approx(4 / 7)
    assert rouge_l_f1("", "a b") == 0.0


def test_knowmem_hand_worked():
    t = pd.DataFrame([{"split": "forget", "rouge_l_f1": 1.0}, {"split": "forget", "rouge_l_f1": 0.5},
                      {"split": "retain", "rouge_l_f1": 0.25}, {"split": "holdout", "rouge_l_f1": 0.0}])
    assert compute_metrics(["knowmem"], t) == pytest.approx({"forget_knowmem": 0.75, "retain_knowmem": 0.25})


def test_verbmem_hand_worked():
    t = pd.DataFrame([{"split": "forget", "verbmem_rouge_l_f1": 1.0}, {"split": "forget", "verbmem_rouge_l_f1": 0.5},
                      {"split": "retain", "verbmem_rouge_l_f1": float("nan")}])
    assert compute_metrics(["verbmem"], t) == {"forget_verbmem": pytest.approx(0.75)}
    with pytest.raises(EvalInputError, match="verbmem.*no verbmem_rouge_l_f1 values on split 'forget'"):
        compute_metrics(["verbmem"], t.assign(verbmem_rouge_l_f1=float("nan")))


def test_privleak_formula_hand_worked():
    # conventional AUCs 0.9 and 0.6 -> MUSE AUCs 0.1 and 0.4 -> (0.1 - 0.4) / 0.4 * 100 = -75
    assert privleak_of(0.9, 0.6) == pytest.approx(-75.0)
    assert privleak_of(0.5, 0.5) == 0.0
    assert privleak_of(0.25, 0.5) == pytest.approx(50.0)    # over-unlearning is positive
    with pytest.raises(EvalInputError, match="divides by 0"):
        privleak_of(0.9, 1.0)


def mink_table(forget_lp, holdout_lp):
    """Per-token log-probs, each answer followed by its eos's (-9, dropped by Min-K%)."""
    rows = [{"split": "forget", "answer_token_logp": [*lp, -9.0]} for lp in forget_lp]
    rows += [{"split": "holdout", "answer_token_logp": [*lp, -9.0]} for lp in holdout_lp]
    return pd.DataFrame(rows)


def test_privleak_from_min_k_on_two_tables():
    # model: forget Min-K scores -0.1, -0.2 above holdout -1 -> AUC 1 -> MUSE AUC 0
    model = mink_table([[-0.1], [-0.2]], [[-1.0], [-2.0]])
    # oracle: forget -0.5, -3 vs holdout -1, -2 -> AUC 2/4 = 0.5 -> MUSE AUC 0.5
    oracle = mink_table([[-0.5], [-3.0]], [[-1.0], [-2.0]])
    assert METRICS.get("privleak")(model, oracle) == pytest.approx(-100.0)
    assert METRICS.get("privleak")(oracle, oracle) == 0.0
    with pytest.raises(EvalInputError, match="'privleak' needs the oracle's per-sample table, and none was given"):
        METRICS.get("privleak")(model, None)
    with pytest.raises(EvalInputError, match="privleak_min_k_plus_plus.*oracle's per-sample table has no column"):
        METRICS.get("privleak_min_k_plus_plus")(model.assign(answer_token_mu=[[0.0, 0.0]] * 4,
                                                             answer_token_sigma=[[1.0, 1.0]] * 4), oracle)
