"""nested_dropout: per-sequence geometric cut b, keep channels [0, b) of the final hidden state."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from forgetlab.losses import lm_loss, token_nll
from forgetlab.model import load_model
from forgetlab.qa import IGNORE
from forgetlab.regularizers import build_regularizers


def _batch(seed=0, shape=(8, 14), prompt=6):
    ids = torch.randint(4, 200, shape, generator=torch.Generator().manual_seed(seed))
    labels = ids.clone()
    labels[:, :prompt] = IGNORE
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}


def test_kept_channels_are_a_prefix_of_length_b_and_loss_matches(tiny_model_dir):
    model = load_model(tiny_model_dir).train()
    batch = _batch()
    rate, min_keep = 0.1, 3
    (reg,) = build_regularizers([{"name": "nested_dropout", "rate": rate, "min_keep": min_keep}])
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    seen = []
    handle = model.lm_head.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    torch.manual_seed(7)
    loss = reg.compute_loss(batch, outputs, model)
    handle.remove()
    # the same draw by hand: b ~ Geometric(rate) on {1, 2, ...}, clipped to [min_keep, d]
    d = outputs.hidden_states[-1].size(-1)
    torch.manual_seed(7)
    b = torch.empty(batch["input_ids"].size(0)).geometric_(rate).clamp(min_keep, d).long()
    assert (b < d).any() and (b > min_keep).any()  # this seed gives real cuts
    mask = batch["labels"][:, 1:] != IGNORE
    rows = mask.nonzero()[:, 0]  # the sequence of each supervised position
    prefix = torch.arange(d)[None, :] < b[rows][:, None]  # (N, d)
    h = outputs.hidden_states[-1][:, :-1][mask]
    (head_in,) = seen
    assert torch.equal(head_in != 0, prefix)  # nonzero channels are exactly [0, b)
    assert torch.equal(head_in[prefix], h[prefix])  # kept unchanged: no rescaling
    expected = F.cross_entropy(model.lm_head(h * prefix), batch["labels"][:, 1:][mask])
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert reg.summary()["mean_cut"] == pytest.approx(b.float().mean().item())


def test_empirical_mean_cut_matches_the_clipped_geometric():
    torch.manual_seed(0)
    n = 200_000
    # unclipped: E[b] = 1/rate = 20 (sd 19.5, standard error 0.04)
    reg = build_regularizers([{"name": "nested_dropout", "rate": 0.05}])[0]
    assert reg.sample_cuts(n, 10**6).float().mean().item() == pytest.approx(20.0, abs=0.3)
    # clipped at d = 16: E[min(b, 16)] = sum_{k=0}^{15} P(b > k) = sum 0.95^k = (1 - 0.95^16) / 0.05
    b = reg.sample_cuts(n, 16)
    assert b.min() >= 1 and b.max() == 16
    assert b.float().mean().item() == pytest.approx((1 - 0.95**16) / 0.05, abs=0.1)
    # min_keep = 4, rate 1/2: E[max(b, 4)] = 4 + sum_{k>=4} P(b > k) = 4 + sum_{k>=4} 2^-k = 4.125
    reg = build_regularizers([{"name": "nested_dropout", "rate": 0.5, "min_keep": 4}])[0]
    b = reg.sample_cuts(n, 64)
    assert b.min() == 4 and b.float().mean().item() == pytest.approx(4.125, abs=0.01)


def test_eval_mode_gives_plain_cross_entropy(tiny_model_dir):
    model = load_model(tiny_model_dir).eval()
    batch = _batch()
    loss, _ = lm_loss(model, batch, build_regularizers([{"name": "nested_dropout", "rate": 0.5}]))
    with torch.no_grad():
        plain = token_nll(model(input_ids=batch["input_ids"]).logits, batch["labels"])
    assert loss.item() == pytest.approx(plain.item(), abs=1e-6)


@pytest.mark.parametrize(
    "spec, param", [({"rate": 0.0}, "rate"), ({"rate": 1.0}, "rate"), ({"min_keep": 0}, "min_keep")]
)
def test_out_of_range_is_rejected(spec, param):
    with pytest.raises(ValueError, match=f"nested_dropout.{param}"):
        build_regularizers([{"name": "nested_dropout", **spec}])


def test_runs_in_lm_loss_on_the_tiny_model(tiny_model_dir):
    model = load_model(tiny_model_dir).train()
    loss, parts = lm_loss(model, _batch(), build_regularizers([{"name": "nested_dropout"}]))
    assert torch.isfinite(loss) and "ce" in parts
    loss.backward()
