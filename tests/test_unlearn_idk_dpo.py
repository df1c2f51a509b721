"""idk_dpo on fixed logits, against numbers worked by hand."""

import math

import pytest
import torch

from forgetlab.losses import sequence_logprob
from forgetlab.qa import IGNORE
from forgetlab.unlearning import build_method
from tests.helpers import (
    FORGET,
    FORGET4,
    IDK4,
    LN,
    LOGITS,
    LOGITS4,
    UNIFORM4,
    FixedLogits,
    batch,
)

IDK = batch([IGNORE, 0, 1])  # the refusal: p = 1/2 then 1/4 -> log pi(y_w|x) = ln(1/8)
RETAIN = batch([IGNORE, 0, IGNORE])  # NLL ln 2


def dpo(alpha, beta, reference, **extra):
    method = build_method({"name": "idk_dpo", "beta": beta, "alpha": alpha, **extra})
    method.reference = FixedLogits(reference).requires_grad_(False)
    return method


def test_idk_dpo_asks_for_the_reference_the_idk_view_and_retain():
    method = build_method({"name": "idk_dpo"})
    assert method.needs_reference and method.uses_retain and method.forget_views == ("idk",)


def test_idk_dpo_loss_is_worked():
    # reference uniform: log pi_ref = ln(1/4) for both answers; model: y_w ln(1/8), y_l ln(3/8)
    # margin = (ln(1/8) - ln(1/4)) - (ln(3/8) - ln(1/4)) = -ln 3;  -log sigmoid(-beta ln 3) = ln(1 + 3^beta),
    # times 2/beta (open-unlearning's DPO) unless plain
    beta = 0.5
    method = dpo(0.5, beta, [[[0.0, 0.0]] * 3], gamma=0.5)
    loss, parts = method.loss(FixedLogits(LOGITS), {"forget": FORGET, "idk": IDK, "retain": RETAIN})
    assert parts["dpo_margin"] == pytest.approx(-LN(3), abs=1e-6)
    assert loss.item() == pytest.approx(0.5 * (2 / beta) * LN(1 + 3**beta) + 0.5 * LN(2), abs=1e-6)
    plain = dpo(0.5, beta, [[[0.0, 0.0]] * 3], plain=True)
    loss, _ = plain.loss(FixedLogits(LOGITS), {"forget": FORGET, "idk": IDK, "retain": RETAIN})
    assert loss.item() == pytest.approx(LN(1 + 3**beta) + 0.5 * LN(2), abs=1e-6)


def test_idk_dpo_gradient_is_worked_and_prefers_the_refusal():
    # disjoint positions (see test_unlearn_flat): y_l at positions 0-1, y_w at position 2.
    # model: log pi(y_w) = ln(1/4), log pi(y_l) = ln(3/8); uniform reference: ln(1/2), ln(1/4)
    # margin = ln(1/2) - ln(3/2) = -ln 3
    beta = 0.5
    method = dpo(0.0, beta, UNIFORM4)
    model = FixedLogits(LOGITS4)
    win, lose = sequence_logprob(model, IDK4).item(), sequence_logprob(model, FORGET4).item()
    method.loss(model, {"forget": FORGET4, "idk": IDK4, "retain": None})[0].backward()
    # dL = -(2/beta) beta sigmoid(-beta m) (d log pi(y_w) - d log pi(y_l)), d log p_y / dz = onehot(y) - p:
    # d log pi(y_w): pos 2 [3/4, -3/4];  d log pi(y_l): pos 0 [-1/2, 1/2], pos 1 [1/4, -1/4]
    c = 2 / (1 + math.exp(-beta * LN(3)))
    expected = -c * torch.tensor([[[1 / 2, -1 / 2], [-1 / 4, 1 / 4], [3 / 4, -3 / 4], [0.0, 0.0]]])
    assert torch.allclose(model.logits.grad, expected, atol=1e-6)
    assert method.reference.logits.grad is None
    with torch.no_grad():
        model.logits -= 0.1 * model.logits.grad
    assert sequence_logprob(model, IDK4).item() > win
    assert sequence_logprob(model, FORGET4).item() < lose


def test_idk_dpo_at_the_reference_is_log_2():
    # policy == reference: margin 0 -> -log sigmoid(0) = ln 2, times 2/beta unless plain
    loss, _ = dpo(0.0, 0.3, LOGITS).loss(FixedLogits(LOGITS), {"forget": FORGET, "idk": IDK, "retain": None})
    assert loss.item() == pytest.approx(LN(2) * 2 / 0.3, abs=1e-6)
    loss, _ = dpo(0.0, 0.3, LOGITS, plain=True).loss(FixedLogits(LOGITS), {"forget": FORGET, "idk": IDK, "retain": None})
    assert loss.item() == pytest.approx(LN(2), abs=1e-6)


@pytest.mark.parametrize(("field", "value"), [("beta", 0.0), ("alpha", -1.0), ("gamma", -1.0), ("plain", "yes")])
def test_idk_dpo_range_checks(field, value):
    with pytest.raises(ValueError, match=f"idk_dpo.{field}"):
        build_method({"name": "idk_dpo", field: value})
