"""z_loss: coef * mean over supervised positions of logsumexp(logits)^2, by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from forgetlab.losses import lm_loss, token_nll
from forgetlab.model import load_model
from forgetlab.qa import IGNORE
from forgetlab.regularizers import build_regularizers

LN = math.log

# labels [-100, -100, 1, 0]: supervised positions are t=1 and t=2 (labels[t+1] != -100).
# t=0: [10, 10] -> log Z = 10 + ln2, but it predicts a prompt token: excluded
# t=1: [0, 0]   -> log Z = ln2
# t=2: [ln3, 0] -> Z = 3 + 1 = 4, log Z = 2 ln2
# t=3: [5, 5]   -> last position, predicts nothing: excluded
LOGITS = torch.tensor([[[10.0, 10.0], [0.0, 0.0], [LN(3), 0.0], [5.0, 5.0]]])
LABELS = torch.tensor([[IGNORE, IGNORE, 1, 0]])
BATCH = {"input_ids": LABELS.clamp(min=0), "labels": LABELS, "attention_mask": torch.ones_like(LABELS)}


def test_z_loss_matches_hand_computation():
    (reg,) = build_regularizers([{"name": "z_loss", "coef": 0.5}])
    assert not reg.replaces_loss
    extra = reg.extra_loss(BATCH, SimpleNamespace(logits=LOGITS), None)
    # 0.5 * ((ln2)^2 + (2 ln2)^2) / 2 = 1.25 (ln2)^2
    assert extra.item() == pytest.approx(1.25 * LN(2) ** 2, abs=1e-6)


def test_z_loss_gradient_is_2_coef_logZ_softmax():
    """d/dlogits [coef * mean (log Z)^2] = coef * 2 log Z * softmax / n at supervised positions."""
    logits = LOGITS.clone().requires_grad_(True)
    (reg,) = build_regularizers([{"name": "z_loss", "coef": 0.5}])
    reg.extra_loss(BATCH, SimpleNamespace(logits=logits), None).backward()
    # t=1: 0.5 * 2 ln2 * [1/2, 1/2] / 2 = ln2 * [1/4, 1/4]; t=2: 0.5 * 2 * 2ln2 * [3/4, 1/4] / 2
    expected = torch.tensor([[[0, 0], [LN(2) / 4, LN(2) / 4], [LN(2) * 3 / 4, LN(2) / 4], [0, 0]]])
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_negative_coef_is_rejected():
    with pytest.raises(ValueError, match="z_loss.coef"):
        build_regularizers([{"name": "z_loss", "coef": -1e-4}])


def test_adds_to_cross_entropy_in_lm_loss_on_the_tiny_model(tiny_model_dir):
    model = load_model(tiny_model_dir).train()
    ids = torch.randint(4, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :6] = IGNORE
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    loss, parts = lm_loss(model, batch, build_regularizers([{"name": "z_loss", "coef": 1e-2}]))
    assert torch.isfinite(loss) and parts["z_loss"] > 0
    with torch.no_grad():
        ce = token_nll(model(input_ids=ids).logits, labels).item()
    assert loss.item() == pytest.approx(ce + parts["z_loss"], rel=1e-5)
