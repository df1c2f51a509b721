"""send: the top floor(q*d) penultimate-layer embedding indices by variance over a window of
probe checkpoints are zeroed at that layer's output while training; windows do not overlap; the
probe reads each input's second-to-last real token; finalize leaves no mask.
send_mlp (the former MLP-neuron variant): top-q neurons by variance over the last `window` probe
snapshots are zeroed at the input of down_proj; the probe averages over real tokens."""

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


def test_mlp_top_q_by_variance_are_dropped_exactly_and_undone(tiny_model_dir, smoke_data):
    model = load_model(tiny_model_dir).train()
    clean_in, clean_logits = _down_inputs(model)
    d_ff = model.config.intermediate_size  # 64
    (reg,) = build_regularizers([{"name": "send_mlp", "window": 3, "q": 0.125}])  # drop round(0.125*64) = 8
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


def test_mlp_no_neuron_is_dropped_before_window_snapshots(tiny_model_dir):
    model = load_model(tiny_model_dir)
    (reg,) = build_regularizers([{"name": "send_mlp", "window": 3, "q": 0.5}])
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


def test_mlp_probe_records_the_mean_activation_over_non_pad_tokens(tiny_model_dir, smoke_data):
    model = load_model(tiny_model_dir).train()
    probe = _probe(load_tokenizer(tiny_model_dir), smoke_data)
    mask = probe["attention_mask"]
    assert (mask == 0).any()  # the probe has padding
    (reg,) = build_regularizers([{"name": "send_mlp"}])
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


def test_mlp_refresh_schedule_in_the_loop(tiny_model_dir, smoke_data):
    torch.manual_seed(0)
    tokenizer = load_tokenizer(tiny_model_dir)
    rows = read_jsonl(smoke_data / "qa" / "full.jsonl")[:16]
    examples = [encode_qa(tokenizer, r["question"], r["answer"]) for r in rows]
    model = load_model(tiny_model_dir)
    (reg,) = build_regularizers([{"name": "send_mlp", "every": 2, "window": 2, "q": 0.25}])
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-3, warmup_ratio=0.0)
    loader = Loader(examples, 8, tokenizer.pad_token_id, seed=0)
    train(model, partial(lm_loss, regularizers=[reg]), iter(loader), 7, cfg, hooks=[reg],
          context=TrainContext(total_steps=7, probe=collate(examples[:8], tokenizer.pad_token_id)))
    # refreshes after steps 1, 3, 5; masks from the 2nd refresh on
    assert reg.summary() == {"refreshes": 3.0, "dropped_fraction": 0.25}
    assert all(not layer.mlp.down_proj._forward_pre_hooks for layer in model.model.layers)


def test_mlp_setup_without_a_probe_is_rejected(tiny_model_dir):
    (reg,) = build_regularizers([{"name": "send_mlp"}])
    with pytest.raises(ValueError, match="probe"):
        reg.setup(load_model(tiny_model_dir), TrainContext(total_steps=10))


@pytest.mark.parametrize("param,value", [("every", 0), ("window", 1), ("q", 1.0), ("q", -0.1)])
def test_mlp_out_of_range_is_rejected(param, value):
    with pytest.raises(ValueError, match=f"send_mlp.{param}"):
        build_regularizers([{"name": "send_mlp", param: value}])


# ---------------------------------------------------------------------------------------------
# send: the paper's site, the penultimate layer's output (layers[-2], hidden size d = 32 here)


def _penultimate_out(model):
    """What the last decoder layer receives (the penultimate layer's output, after send's hook)."""
    seen = []
    h = model.model.layers[-1].register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    out = model(input_ids=IDS).logits.detach()
    h.remove()
    return seen[-1], out


def test_sensitive_indices_are_dropped_exactly_in_training_and_undone(tiny_model_dir, smoke_data):
    model = load_model(tiny_model_dir).train()
    clean, clean_logits = _penultimate_out(model)
    d = model.config.hidden_size  # 32
    (reg,) = build_regularizers([{"name": "send", "window": 2, "q": 0.25}])  # floor(0.25 * 32) = 8
    reg.setup(model, TrainContext(total_steps=10, probe=_probe(load_tokenizer(tiny_model_dir), smoke_data)))
    top = [1, 4, 9, 16, 20, 25, 30, 31]
    for c in range(2):  # index i varies by 0.01 i between the checkpoints, the chosen ones by 100 + j
        snap = torch.zeros(3, d)
        if c:
            snap += torch.arange(d) * 0.01
            snap[:, top] = 100.0 + torch.arange(len(top), dtype=torch.float32)
        reg._history.append(snap)
    reg.update_mask()
    assert sorted(reg.dropped()) == top and reg.summary()["dropped_fraction"] == 8 / 32

    masked, _ = _penultimate_out(model)
    assert torch.all(masked[..., top] == 0)
    others = [i for i in range(d) if i not in top]
    assert torch.equal(masked[..., others], clean[..., others])
    assert torch.all(clean[..., top] != 0)
    model.eval()
    assert torch.equal(_penultimate_out(model)[0], clean)  # eval: no mask
    model.train()
    reg.finalize(model)
    after, after_logits = _penultimate_out(model)
    assert torch.equal(after, clean) and torch.equal(after_logits, clean_logits)
    assert all(not layer._forward_hooks for layer in model.model.layers)


def test_windows_do_not_overlap_and_nothing_drops_before_the_first(tiny_model_dir):
    from forgetlab.regularizers.send import sensitivity

    model = load_model(tiny_model_dir)
    (reg,) = build_regularizers([{"name": "send", "every": 1, "window": 3, "q": 0.5}])
    reg.setup(model, TrainContext(total_steps=10, probe={"input_ids": IDS, "attention_mask": torch.ones_like(IDS)}))
    masks, snaps = [], []
    for step in range(7):
        with torch.no_grad():  # move the weights between checkpoints, as training would
            model.model.layers[0].mlp.down_proj.weight.mul_(1.0 + 0.5 * step)
        reg.after_step(model, step, None)
        snaps.append(reg._history[-1].clone())
        masks.append(None if reg._keep is None else reg._keep.clone())
    assert masks[0] is None and masks[1] is None  # window 1 = checkpoints 1-3
    assert int((masks[2] == 0).sum()) == 16 and torch.equal(masks[2], masks[3]) and torch.equal(masks[3], masks[4])
    assert reg.summary() == {"checkpoints": 7.0, "refreshes": 2.0, "dropped_fraction": 0.5}
    for mask, window in ((masks[2], snaps[0:3]), (masks[5], snaps[3:6])):  # each from its own 3 checkpoints
        s = sensitivity(torch.stack(window))
        assert set((mask == 0).nonzero().flatten().tolist()) == set(torch.topk(s, 16).indices.tolist())
    reg.finalize(model)


def test_schedule_in_the_loop(tiny_model_dir, smoke_data):
    torch.manual_seed(0)
    tokenizer = load_tokenizer(tiny_model_dir)
    rows = read_jsonl(smoke_data / "qa" / "full.jsonl")[:16]
    examples = [encode_qa(tokenizer, r["question"], r["answer"]) for r in rows]
    model = load_model(tiny_model_dir)
    (reg,) = build_regularizers([{"name": "send", "every": 2, "window": 2, "q": 0.25}])
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-3, warmup_ratio=0.0)
    loader = Loader(examples, 8, tokenizer.pad_token_id, seed=0)
    train(model, partial(lm_loss, regularizers=[reg]), iter(loader), 7, cfg, hooks=[reg],
          context=TrainContext(total_steps=7, probe=collate(examples[:8], tokenizer.pad_token_id)))
    # checkpoints after steps 1, 3, 5; the first window (checkpoints 1-2) closes after step 3
    assert reg.summary() == {"checkpoints": 3.0, "refreshes": 1.0, "dropped_fraction": 0.25}
    assert all(not layer._forward_hooks for layer in model.model.layers)


def test_setup_needs_a_probe_and_a_penultimate_layer(tiny_model_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

    (reg,) = build_regularizers([{"name": "send"}])
    with pytest.raises(ValueError, match="probe"):
        reg.setup(load_model(tiny_model_dir), TrainContext(total_steps=10))
    one = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, max_position_embeddings=16))
    with pytest.raises(ValueError, match="at least 2 decoder layers"):
        reg.setup(one, TrainContext(total_steps=10, probe={"input_ids": IDS, "attention_mask": torch.ones_like(IDS)}))


@pytest.mark.parametrize("param,value", [("every", 0), ("every", True), ("window", 1), ("q", 1.0), ("q", -0.1),
                                         ("token", "last"), ("score", "l2")])
def test_send_out_of_range_is_rejected(param, value):
    with pytest.raises(ValueError, match=f"send.{param}"):
        build_regularizers([{"name": "send", param: value}])
