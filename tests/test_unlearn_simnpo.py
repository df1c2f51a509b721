"""simnpo on fixed logits, against numbers worked by hand."""

import math

import pytest
import torch

from forgetlab.losses import sequence_logprob
from forgetlab.qa import IGNORE
from forgetlab.unlearning import build_method
from tests.test_losses import FORGET, LN, LOGITS, LOGP, FixedLogits, batch

# FORGET: 2 answer tokens with p = 1/2 and 3/4 -> log pi(y|x) = ln(3/8), |y| = 2.
RETAIN = batch([IGNORE, 0, IGNORE])  # one token, logits [0, 0] -> NLL ln 2


def test_simnpo_loss_is_worked():
    method = build_method({"name": "simnpo", "beta": 2.0, "delta": 0.5, "alpha": 0.5})
    loss, _ = method.loss(FixedLogits(LOGITS), {"forget": FORGET, "retain": RETAIN})
    # -(2/2) log sigmoid(-(2/2) ln(3/8) - 0.5) = log(1 + exp(ln(3/8) + 0.5)) = ln(1 + (3/8) e^0.5)
    forget = LN(1 + 3 / 8 * math.exp(0.5))
    assert loss.item() == pytest.approx(forget + 0.5 * LN(2), abs=1e-6)


def test_simnpo_gradient_is_reweighted_ascent_and_lowers_the_answer():
    model = FixedLogits(LOGITS)
    build_method({"name": "simnpo", "beta": 2.0, "delta": 0.5, "alpha": 0.0}).loss(
        model, {"forget": FORGET, "retain": None})[0].backward()
    g = model.logits.grad.clone()
    model.logits.grad = None
    build_method({"name": "grad_ascent"}).loss(model, {"forget": FORGET, "retain": None})[0].backward()
    # d L = 2 sigmoid((beta/|y|) log pi + delta) * d log pi / |y|  and GA's gradient is d log pi / |y|
    weight = 2 / (1 + math.exp(-(LN(3 / 8) + 0.5)))
    assert torch.allclose(g, weight * model.logits.grad, atol=1e-6)
    with torch.no_grad():
        model.logits -= 0.1 * g
    assert sequence_logprob(model, FORGET).item() < LOGP


def test_simnpo_range_checks():
    with pytest.raises(ValueError, match="simnpo.beta"):
        build_method({"name": "simnpo", "beta": 0.0})
    with pytest.raises(ValueError, match="simnpo.alpha"):
        build_method({"name": "simnpo", "alpha": -1.0})
