"""label_smoothing: (1-eps)*NLL + eps*mean_k(-log p_k) on the answer tokens, by hand."""

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

# 4 positions over a vocabulary of 3; labels [-100, -100, 1, 0]: logits at t predict labels[t+1].
# t=0 predicts a prompt token (ignored): huge logits that would dominate if counted.
# t=1 predicts 1 with logits [0, 0, 0]     -> p = [1/3, 1/3, 1/3]; -log p = [ln3, ln3, ln3]
# t=2 predicts 0 with logits [ln2, 0, 0]   -> Z = 4, p = [1/2, 1/4, 1/4]; -log p = [ln2, ln4, ln4]
# t=3 is the last position (predicts nothing).
LOGITS = torch.tensor([[[20.0, -20.0, 0.0], [0.0, 0.0, 0.0], [LN(2), 0.0, 0.0], [9.0, 0.0, 0.0]]])
LABELS = torch.tensor([[IGNORE, IGNORE, 1, 0]])
BATCH = {"input_ids": LABELS.clamp(min=0), "labels": LABELS, "attention_mask": torch.ones_like(LABELS)}


def test_smoothed_loss_matches_hand_computation():
    eps = 0.3
    (reg,) = build_regularizers([{"name": "label_smoothing", "epsilon": eps}])
    assert reg.replaces_loss
    loss = reg.compute_loss(BATCH, SimpleNamespace(logits=LOGITS), None)
    # t=1: (1-eps) ln3 + eps * ln3 = ln3
    # t=2: 0.7 ln2 + 0.3 * (ln2 + 2 ln4)/3 = 0.7 ln2 + 0.3 * (5/3) ln2 = 1.2 ln2
    expected = (LN(3) + 1.2 * LN(2)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_epsilon_zero_is_plain_cross_entropy():
    (reg,) = build_regularizers([{"name": "label_smoothing", "epsilon": 0.0}])
    loss = reg.compute_loss(BATCH, SimpleNamespace(logits=LOGITS), None)
    assert loss.item() == pytest.approx((LN(3) + LN(2)) / 2, abs=1e-6)


@pytest.mark.parametrize("eps", [-0.1, 1.0])
def test_epsilon_out_of_range_is_rejected(eps):
    with pytest.raises(ValueError, match="label_smoothing.epsilon"):
        build_regularizers([{"name": "label_smoothing", "epsilon": eps}])


def test_runs_in_lm_loss_on_the_tiny_model(tiny_model_dir):
    model = load_model(tiny_model_dir).train()
    ids = torch.randint(4, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :6] = IGNORE
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    loss, parts = lm_loss(model, batch, build_regularizers([{"name": "label_smoothing"}]))
    assert torch.isfinite(loss) and "ce" in parts
    loss.backward()
