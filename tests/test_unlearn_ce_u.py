"""ce_u on fixed logits, against numbers worked by hand."""

import pytest
import torch

from forgetlab.losses import sequence_logprob
from forgetlab.qa import IGNORE
from forgetlab.unlearning import build_method
from tests.helpers import FORGET, LN, LOGITS, LOGP, FixedLogits, batch

RETAIN = batch([IGNORE, 0, IGNORE])  # NLL ln 2


def test_ce_u_loss_is_worked():
    # vocabulary 2: the true token's logit at -inf -> q = onehot(other token).
    # pos 0 (y=1): -ln p_0 = -ln(1/2) = ln 2; pos 1 (y=0): -ln p_1 = -ln(1/4) = ln 4
    # default: the first answer token (pos 0) is skipped, as the reference -> ln 4
    loss, _ = build_method({"name": "ce_u", "alpha": 0.5}).loss(
        FixedLogits(LOGITS), {"forget": FORGET, "retain": RETAIN})
    assert loss.item() == pytest.approx(LN(4) + 0.5 * LN(2), abs=1e-6)
    # skip_first 0: both positions, mean 1.5 ln 2
    loss, _ = build_method({"name": "ce_u", "alpha": 0.5, "skip_first": 0}).loss(
        FixedLogits(LOGITS), {"forget": FORGET, "retain": RETAIN})
    assert loss.item() == pytest.approx(1.5 * LN(2) + 0.5 * LN(2), abs=1e-6)


def test_ce_u_skips_the_first_answer_token_and_uses_retain_only_with_alpha():
    model = FixedLogits(LOGITS)
    method = build_method({"name": "ce_u"})
    assert method.skip_first == 1 and not method.uses_retain and build_method({"name": "ce_u", "alpha": 1.0}).uses_retain
    method.loss(model, {"forget": FORGET, "retain": None})[0].backward()
    # only pos 1 counts: p - sg(q) = [3/4, 1/4] - [0, 1]
    expected = torch.tensor([[[0.0, 0.0], [3 / 4, -3 / 4], [0.0, 0.0]]])
    assert torch.allclose(model.logits.grad, expected, atol=1e-6)
    # a batch with only one answer token has nothing left: zero loss, zero gradient, no NaN
    model.logits.grad = None
    loss, _ = method.loss(model, {"forget": batch([IGNORE, 1, IGNORE]), "retain": None})
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(model.logits.grad) == 0


def test_ce_u_gradient_is_worked_and_lowers_the_answer():
    model = FixedLogits(LOGITS)
    build_method({"name": "ce_u", "skip_first": 0}).loss(model, {"forget": FORGET, "retain": None})[0].backward()
    # (p - sg(q)) / 2: pos 0 ([1/2,1/2] - [1,0])/2 = [-1/4, 1/4]; pos 1 ([3/4,1/4] - [0,1])/2 = [3/8, -3/8]
    expected = torch.tensor([[[-1 / 4, 1 / 4], [3 / 8, -3 / 8], [0.0, 0.0]]])
    assert torch.allclose(model.logits.grad, expected, atol=1e-6)
    with torch.no_grad():
        model.logits -= 0.1 * model.logits.grad
    assert sequence_logprob(model, FORGET).item() < LOGP


@pytest.mark.parametrize(("param", "value"), [("alpha", -1.0), ("skip_first", -1), ("skip_first", 1.5)])
def test_ce_u_range_check(param, value):
    with pytest.raises(ValueError, match=f"ce_u.{param}"):
        build_method({"name": "ce_u", param: value})
