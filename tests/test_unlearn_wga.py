"""wga on fixed logits, against numbers worked by hand."""

import pytest
import torch

from forgetlab.losses import sequence_logprob
from forgetlab.qa import IGNORE
from forgetlab.unlearning import build_method
from tests.helpers import FORGET, LN, LOGITS, LOGP, FixedLogits, batch

RETAIN = batch([IGNORE, 0, IGNORE])  # NLL ln 2


def test_wga_loss_is_worked():
    loss, _ = build_method({"name": "wga", "beta": 1.0, "gamma": 1.0, "alpha": 0.5}).loss(
        FixedLogits(LOGITS), {"forget": FORGET, "retain": RETAIN})
    # w = p: (1/2 ln(1/2) + 3/4 ln(3/4)) / 2 tokens, + 0.5 ln 2
    assert loss.item() == pytest.approx((0.5 * LN(0.5) + 0.75 * LN(0.75)) / 2 + 0.5 * LN(2), abs=1e-6)


def test_wga_beta_zero_is_grad_ascent():
    model = FixedLogits(LOGITS)
    loss, _ = build_method({"name": "wga", "beta": 0.0, "alpha": 0.0}).loss(model, {"forget": FORGET, "retain": None})
    assert loss.item() == pytest.approx(LOGP / 2, abs=1e-6)


def test_wga_gradient_is_worked_and_lowers_the_answer():
    model = FixedLogits(LOGITS)
    build_method({"name": "wga", "beta": 1.0, "alpha": 0.0}).loss(model, {"forget": FORGET, "retain": None})[0].backward()
    # d log p_y / d z = onehot(y) - p, times sg(w)/2:
    # pos 0: y=1, p=[1/2,1/2], w/2=1/4 -> [-1/8, 1/8]; pos 1: y=0, p=[3/4,1/4], w/2=3/8 -> [3/32, -3/32]
    expected = torch.tensor([[[-1 / 8, 1 / 8], [3 / 32, -3 / 32], [0.0, 0.0]]])
    assert torch.allclose(model.logits.grad, expected, atol=1e-6)
    with torch.no_grad():
        model.logits -= 0.1 * model.logits.grad
    assert sequence_logprob(model, FORGET).item() < LOGP


@pytest.mark.parametrize(("param", "value"), [("beta", -0.1), ("gamma", -0.1), ("alpha", -0.1), ("reduction", "mean")])
def test_wga_range_checks(param, value):
    with pytest.raises(ValueError, match=f"wga.{param}"):
        build_method({"name": "wga", param: value})
