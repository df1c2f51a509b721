"""multi_sample_dropout: mean CE over M dropout masks of the final hidden state, one trunk pass."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from forgetlab.losses import lm_loss, token_nll
from forgetlab.model import load_model
from forgetlab.qa import IGNORE
from forgetlab.regularizers import build_regularizers

LN = math.log


def _batch(seed=0, shape=(3, 14), prompt=6):
    ids = torch.randint(4, 200, shape, generator=torch.Generator().manual_seed(seed))
    labels = ids.clone()
    labels[:, :prompt] = IGNORE
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}


def _forward(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)


def test_last_hidden_state_is_after_the_final_norm(tiny_model_dir):
    """The regularizer feeds hidden_states[-1] straight to lm_head: it must already be normed."""
    model = load_model(tiny_model_dir).train()
    out = _forward(model, _batch())
    assert torch.allclose(model.lm_head(out.hidden_states[-1]), out.logits, atol=1e-6)


class Head(torch.nn.Module):
    """A 'model' whose final hidden state is fixed and whose lm_head is the identity on R^2."""

    def __init__(self, hidden):
        super().__init__()
        self.lm_head = torch.nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.lm_head.weight.copy_(torch.eye(2))
        self.hidden = torch.tensor(hidden)


def test_hand_worked_masks():
    # one supervised position (t=0 predicts label 0), hidden h = [ln3, 0], p = 1/2 (survivors x2).
    # mask keeps unit 0 -> logits [2 ln3, 0] -> CE = ln(1 + 1/9) = ln(10/9)   (unit 1 is 0 anyway)
    # mask drops unit 0 -> logits [0, 0]     -> CE = ln2
    model = Head([[[LN(3), 0.0], [0.0, 0.0]]]).train()
    labels = torch.tensor([[IGNORE, 0]])
    batch = {"input_ids": labels.clamp(min=0), "labels": labels, "attention_mask": torch.ones_like(labels)}
    m = 8
    (reg,) = build_regularizers([{"name": "multi_sample_dropout", "m": m, "p": 0.5}])
    outputs = SimpleNamespace(hidden_states=(model.hidden,), logits=model.lm_head(model.hidden))
    torch.manual_seed(5)
    loss = reg.compute_loss(batch, outputs, model)
    torch.manual_seed(5)
    kept0 = sum(F.dropout(torch.ones(1, 2), 0.5, training=True)[0, 0].item() != 0 for _ in range(m))
    assert 0 < kept0 < m  # this seed gives both cases
    assert loss.item() == pytest.approx((kept0 * LN(10 / 9) + (m - kept0) * LN(2)) / m, abs=1e-6)


def test_loss_is_the_mean_of_m_redrawn_dropout_losses(tiny_model_dir):
    model = load_model(tiny_model_dir).train()
    batch = _batch()
    m, p = 4, 0.3
    (reg,) = build_regularizers([{"name": "multi_sample_dropout", "m": m, "p": p}])
    outputs = _forward(model, batch)
    torch.manual_seed(123)
    loss = reg.compute_loss(batch, outputs, model)
    # re-draw the same masks: same seed, M F.dropout calls in order on the supervised hidden states
    mask = batch["labels"][:, 1:] != IGNORE
    h, y = outputs.hidden_states[-1][:, :-1][mask], batch["labels"][:, 1:][mask]
    torch.manual_seed(123)
    ces = [F.cross_entropy(model.lm_head(F.dropout(h, p, training=True)), y) for _ in range(m)]
    assert loss.item() == pytest.approx(torch.stack(ces).mean().item(), abs=1e-5)
    assert len({round(c.item(), 6) for c in ces}) == m  # M different masks
    assert loss.item() != pytest.approx(token_nll(outputs.logits, batch["labels"]).item(), abs=1e-4)


def test_p_zero_and_eval_mode_give_plain_cross_entropy(tiny_model_dir):
    model = load_model(tiny_model_dir)
    batch = _batch()
    for p, train in ((0.0, True), (0.5, False)):
        model.train(train)
        regs = build_regularizers([{"name": "multi_sample_dropout", "m": 3, "p": p}])
        loss, _ = lm_loss(model, batch, regs)
        with torch.no_grad():
            plain = token_nll(model(input_ids=batch["input_ids"]).logits, batch["labels"])
        assert loss.item() == pytest.approx(plain.item(), abs=1e-6)


@pytest.mark.parametrize("spec, param", [({"m": 0}, "m"), ({"m": 2.5}, "m"), ({"p": 1.0}, "p"), ({"p": -0.1}, "p")])
def test_out_of_range_is_rejected(spec, param):
    with pytest.raises(ValueError, match=f"multi_sample_dropout.{param}"):
        build_regularizers([{"name": "multi_sample_dropout", **spec}])


def test_runs_in_lm_loss_on_the_tiny_model_with_one_trunk_pass(tiny_model_dir):
    model = load_model(tiny_model_dir).train()
    calls = []
    handle = model.model.register_forward_hook(lambda *a: calls.append(1))
    loss, parts = lm_loss(model, _batch(), build_regularizers([{"name": "multi_sample_dropout"}]))
    handle.remove()
    assert torch.isfinite(loss) and "ce" in parts and len(calls) == 1
    loss.backward()
