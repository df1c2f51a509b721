"""simnpo on fixed logits, against numbers worked by hand."""

import math

import pytest
import torch

from forgetlab.losses import sequence_logprob
from forgetlab.qa import IGNORE
from forgetlab.unlearning import build_method
from tests.helpers import FORGET, LN, LOGITS, LOGP, FixedLogits, batch

# FORGET: 2 answer tokens with p = 1/2 and 3/4 -> log pi(y|x) = ln(3/8), |y| = 2.
RETAIN = batch([IGNORE, 0, IGNORE])  # one token, logits [0, 0] -> NLL ln 2


def test_simnpo_loss_is_worked():
    method = build_method({"name": "simnpo", "beta": 2.0, "delta": 0.5, "gamma": 0.25, "alpha": 0.5})
    loss, parts = method.loss(FixedLogits(LOGITS), {"forget": FORGET, "retain": RETAIN})
    # -(2/beta) log sigmoid(beta (-ln(3/8)/2 - delta)) = -log sigmoid(-ln(3/8) - 1) = ln(1 + (3/8) e)
    forget = LN(1 + 3 / 8 * math.e)
    assert parts["simnpo_forget"] == pytest.approx(forget, abs=1e-6)
    assert loss.item() == pytest.approx(0.25 * forget + 0.5 * LN(2), abs=1e-6)


def test_simnpo_defaults_are_open_unlearning_simnpo_yaml():
    method = build_method({"name": "simnpo"})
    assert (method.beta, method.delta, method.gamma, method.alpha) == (4.5, 0.0, 0.125, 1.0)


def test_simnpo_gradient_is_reweighted_ascent_and_lowers_the_answer():
    model = FixedLogits(LOGITS)
    build_method({"name": "simnpo", "beta": 2.0, "delta": 0.5, "gamma": 1.0, "alpha": 0.0}).loss(
        model, {"forget": FORGET, "retain": None})[0].backward()
    g = model.logits.grad.clone()
    model.logits.grad = None
    build_method({"name": "grad_ascent"}).loss(model, {"forget": FORGET, "retain": None})[0].backward()
    # d L = 2 sigmoid(beta ((1/|y|) log pi + delta)) * d log pi / |y|  and GA's gradient is d log pi / |y|
    weight = 2 / (1 + math.exp(-(LN(3 / 8) + 1.0)))
    assert torch.allclose(g, weight * model.logits.grad, atol=1e-6)
    with torch.no_grad():
        model.logits -= 0.1 * g
    assert sequence_logprob(model, FORGET).item() < LOGP


def test_simnpo_range_checks():
    with pytest.raises(ValueError, match="simnpo.beta"):
        build_method({"name": "simnpo", "beta": 0.0})
    with pytest.raises(ValueError, match="simnpo.alpha"):
        build_method({"name": "simnpo", "alpha": -1.0})
    with pytest.raises(ValueError, match="simnpo.gamma"):
        build_method({"name": "simnpo", "gamma": -1.0})
    with pytest.raises(ValueError, match="simnpo.delta"):
        build_method({"name": "simnpo", "delta": float("nan")})
