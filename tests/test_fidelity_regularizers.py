"""Fidelity of send, swa (and its dense SWAD mode) and allora to their papers' formulas.

Each test feeds tiny fixed inputs to the component and recomputes the reference in a few lines of
numpy written from the paper's equation (quoted in the component's docstring): never from values
the component produced. Where a model's forward or an optimizer is needed, the reference uses
transformers' own `output_hidden_states` or hand-written AdamW, not the component's code paths.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from forgetlab.regularizers import build_regularizers
from forgetlab.train import TrainConfig, TrainContext, train

# ---------------------------------------------------------------------------------------------
# send: SEIs = top floor(q*d) indices of mean_n Var_c(E_c[n, i]) at the penultimate layer's SLT


def _tiny_llama(layers=3):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                                        num_attention_heads=2, max_position_embeddings=32))


def _padded_probe():
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0], [14, 0, 0, 0, 0, 0], [15, 16, 0, 0, 0, 0]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


@pytest.mark.parametrize("score", ["variance", "change_x_variance"])
def test_send_selects_the_top_indices_of_the_papers_sensitivity(score):
    rng = np.random.default_rng(0)
    E = rng.normal(size=(3, 4, 10)) * rng.uniform(0.1, 3.0, size=10)  # checkpoints x inputs x dims
    var = ((E - E.mean(0)) ** 2).mean(0)  # population variance over checkpoints, per input and dim
    s = var if score == "variance" else var * np.abs(np.diff(E, axis=0)).sum(0)
    s = s.mean(0)
    expected = set(np.argsort(-s)[: math.floor(0.35 * 10)].tolist())  # floor(3.5) = 3 indices

    from forgetlab.regularizers.send import sensitivity

    assert np.allclose(sensitivity(torch.tensor(E), score).numpy(), s, rtol=1e-12, atol=0)
    (reg,) = build_regularizers([{"name": "send", "window": 3, "q": 0.35, "score": score}])
    model = _tiny_llama()
    reg.setup(model, TrainContext(total_steps=1, probe=_padded_probe()))
    for c in range(3):
        reg._history.append(torch.tensor(E[c], dtype=torch.float32))
    reg.update_mask()
    assert set(reg.dropped()) == expected
    reg.finalize(model)


@pytest.mark.parametrize("token", ["second_last", "mean"])
def test_send_tracks_the_penultimate_layer_at_the_second_to_last_token(token):
    model = _tiny_llama()
    probe = _padded_probe()
    (reg,) = build_regularizers([{"name": "send", "token": token}])
    reg.setup(model, TrainContext(total_steps=1, probe=probe))
    got = reg.embed(model).numpy()
    reg.finalize(model)
    with torch.no_grad():  # transformers' own hidden states: index -2 is the penultimate layer's output
        hs = model(**probe, output_hidden_states=True).hidden_states[-2].numpy()
    mask = probe["attention_mask"].numpy()
    rows = []
    for n in range(mask.shape[0]):
        real = np.flatnonzero(mask[n])
        rows.append(hs[n, real[-2] if len(real) > 1 else real[0]] if token == "second_last" else hs[n, real].mean(0))
    assert np.allclose(got, np.stack(rows), atol=1e-6)


def test_send_drop_is_zeroing_those_dimensions_of_the_penultimate_output():
    model = _tiny_llama().train()
    ids = _padded_probe()["input_ids"]
    (reg,) = build_regularizers([{"name": "send", "q": 0.25}])
    reg.setup(model, TrainContext(total_steps=1, probe=_padded_probe()))
    drop = [0, 3, 7, 12]
    keep = np.ones(16, dtype=np.float32)
    keep[drop] = 0.0
    reg._keep = torch.ones(16)
    reg._keep[drop] = 0.0
    with torch.no_grad():
        got = model(input_ids=ids).logits
    reg.finalize(model)
    # reference: the unhooked model, with those dims of layers[-2]'s output set to zero by hand
    h = model.model.layers[-2].register_forward_hook(lambda m, a, out: out * torch.from_numpy(keep))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    h.remove()
    assert torch.allclose(got, expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# swa: w_swa = mean of the snapshots; alpha(t) = alpha2 (constant) or (1 - tau) alpha1 + tau alpha2

X = np.array([[1.0, 0.5, -1.0], [0.2, -0.3, 0.8], [-1.2, 0.4, 0.1], [0.7, 0.9, -0.4],
              [0.0, -1.1, 0.6], [1.5, 0.2, 0.3], [-0.6, -0.7, -0.2], [0.3, 1.3, 0.9]])
Y = np.array([[0.5], [-0.2], [1.0], [0.3], [-0.8], [0.9], [0.1], [-0.4]])
W0, B0 = np.array([[0.1, -0.2, 0.3]]), np.array([0.05])


def _adamw(p, g, state, t, lr, wd, betas=(0.9, 0.95), eps=1e-8):
    """One AdamW step (Loshchilov & Hutter, decoupled decay), in numpy; lr may be an array."""
    m, v = state
    m[:] = betas[0] * m + (1 - betas[0]) * g
    v[:] = betas[1] * v + (1 - betas[1]) * g * g
    m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
    return p * (1 - lr * wd) - lr * m_hat / (np.sqrt(v_hat) + eps)


def _swa_reference(total, lrs, snapshots, wd):
    w, b = W0.copy(), B0.copy()
    sw, sb = (np.zeros_like(w), np.zeros_like(w)), (np.zeros_like(b), np.zeros_like(b))
    kept = []
    for t in range(total):
        r = X @ w.T + b - Y  # loss = mean(r^2)
        gw, gb = (2 * r / len(X)).T @ X, (2 * r / len(X)).sum(0)
        w, b = _adamw(w, gw, sw, t + 1, lrs[t], wd), _adamw(b, gb, sb, t + 1, lrs[t], wd)
        if t in snapshots:
            kept.append((w.copy(), b.copy()))
    return np.mean([k[0] for k in kept], 0), np.mean([k[1] for k in kept], 0)


def _swa_train(total, lr, wd, **params):
    model = torch.nn.Linear(3, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(W0))
        model.bias.copy_(torch.from_numpy(B0))
    x, y = torch.from_numpy(X), torch.from_numpy(Y)
    regs = build_regularizers([{"name": "swa", **params}])
    cfg = TrainConfig(epochs=1, batch_size=8, lr=lr, warmup_ratio=0.0, schedule="constant",
                      max_grad_norm=1e9, weight_decay=wd)
    train(model, lambda m, batch: (((m(x) - y) ** 2).mean(), {}), iter([{}] * total), total, cfg,
          hooks=regs, desc="fidelity")
    return model.weight.detach().numpy(), model.bias.detach().numpy(), regs[0]


def test_swa_constant_lr_average_matches_numpy_adamw():
    T, lr, swa_lr, wd = 10, 0.05, 0.01, 0.01
    t0 = math.floor(0.5 * T)
    lrs = [lr] * t0 + [swa_lr] * (T - t0)  # the loop's lr, then the SWA lr from the averaging start
    snaps = {t for t in range(t0, T) if (T - 1 - t) % 2 == 0}  # every 2, back from the last: 9, 7, 5
    ew, eb = _swa_reference(T, lrs, snaps, wd)
    w, b, reg = _swa_train(T, lr, wd, start=0.5, every=2, swa_lr=swa_lr)
    assert np.allclose(w, ew, rtol=1e-6, atol=1e-8) and np.allclose(b, eb, rtol=1e-6, atol=1e-8)
    assert reg.summary() == {"snapshots": 3.0, "swa_lr": swa_lr}


def test_swa_cyclic_lr_average_matches_numpy_adamw():
    T, lr, a1, a2, c, wd = 12, 0.05, 0.04, 0.01, 3, 0.0
    t0 = math.floor(0.5 * T)
    ends = [T - 1 - k * c for k in range(T)]  # cycle ends, where the paper snapshots (t(i) = 1)
    lrs = []
    for s in range(T):
        if s < t0:
            lrs.append(lr)
            continue
        i = c - (min(e for e in ends if e >= s) - s)  # the paper's i within its cycle, 1..c
        tau = i / c
        lrs.append((1 - tau) * a1 + tau * a2)
    snaps = {e for e in ends if e >= t0}
    ew, eb = _swa_reference(T, lrs, snaps, wd)
    w, b, _ = _swa_train(T, lr, wd, start=0.5, every=c, lr_schedule="cyclic", swa_lr=a2, swa_lr_max=a1)
    assert np.allclose(w, ew, rtol=1e-6, atol=1e-8) and np.allclose(b, eb, rtol=1e-6, atol=1e-8)


def test_swad_dense_average_over_a_fixed_window_matches_numpy_adamw():
    T, lr, wd = 10, 0.05, 0.0
    t0, t1 = math.floor(0.3 * T), math.ceil(0.8 * T) - 1  # window [3, 7], every step averaged
    lrs = [lr] * t0 + [lr] * (T - t0)  # swa_lr = None: the loop's lr at t0, held (constant schedule)
    ew, eb = _swa_reference(T, lrs, set(range(t0, t1 + 1)), wd)
    w, b, reg = _swa_train(T, lr, wd, start=0.3, end=0.8, dense=True)
    assert np.allclose(w, ew, rtol=1e-6, atol=1e-8) and np.allclose(b, eb, rtol=1e-6, atol=1e-8)
    assert reg.summary()["snapshots"] == 5.0


# ---------------------------------------------------------------------------------------------
# allora: lr_i = lr * 1 / sqrt(||theta_i||^2 + 1/eta^2), per row of each LoRA weight


def _factor_np(p, eta, granularity):
    if granularity == "row":
        sq = (p**2).sum(1, keepdims=True)
    elif granularity == "column":
        sq = (p**2).sum(0, keepdims=True)
    else:
        sq = np.full((1, 1), (p**2).sum())
    return 1.0 / np.sqrt(sq + 1.0 / eta**2)


@pytest.mark.parametrize("granularity", ["row", "column", "tensor"])
def test_allora_steps_match_numpy_adamw_with_per_row_lr(tiny_model_dir, granularity):
    from forgetlab.model import load_model

    lr, wd, eta, steps = 1e-2, 0.1, 4.0, 3
    (reg,) = build_regularizers([{"name": "allora", "rank": 2, "eta": eta, "granularity": granularity}])
    model = reg.setup(load_model(tiny_model_dir, torch.device("cpu")), None)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = reg.param_groups(model, [{"params": params, "weight_decay": wd}])
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)
    ids = torch.randint(4, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    ref = [p.detach().double().numpy().copy() for p in params]
    state = [(np.zeros_like(r), np.zeros_like(r)) for r in ref]
    for step in range(steps):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        grads = [p.grad.detach().double().numpy() for p in params]
        ref = [_adamw(r, g, s, step + 1, lr * _factor_np(r, eta, granularity), wd)
               for r, g, s in zip(ref, grads, state)]
        reg.before_step(model, step, optimizer)
        optimizer.step()
        for p, r in zip(params, ref):
            assert np.allclose(p.detach().double().numpy(), r, rtol=1e-4, atol=1e-7)
    assert reg.summary()["lr_factor_max"] <= eta
    reg.finalize(model)
