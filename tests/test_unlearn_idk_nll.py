"""idk_nll on fixed logits, against numbers worked by hand."""

import pytest
import torch

from forgetlab.losses import sequence_logprob
from forgetlab.qa import IGNORE
from forgetlab.unlearning import build_method
from tests.helpers import FORGET, LN, LOGITS, FixedLogits, batch

# the refusal: label 0 at position 0 (p = 1/2) and label 1 at position 1 (p = 1/4)
IDK = batch([IGNORE, 0, 1])
RETAIN = batch([IGNORE, 0, IGNORE])  # NLL ln 2


def test_idk_nll_asks_for_the_idk_view_and_retain():
    method = build_method({"name": "idk_nll"})
    assert method.forget_views == ("idk",) and method.uses_retain and not method.needs_reference


def test_idk_nll_loss_is_worked():
    loss, parts = build_method({"name": "idk_nll", "alpha": 0.5}).loss(
        FixedLogits(LOGITS), {"forget": FORGET, "idk": IDK, "retain": RETAIN})
    # -(ln(1/2) + ln(1/4)) / 2 = 1.5 ln 2; the forget answer plays no part
    assert parts["idk_nll"] == pytest.approx(1.5 * LN(2), abs=1e-6)
    assert loss.item() == pytest.approx(1.5 * LN(2) + 0.5 * LN(2), abs=1e-6)


def test_idk_nll_gradient_is_worked_and_raises_the_refusal():
    model = FixedLogits(LOGITS)
    build_method({"name": "idk_nll", "alpha": 0.0}).loss(model, {"forget": FORGET, "idk": IDK, "retain": None})[0].backward()
    # (p - onehot(y)) / 2: pos 0 ([1/2,1/2] - [1,0])/2 = [-1/4, 1/4]; pos 1 ([3/4,1/4] - [0,1])/2 = [3/8, -3/8]
    expected = torch.tensor([[[-1 / 4, 1 / 4], [3 / 8, -3 / 8], [0.0, 0.0]]])
    assert torch.allclose(model.logits.grad, expected, atol=1e-6)
    with torch.no_grad():
        model.logits -= 0.1 * model.logits.grad
    assert sequence_logprob(model, IDK).item() > LN(1 / 8)


def test_idk_nll_pooled_is_one_mean_over_refusal_and_retain_tokens():
    # TOFU's code: (S_idk + alpha S_retain) / (N_idk + N_retain) = (3 ln 2 + 0.5 ln 2) / 3
    loss, _ = build_method({"name": "idk_nll", "alpha": 0.5, "reduction": "pooled"}).loss(
        FixedLogits(LOGITS), {"forget": FORGET, "idk": IDK, "retain": RETAIN})
    assert loss.item() == pytest.approx(3.5 * LN(2) / 3, abs=1e-6)


@pytest.mark.parametrize(("param", "value"), [("alpha", -1.0), ("reduction", "mean")])
def test_idk_nll_range_check(param, value):
    with pytest.raises(ValueError, match=f"idk_nll.{param}"):
        build_method({"name": "idk_nll", param: value})
