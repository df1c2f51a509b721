"""undial on fixed logits, against numbers worked by hand."""

import pytest
import torch

from forgetlab.losses import sequence_logprob
from forgetlab.unlearning import build_method
from tests.helpers import FORGET, LN, LOGITS, LOGP, FixedLogits

UNIFORM = [[[0.0, 0.0]] * 3]


def method(beta):
    m = build_method({"name": "undial", "beta": beta})
    m.reference = FixedLogits(UNIFORM)
    return m


def test_undial_needs_reference_and_loss_is_worked():
    m = method(LN(3))
    assert m.needs_reference
    loss, _ = m.loss(FixedLogits(LOGITS), {"forget": FORGET, "retain": None})
    # reference uniform, true logit lowered by ln 3 -> q gives true token 1/4, other 3/4.
    # pos 0 (y=1): q=[3/4,1/4], p=[1/2,1/2] -> CE = ln 2
    # pos 1 (y=0): q=[1/4,3/4], p=[3/4,1/4] -> CE = -(1/4 ln(3/4) + 3/4 ln(1/4))
    expected = (LN(2) - (0.25 * LN(0.75) + 0.75 * LN(0.25))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_undial_gradient_is_worked_and_lowers_the_answer():
    model = FixedLogits(LOGITS)
    method(LN(3)).loss(model, {"forget": FORGET, "retain": None})[0].backward()
    # d CE / d z = (p - q) / 2 positions: pos 0 [-1/4, 1/4]/2; pos 1 [1/2, -1/2]/2; the reference gets none
    expected = torch.tensor([[[-1 / 8, 1 / 8], [1 / 4, -1 / 4], [0.0, 0.0]]])
    assert torch.allclose(model.logits.grad, expected, atol=1e-6)
    with torch.no_grad():
        model.logits -= 0.1 * model.logits.grad
    assert sequence_logprob(model, FORGET).item() < LOGP


def test_undial_defaults_are_open_unlearning_undial_yaml():
    m = build_method({"name": "undial"})
    assert (m.beta, m.gamma, m.alpha, m.tokens) == (10.0, 1.0, 0.0, "all") and not m.uses_retain
    assert build_method({"name": "undial", "alpha": 0.5}).uses_retain


@pytest.mark.parametrize(("param", "value"), [("beta", -1.0), ("gamma", -1.0), ("alpha", -1.0), ("tokens", "prompt")])
def test_undial_range_checks(param, value):
    with pytest.raises(ValueError, match=f"undial.{param}"):
        build_method({"name": "undial", param: value})
