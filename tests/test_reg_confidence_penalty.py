"""confidence_penalty: the entropy bonus and the capped cross-entropy, on fixed logits by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from forgetlab.losses import lm_loss
from forgetlab.model import load_model
from forgetlab.qa import IGNORE
from forgetlab.regularizers import build_regularizers

LN = math.log

# labels [-100, -100, 1, 0]: supervised positions t=1 and t=2.
# t=0: [8, 0] (prompt, excluded)
# t=1: [0, 0]   predicts 1: p = [1/2, 1/2], p(y) = 1/2, H = ln2
# t=2: [ln3, 0] predicts 0: p = [3/4, 1/4], p(y) = 3/4, H = 3/4 ln(4/3) + 1/4 ln4
# t=3: [0, 7] (last, excluded)
LOGITS = [[[8.0, 0.0], [0.0, 0.0], [LN(3), 0.0], [0.0, 7.0]]]
LABELS = torch.tensor([[IGNORE, IGNORE, 1, 0]])
BATCH = {"input_ids": LABELS.clamp(min=0), "labels": LABELS, "attention_mask": torch.ones_like(LABELS)}


def _logits():
    return torch.tensor(LOGITS, requires_grad=True)


def test_entropy_mode_matches_hand_computation():
    (reg,) = build_regularizers([{"name": "confidence_penalty", "mode": "entropy", "beta": 0.2}])
    assert not reg.replaces_loss and reg.compute_loss(BATCH, SimpleNamespace(logits=_logits()), None) is None
    extra = reg.extra_loss(BATCH, SimpleNamespace(logits=_logits()), None)
    h2 = 0.75 * LN(4 / 3) + 0.25 * LN(4)
    assert extra.item() == pytest.approx(-0.2 * (LN(2) + h2) / 2, abs=1e-6)


def test_capped_mode_drops_the_confident_token():
    # tau = 0.7: t=2 has p(y) = 3/4 > 0.7 -> no loss, no gradient; t=1 (p = 1/2) alone remains
    (reg,) = build_regularizers([{"name": "confidence_penalty", "mode": "capped", "tau": 0.7}])
    assert reg.replaces_loss and reg.extra_loss(BATCH, SimpleNamespace(logits=_logits()), None) is None
    logits = _logits()
    loss = reg.compute_loss(BATCH, SimpleNamespace(logits=logits), None)
    assert loss.item() == pytest.approx(LN(2), abs=1e-6)  # -log(1/2), mean over 1 token
    loss.backward()
    # d(-log p_1)/dlogits at t=1 = p - onehot(1) = [1/2, -1/2]; exactly 0 elsewhere
    assert torch.equal(logits.grad[0, 2], torch.zeros(2))
    assert torch.allclose(logits.grad, torch.tensor([[[0, 0], [0.5, -0.5], [0, 0], [0, 0]]]), atol=1e-6)


def test_capped_mode_keeps_all_below_tau_and_is_zero_when_none_remain():
    (keep_all,) = build_regularizers([{"name": "confidence_penalty", "mode": "capped", "tau": 0.8}])
    loss = keep_all.compute_loss(BATCH, SimpleNamespace(logits=_logits()), None)
    assert loss.item() == pytest.approx((LN(2) + LN(4 / 3)) / 2, abs=1e-6)  # plain CE
    (none_left,) = build_regularizers([{"name": "confidence_penalty", "mode": "capped", "tau": 0.4}])
    logits = _logits()
    loss = none_left.compute_loss(BATCH, SimpleNamespace(logits=logits), None)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_only_capped_counts_as_replacing_the_loss():
    build_regularizers([{"name": "confidence_penalty", "mode": "entropy"}, {"name": "label_smoothing"}])
    with pytest.raises(ValueError, match="both replace the loss"):
        build_regularizers([{"name": "confidence_penalty", "mode": "capped"}, {"name": "label_smoothing"}])


@pytest.mark.parametrize(
    "spec, param",
    [({"mode": "hinge"}, "mode"), ({"beta": -0.1}, "beta"), ({"tau": 0.0}, "tau"), ({"tau": 1.5}, "tau")],
)
def test_out_of_range_is_rejected(spec, param):
    with pytest.raises(ValueError, match=f"confidence_penalty.{param}"):
        build_regularizers([{"name": "confidence_penalty", **spec}])


@pytest.mark.parametrize("mode", ["entropy", "capped"])
def test_runs_in_lm_loss_on_the_tiny_model(tiny_model_dir, mode):
    model = load_model(tiny_model_dir).train()
    ids = torch.randint(4, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :6] = IGNORE
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    loss, parts = lm_loss(model, batch, build_regularizers([{"name": "confidence_penalty", "mode": mode}]))
    assert torch.isfinite(loss)
    assert ("confidence_penalty" in parts) == (mode == "entropy") and ("ce" in parts) == (mode == "capped")
    loss.backward()
