"""ce_u on fixed logits, against numbers worked by hand."""

import pytest
import torch

from forgetlab.losses import sequence_logprob
from forgetlab.qa import IGNORE
from forgetlab.unlearning import build_method
from tests.test_losses import FORGET, LN, LOGITS, LOGP, FixedLogits, batch

RETAIN = batch([IGNORE, 0, IGNORE])  # NLL ln 2


def test_ce_u_loss_is_worked():
    loss, _ = build_method({"name": "ce_u", "alpha": 0.5}).loss(
        FixedLogits(LOGITS), {"forget": FORGET, "retain": RETAIN})
    # vocabulary 2: the true token's logit at -inf -> q = onehot(other token).
    # pos 0 (y=1): -ln p_0 = -ln(1/2) = ln 2; pos 1 (y=0): -ln p_1 = -ln(1/4) = ln 4; mean = 1.5 ln 2
    assert loss.item() == pytest.approx(1.5 * LN(2) + 0.5 * LN(2), abs=1e-6)


def test_ce_u_gradient_is_worked_and_lowers_the_answer():
    model = FixedLogits(LOGITS)
    build_method({"name": "ce_u"}).loss(model, {"forget": FORGET, "retain": None})[0].backward()
    # (p - sg(q)) / 2: pos 0 ([1/2,1/2] - [1,0])/2 = [-1/4, 1/4]; pos 1 ([3/4,1/4] - [0,1])/2 = [3/8, -3/8]
    expected = torch.tensor([[[-1 / 4, 1 / 4], [3 / 8, -3 / 8], [0.0, 0.0]]])
    assert torch.allclose(model.logits.grad, expected, atol=1e-6)
    with torch.no_grad():
        model.logits -= 0.1 * model.logits.grad
    assert sequence_logprob(model, FORGET).item() < LOGP


def test_ce_u_range_check():
    with pytest.raises(ValueError, match="ce_u.alpha"):
        build_method({"name": "ce_u", "alpha": -1.0})
