"""satimp on fixed logits, against numbers worked by hand."""

import pytest
import torch

from forgetlab.losses import sequence_logprob
from forgetlab.qa import IGNORE
from forgetlab.unlearning import build_method
from tests.helpers import FORGET, LN, LOGITS, LOGP, FixedLogits, batch

RETAIN = batch([IGNORE, 0, IGNORE])  # NLL ln 2


def test_satimp_loss_is_worked():
    m = build_method({"name": "satimp", "beta1": 1.0, "beta2": 1.0, "gamma": 1.0, "alpha": 0.5})
    loss, _ = m.loss(FixedLogits(LOGITS), {"forget": FORGET, "retain": RETAIN})
    # w = p(1-p): pos 0 (1/2)(1/2) = 1/4, pos 1 (3/4)(1/4) = 3/16
    forget = (0.25 * LN(0.5) + 3 / 16 * LN(0.75)) / 2
    assert loss.item() == pytest.approx(forget + 0.5 * LN(2), abs=1e-6)


def test_satimp_zero_exponents_is_grad_ascent():
    m = build_method({"name": "satimp", "beta1": 0.0, "beta2": 0.0, "gamma": 1.0, "alpha": 0.0})
    loss, _ = m.loss(FixedLogits(LOGITS), {"forget": FORGET, "retain": None})
    assert loss.item() == pytest.approx(LOGP / 2, abs=1e-6)


def test_satimp_gradient_is_worked_and_lowers_the_answer():
    model = FixedLogits(LOGITS)
    m = build_method({"name": "satimp", "beta1": 1.0, "beta2": 1.0, "gamma": 1.0, "alpha": 0.0})
    m.loss(model, {"forget": FORGET, "retain": None})[0].backward()
    # (onehot(y) - p) * sg(w) / 2: pos 0 [-1/2, 1/2] * 1/8 = [-1/16, 1/16];
    # pos 1 [1/4, -1/4] * 3/32 = [3/128, -3/128]
    expected = torch.tensor([[[-1 / 16, 1 / 16], [3 / 128, -3 / 128], [0.0, 0.0]]])
    assert torch.allclose(model.logits.grad, expected, atol=1e-6)
    with torch.no_grad():
        model.logits -= 0.1 * model.logits.grad
    assert sequence_logprob(model, FORGET).item() < LOGP


def test_satimp_defaults_are_open_unlearning_satimp_yaml():
    m = build_method({"name": "satimp"})
    assert (m.beta1, m.beta2, m.gamma, m.alpha, m.reduction) == (5.0, 1.0, 0.1, 1.0, "pooled")


@pytest.mark.parametrize(("param", "value"), [("beta1", -1.0), ("beta2", -1.0), ("gamma", -1.0), ("alpha", -1.0),
                                              ("reduction", "mean")])
def test_satimp_range_checks(param, value):
    with pytest.raises(ValueError, match=f"satimp.{param}"):
        build_method({"name": "satimp", param: value})
