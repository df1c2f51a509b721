"""send: top-q neurons by variance over the last `window` probe snapshots are zeroed at the input
of down_proj while training; the probe averages over real tokens; finalize leaves no mask."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from forgetlab.losses import lm_loss
from forgetlab.model import load_model, load_tokenizer
from forgetlab.qa import collate, encode_qa
from forgetlab.recipes import read_jsonl
from forgetlab.regularizers import build_regularizers
from forgetlab.train import Loader, TrainConfig, TrainContext, train

IDS = torch.randint(4, 200, (2, 12), generator=torch.Generator().manual_seed(0))


def _probe(tokenizer, smoke_data, n=4):
    rows = read_jsonl(smoke_data / "qa" / "full.jsonl")[:n]
    return collate([encode_qa(tokenizer, r["question"], r["answer"]) for r in rows], tokenizer.pad_token_id)


def _down_inputs(model, layer=0):
    """Capture what down_proj of `layer` receives (registered last, so it sees the masked input)."""
    seen = []
    h = model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    out = model(input_ids=IDS).logits.detach()
    h.remove()
    return seen[-1], out


def test_top_q_by_variance_are_dropped_exactly_and_undone(tiny_model_dir, smoke_data):
    model = load_model(tiny_model_dir).train()
    clean_in, clean_logits = _down_inputs(model)
    d_ff = model.config.intermediate_size  # 64
    (reg,) = build_regularizers([{"name": "send", "window": 3, "q": 0.125}])  # drop round(0.125*64) = 8
    reg.setup(model, TrainContext(total_steps=10, probe=_probe(load_tokenizer(tiny_model_dir), smoke_data)))
    # hand-made snapshots: neuron i takes values (0, i*c, 0) for a layer-specific c, so
    # Var = 2 (i c)^2 / 9 grows with i, except for the chosen neurons below, made the most variable
    layer0_top = [3, 17, 40, 41, 50, 60, 62, 7]
    layer1_top = [0, 1, 2, 5, 9, 33, 34, 63]
    for layer, top in ((0, layer0_top), (1, layer1_top)):
        base = torch.arange(d_ff, dtype=torch.float32) * 0.01 * (layer + 1)
        base[top] = 100.0 + torch.arange(len(top), dtype=torch.float32)
        for snap in (torch.zeros(d_ff), base, torch.zeros(d_ff)):
            reg._history[layer].append(snap)
    var0 = torch.stack(list(reg._history[0])).var(0, unbiased=False)
    assert set(torch.topk(var0, 8).indices.tolist()) == set(layer0_top)
    reg.update_masks()
    assert set((reg._keep[0] == 0).nonzero().flatten().tolist()) == set(layer0_top)
    assert set((reg._keep[1] == 0).nonzero().flatten().tolist()) == set(layer1_top)
    assert reg.summary()["dropped_fraction"] == 8 / 64

    # training mode: exactly those inputs of down_proj are zero, the others untouched
    masked_in, _ = _down_inputs(model)
    assert torch.all(masked_in[..., layer0_top] == 0)
    others = [i for i in range(d_ff) if i not in layer0_top]
    assert torch.equal(masked_in[..., others], clean_in[..., others])
    assert torch.all(clean_in[..., layer0_top] != 0)
    # eval mode: no mask
    model.eval()
    assert torch.equal(_down_inputs(model)[0], clean_in)
    model.train()
    # after finalize the hooks are gone: the model is the unhooked one
    reg.finalize(model)
    after_in, after_logits = _down_inputs(model)
    assert torch.equal(after_in, clean_in) and torch.equal(after_logits, clean_logits)
    assert all(not m._forward_pre_hooks for layer in model.model.layers for m in layer.modules())


def test_no_neuron_is_dropped_before_window_snapshots(tiny_model_dir):
    model = load_model(tiny_model_dir)
    (reg,) = build_regularizers([{"name": "send", "window": 3, "q": 0.5}])
    probe = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS)}
    reg.setup(model, TrainContext(total_steps=10, probe=probe))
    for _ in range(2):
        reg.probe(model)
        reg.update_masks()
        assert all(k is None for k in reg._keep)
    reg.probe(model)
    reg.update_masks()
    assert all(int((k == 0).sum()) == 32 for k in reg._keep)
    reg.probe(model)  # a 4th snapshot pushes out the 1st: only the last `window` are kept
    assert all(len(h) == 3 for h in reg._history)


def test_probe_records_the_mean_activation_over_non_pad_tokens(tiny_model_dir, smoke_data):
    model = load_model(tiny_model_dir).train()
    probe = _probe(load_tokenizer(tiny_model_dir), smoke_data)
    mask = probe["attention_mask"]
    assert (mask == 0).any()  # the probe has padding
    (reg,) = build_regularizers([{"name": "send"}])
    reg.setup(model, TrainContext(total_steps=10, probe=probe))
    seen = []
    h = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    reg.probe(model)
    h.remove()
    assert model.training  # the mode is restored
    x = seen[-1]
    expected = x[mask.bool()].mean(0)  # mean over the real tokens only
    assert torch.allclose(reg._history[1][-1], expected, atol=1e-6)
    assert not torch.allclose(expected, x.mean((0, 1)))


def test_refresh_schedule_in_the_loop(tiny_model_dir, smoke_data):
    torch.manual_seed(0)
    tokenizer = load_tokenizer(tiny_model_dir)
    rows = read_jsonl(smoke_data / "qa" / "full.jsonl")[:16]
    examples = [encode_qa(tokenizer, r["question"], r["answer"]) for r in rows]
    model = load_model(tiny_model_dir)
    (reg,) = build_regularizers([{"name": "send", "every": 2, "window": 2, "q": 0.25}])
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-3, warmup_ratio=0.0)
    loader = Loader(examples, 8, tokenizer.pad_token_id, seed=0)
    train(model, partial(lm_loss, regularizers=[reg]), iter(loader), 7, cfg, regularizers=[reg],
          probe=collate(examples[:8], tokenizer.pad_token_id))
    # refreshes after steps 1, 3, 5; masks from the 2nd refresh on
    assert reg.summary() == {"refreshes": 3.0, "dropped_fraction": 0.25}
    assert all(not layer.mlp.down_proj._forward_pre_hooks for layer in model.model.layers)


def test_setup_without_a_probe_is_rejected(tiny_model_dir):
    (reg,) = build_regularizers([{"name": "send"}])
    with pytest.raises(ValueError, match="probe"):
        reg.setup(load_model(tiny_model_dir), TrainContext(total_steps=10))


@pytest.mark.parametrize("param,value", [("every", 0), ("window", 1), ("q", 1.0), ("q", -0.1)])
def test_out_of_range_is_rejected(param, value):
    with pytest.raises(ValueError, match=f"send.{param}"):
        build_regularizers([{"name": "send", param: value}])
