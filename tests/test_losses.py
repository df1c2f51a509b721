"""Every loss on fixed logits, against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from forgetlab.losses import kl_to_reference, nll, sequence_logprob
from forgetlab.qa import IGNORE
from forgetlab.registry import ComponentError
from forgetlab.unlearning import METHODS, build_method
from tests.helpers import FORGET, LN, LOGITS, LOGP, FixedLogits, batch


def test_nll_is_the_mean_over_answer_tokens():
    assert nll(FixedLogits(LOGITS), FORGET).item() == pytest.approx(-(LN(1 / 2) + LN(3 / 4)) / 2, abs=1e-6)


def test_sequence_logprob_sums_answer_tokens():
    assert sequence_logprob(FixedLogits(LOGITS), FORGET).item() == pytest.approx(LOGP, abs=1e-6)


def test_kl_to_itself_is_zero_and_to_uniform_is_worked():
    model = FixedLogits(LOGITS)
    assert kl_to_reference(model, FixedLogits(LOGITS), FORGET).item() == pytest.approx(0.0, abs=1e-7)
    # reference uniform [1/2, 1/2]: KL(ref || model) at position 0 is 0; at position 1,
    # 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = 1/2 ln(2/3) + 1/2 ln 2; mean over the 2 positions.
    expected = (0 + 0.5 * LN(2 / 3) + 0.5 * LN(2)) / 2
    uniform = FixedLogits([[[0.0, 0.0]] * 3])
    assert kl_to_reference(model, uniform, FORGET).item() == pytest.approx(expected, abs=1e-6)


def test_grad_ascent_is_negative_forget_nll():
    loss, _ = build_method({"name": "grad_ascent"}).loss(FixedLogits(LOGITS), {"forget": FORGET, "retain": None})
    assert loss.item() == pytest.approx((LN(1 / 2) + LN(3 / 4)) / 2, abs=1e-6)


def test_grad_diff_combines_forget_ascent_and_retain_descent():
    # retain: one answer token, label 0 at position 0 with logits [0, 0] -> NLL ln 2
    retain = batch([IGNORE, 0, IGNORE])
    method = build_method({"name": "grad_diff", "gamma": 2.0, "alpha": 0.5})
    loss, _ = method.loss(FixedLogits(LOGITS), {"forget": FORGET, "retain": retain})
    forget_nll = -(LN(1 / 2) + LN(3 / 4)) / 2
    assert loss.item() == pytest.approx(-2.0 * forget_nll + 0.5 * LN(2), abs=1e-6)


def test_npo_loss_matches_its_formula():
    # reference: uniform logits -> log pi_ref(y|x) = 2 ln(1/2) = ln(1/4)
    beta = 0.5
    method = build_method({"name": "npo", "beta": beta, "alpha": 0.0})
    method.reference = FixedLogits([[[0.0, 0.0]] * 3])
    loss, _ = method.loss(FixedLogits(LOGITS), {"forget": FORGET, "retain": None})
    # (2/beta) log(1 + (pi/pi_ref)^beta) with pi/pi_ref = (3/8)/(1/4) = 3/2
    assert loss.item() == pytest.approx((2 / beta) * LN(1 + 1.5**beta), abs=1e-6)


def test_npo_gradient_is_grad_ascent_reweighted():
    """d NPO = 2 sigma(beta * (log pi - log pi_ref)) * d log pi, and GA's loss is log pi / |y|."""
    beta = 0.5
    npo = build_method({"name": "npo", "beta": beta, "alpha": 0.0})
    npo.reference = FixedLogits([[[0.0, 0.0]] * 3])
    model = FixedLogits(LOGITS)
    npo.loss(model, {"forget": FORGET, "retain": None})[0].backward()
    g_npo = model.logits.grad.clone()
    model.logits.grad = None
    build_method({"name": "grad_ascent"}).loss(model, {"forget": FORGET, "retain": None})[0].backward()
    g_ga = model.logits.grad.clone()
    weight = 2 / (1 + math.exp(-beta * LN(1.5)))  # 2 sigma(beta * ln(3/2))
    n_tokens = 2
    assert torch.allclose(g_npo, weight * n_tokens * g_ga, atol=1e-6)
    # ascent direction: the step -grad lowers the forget answer's probability
    with torch.no_grad():
        model.logits -= 0.1 * g_npo
    assert sequence_logprob(model, FORGET).item() < LOGP


def test_registries_hold_the_skeleton_methods():
    assert {"grad_ascent", "grad_diff", "npo"} <= set(METHODS.names())
    with pytest.raises(ComponentError, match="npo has no parameter 'betta'"):
        build_method({"name": "npo", "betta": 0.1})
