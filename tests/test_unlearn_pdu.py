"""pdu on fixed logits: the primal loss and the dual update against numbers worked by hand."""

import math

import pytest
import torch

from forgetlab.qa import IGNORE
from forgetlab.train import Loader, TrainContext
from forgetlab.unlearning import build_method
from tests.helpers import FORGET, LN, LOGITS, FixedLogits, batch

RETAIN = batch([IGNORE, 0, IGNORE])  # one token, logits [0, 0] -> NLL ln 2
# FORGET's answer positions: [0, 0] -> margin max - mean = 0;  [ln 3, 0] -> ln 3 - ln(3)/2 = ln(3)/2
FLATTENING = (0.0 + (LN(3) / 2) ** 2) / 2


def pdu(**params):
    return build_method({"name": "pdu", "relative": False, "warmup_epochs": 0, **params})


def test_pdu_primal_loss_is_worked():
    m = pdu(epsilon=0.5, lambda_init=2.0)
    loss, parts = m.loss(FixedLogits(LOGITS), {"forget": FORGET, "retain": RETAIN})
    assert parts["pdu_forget"] == pytest.approx(FLATTENING, abs=1e-6)
    assert parts["retain_nll"] == pytest.approx(LN(2), abs=1e-6)
    assert parts["pdu_lambda"] == 2.0
    assert loss.item() == pytest.approx(FLATTENING + 2.0 * (LN(2) - 0.5), abs=1e-6)


def test_pdu_forget_loss_pools_positions_or_averages_rows():
    # row 1: FORGET (2 answer positions); row 2: only position 1 supervised -> margin^2 = ln(3)^2 / 4
    two = {k: torch.cat([FORGET[k], batch([IGNORE, IGNORE, 0])[k]]) for k in FORGET}
    _, parts = pdu(lambda_init=0.0).loss(FixedLogits(LOGITS), {"forget": two, "retain": RETAIN})
    assert parts["pdu_forget"] == pytest.approx((0.0 + 2 * LN(3) ** 2 / 4) / 3, abs=1e-6)  # 3 positions pooled
    _, parts = pdu(lambda_init=0.0, reduction="sequence").loss(FixedLogits(LOGITS), {"forget": two, "retain": RETAIN})
    assert parts["pdu_forget"] == pytest.approx((FLATTENING + LN(3) ** 2 / 4) / 2, abs=1e-6)


def test_a_flat_distribution_has_zero_forget_loss_and_gradient():
    model = FixedLogits([[[0.7] * 5, [-2.0] * 5, [3.0] * 5]])  # constant logits at every position
    forget = batch([IGNORE, 4, 2])
    loss, parts = pdu(lambda_init=0.0).loss(model, {"forget": forget, "retain": batch([IGNORE, 1, IGNORE])})
    assert parts["pdu_forget"] == pytest.approx(0.0, abs=1e-12)
    loss.backward()
    assert torch.count_nonzero(model.logits.grad) == 0


def test_pdu_gradient_flattens_the_answer_positions():
    model = FixedLogits(LOGITS)
    pdu(lambda_init=0.0).loss(model, {"forget": FORGET, "retain": RETAIN})[0].backward()
    # position 1: d/dz (max - mean)^2 / 2 = (ln(3)/2) * (onehot(argmax) - 1/V), V = 2 -> [ln3/4, -ln3/4]
    expected = torch.tensor([[[0.0, 0.0], [LN(3) / 4, -LN(3) / 4], [0.0, 0.0]]])
    assert torch.allclose(model.logits.grad, expected, atol=1e-6)


def test_dual_ascent_rises_when_violated_and_is_clipped_at_zero():
    m = pdu(epsilon=0.5, lambda_init=1.0, dual_lr=0.5)
    m.loss(FixedLogits(LOGITS), {"forget": FORGET, "retain": RETAIN})
    m.after_step(None, 0, None)
    assert m.lam == pytest.approx(1.0 + 0.5 * (LN(2) - 0.5), abs=1e-6)  # violated: NLL ln 2 > 0.5
    assert m.summary()["pdu_lambda_final"] == pytest.approx(m.lam)

    m = pdu(epsilon=2.0, lambda_init=0.05, dual_lr=0.5)  # satisfied by a margin: 0.05 + 0.5 (ln 2 - 2) < 0
    m.loss(FixedLogits(LOGITS), {"forget": FORGET, "retain": RETAIN})
    m.after_step(None, 0, None)
    assert m.lam == 0.0
    _, parts = m.loss(FixedLogits(LOGITS), {"forget": FORGET, "retain": RETAIN})
    assert parts["pdu_lambda"] == 0.0


def test_dual_step_uses_the_mean_retain_nll_of_the_step_and_waits_for_warmup():
    m = pdu(epsilon=1.0, lambda_init=1.0, dual_lr=1.0, warmup_epochs=0.5)  # dual steps after the first epoch
    model = FixedLogits(LOGITS)
    one_epoch = Loader([{"input_ids": [1, 0, 0], "labels": [IGNORE, 0, 0]}] * 2, batch_size=1, pad_id=0, seed=0)
    m.setup(model, TrainContext(total_steps=2, forget=one_epoch))  # an epoch: 2 micro-batches = step 0
    retain_far = batch([IGNORE, IGNORE, 1])  # position 1 logits [ln 3, 0], label 1 -> NLL ln 4
    for retain in (RETAIN, retain_far):  # two micro-batches of step 0
        m.loss(model, {"forget": FORGET, "retain": retain})
    m.after_step(None, 0, None)
    assert m.lam == 1.0  # warm-up: no dual step at step 0
    for retain in (RETAIN, retain_far):
        m.loss(model, {"forget": FORGET, "retain": retain})
    m.after_step(None, 1, None)
    assert m.lam == pytest.approx(1.0 + (LN(2) + LN(4)) / 2 - 1.0, abs=1e-6)


def test_relative_epsilon_is_measured_on_the_target_in_setup():
    retain = [{"input_ids": [1, 0, 0], "labels": [IGNORE, 0, IGNORE]},  # NLL ln 2
              {"input_ids": [1, 1, 1], "labels": [IGNORE, IGNORE, 1]}]  # NLL ln 4
    m = build_method({"name": "pdu", "epsilon": 0.1, "relative": True, "warmup_epochs": 0})
    ctx = TrainContext(total_steps=1, retain=Loader(retain, batch_size=1, pad_id=0, seed=0))
    m.setup(FixedLogits(LOGITS), ctx)
    assert m.eps == pytest.approx(1.1 * (LN(2) + LN(4)) / 2, abs=1e-6)
    assert m.summary()["pdu_epsilon"] == pytest.approx(m.eps)
    with pytest.raises(ValueError, match="pdu.relative"):
        build_method({"name": "pdu", "warmup_epochs": 0}).setup(FixedLogits(LOGITS), TrainContext(total_steps=1))
    with pytest.raises(ValueError, match="pdu.warmup_epochs"):
        build_method({"name": "pdu"}).setup(FixedLogits(LOGITS), TrainContext(total_steps=1))


@pytest.mark.parametrize("field, value", [("epsilon", -0.1), ("lambda_init", -1.0), ("dual_lr", -1.0),
                                          ("warmup_epochs", -1), ("gamma", -0.5), ("reduction", "mean"), ("align", "prev")])
def test_pdu_range_checks(field, value):
    with pytest.raises(ValueError, match=f"pdu.{field}"):
        build_method({"name": "pdu", field: value})


def test_no_nan_in_summary_after_a_fixed_epsilon_run():
    assert not math.isnan(pdu(epsilon=0.3).summary()["pdu_epsilon"])
