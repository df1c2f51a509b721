"""relabel on fixed logits, against numbers worked by hand (its "relabel" view: see test_unlearn_views)."""

import pytest
import torch

from forgetlab.losses import sequence_logprob
from forgetlab.qa import IGNORE
from forgetlab.unlearning import build_method
from tests.helpers import FORGET, LN, LOGITS, LOGP, FixedLogits, batch

# the wrong answer: label 0 at position 0 (p = 1/2) and label 1 at position 1 (p = 1/4)
WRONG = batch([IGNORE, 0, 1])
RETAIN = batch([IGNORE, 0, IGNORE])  # NLL ln 2


def test_relabel_uses_retain_only_with_a_retain_weight():
    plain = build_method({"name": "relabel"})
    assert plain.forget_views == ("relabel",) and not plain.uses_retain and not plain.needs_reference
    assert build_method({"name": "relabel", "alpha": 0.5}).uses_retain


def test_relabel_loss_is_worked():
    model = FixedLogits(LOGITS)
    loss, _ = build_method({"name": "relabel"}).loss(model, {"forget": FORGET, "relabel": WRONG, "retain": None})
    assert loss.item() == pytest.approx(1.5 * LN(2), abs=1e-6)  # -(ln(1/2) + ln(1/4)) / 2
    loss, _ = build_method({"name": "relabel", "alpha": 0.5}).loss(
        model, {"forget": FORGET, "relabel": WRONG, "retain": RETAIN})
    assert loss.item() == pytest.approx(1.5 * LN(2) + 0.5 * LN(2), abs=1e-6)


def test_relabel_gradient_is_worked_and_raises_the_wrong_answer():
    model = FixedLogits(LOGITS)
    build_method({"name": "relabel"}).loss(model, {"forget": FORGET, "relabel": WRONG, "retain": None})[0].backward()
    # (p - onehot(y)) / 2: pos 0 [-1/4, 1/4]; pos 1 [3/8, -3/8]
    expected = torch.tensor([[[-1 / 4, 1 / 4], [3 / 8, -3 / 8], [0.0, 0.0]]])
    assert torch.allclose(model.logits.grad, expected, atol=1e-6)
    with torch.no_grad():
        model.logits -= 0.1 * model.logits.grad
    assert sequence_logprob(model, WRONG).item() > LN(1 / 8)
    assert sequence_logprob(model, FORGET).item() < LOGP  # here the wrong answer displaces the true one


def test_relabel_range_check():
    with pytest.raises(ValueError, match="relabel.alpha"):
        build_method({"name": "relabel", "alpha": -0.1})
