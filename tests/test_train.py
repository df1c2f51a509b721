"""The shared training loop: schedule, accumulation, NaN stop, determinism, no partial outputs."""

from __future__ import annotations

import math

import pytest
import torch

from forgetlab.config import stage_params
from forgetlab.hooks import Hooks
from forgetlab.recipes import finetune
from forgetlab.schedule import lr_lambda
from forgetlab.train import Loader, NonFiniteLossError, TrainConfig, train
from tests.helpers import smoke_config


def test_warmup_then_cosine_by_hand():
    f = lr_lambda(total=10, warmup_ratio=0.2, min_lr_ratio=0.1)  # 2 warmup steps, 8 cosine steps
    assert f(0) == pytest.approx(0.5)
    assert f(1) == pytest.approx(1.0)
    assert f(2) == pytest.approx(1.0)  # cosine starts at the peak
    assert f(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # halfway: 0.55
    assert f(10) == pytest.approx(0.1)


def _linear_run(chunks, grad_accum):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    cfg = TrainConfig(epochs=1, batch_size=4, lr=0.1, grad_accum=grad_accum, warmup_ratio=0.0, min_lr_ratio=1.0)

    def loss_fn(m, b):
        return ((m(b["x"]) - b["y"]) ** 2).mean(), {}

    train(model, loss_fn, iter(chunks), steps=1, cfg=cfg)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_gradient_accumulation_equals_the_full_batch():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, generator=g), torch.randn(4, 1, generator=g)
    full = _linear_run([{"x": x, "y": y}], grad_accum=1)
    halves = _linear_run([{"x": x[:2], "y": y[:2]}, {"x": x[2:], "y": y[2:]}], grad_accum=2)
    assert torch.allclose(full, halves, atol=1e-6)


def test_nan_loss_stops_with_a_clear_message():
    model = torch.nn.Linear(2, 1)
    cfg = TrainConfig(epochs=1, batch_size=1, lr=0.1)
    batches = iter([{"x": torch.ones(1, 2)}] * 5)

    def loss_fn(m, b):
        return m(b["x"]).sum() * float("nan"), {}

    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 0"):
        train(model, loss_fn, batches, steps=3, cfg=cfg, desc="unit")


def test_loader_is_seeded_and_covers_every_example_each_epoch():
    examples = [{"input_ids": [i, i], "labels": [i, i]} for i in range(10)]
    a, b = iter(Loader(examples, 4, 0, seed=3)), iter(Loader(examples, 4, 0, seed=3))
    first = [next(a)["input_ids"][:, 0].tolist() for _ in range(3)]
    assert first == [next(b)["input_ids"][:, 0].tolist() for _ in range(3)]
    assert sorted(sum(first, [])) == list(range(10))


def _finetune_params(**train_overrides):
    config = smoke_config()
    params = stage_params(config, "finetune", model="target", role="target", regularizer="dropout", seed=0)
    params["train"] = {**params["train"], "max_steps": 3, **train_overrides}
    return params


def test_finetune_is_deterministic(smoke_data, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        finetune.run(_finetune_params(), tiny_model_dir, smoke_data, tmp_path / name)
    from safetensors.torch import load_file

    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_diverging_job_fails_and_leaves_no_output(smoke_data, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "diverged"
    with pytest.raises(NonFiniteLossError, match="finetune target: the loss is"):
        finetune.run(_finetune_params(lr=1e15, max_steps=20), tiny_model_dir, smoke_data, out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".diverged")]


# --- the loop's optimizer and schedule keys (schedule, warmup_ratio, min_lr_ratio, betas, weight_decay)

def test_linear_and_constant_schedules_by_hand():
    lin = lr_lambda(total=10, warmup_ratio=0.2, min_lr_ratio=0.1, schedule="linear")  # 2 warm-up, 8 decay steps
    assert [lin(s) for s in (0, 1, 2)] == pytest.approx([0.5, 1.0, 1.0])
    assert lin(4) == pytest.approx(0.1 + 0.9 * (1 - 2 / 8))  # 0.775
    assert lin(6) == pytest.approx(0.55)
    assert lin(10) == pytest.approx(0.1) and lin(12) == pytest.approx(0.1)
    to_zero = lr_lambda(total=10, warmup_ratio=0.0, min_lr_ratio=0.0, schedule="linear")
    assert [to_zero(s) for s in (0, 5, 9)] == pytest.approx([1.0, 0.5, 0.1])  # HF linear: (10 - s) / 10
    const = lr_lambda(total=10, warmup_ratio=0.3, min_lr_ratio=0.1, schedule="constant")  # min_lr_ratio unused
    assert [const(s) for s in (0, 1, 2, 3, 9)] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 1.0])


def test_train_config_defaults_are_the_earlier_fixed_settings():
    """pretrain and finetune set none of the new keys: their runs are unchanged."""
    cfg = TrainConfig(epochs=1, batch_size=1, lr=0.1)
    assert (cfg.schedule, cfg.betas, cfg.weight_decay, cfg.warmup_ratio, cfg.min_lr_ratio) == ("cosine", (0.9, 0.95), 0.0, 0.1, 0.1)
    for stage in ("pretrain", "finetune"):
        assert not {"schedule", "betas"} & set(smoke_config()[stage])


def _adamw_numpy(w, grads, lrs, betas, weight_decay, eps=1e-8):
    """Decoupled AdamW (Loshchilov & Hutter; torch.optim.AdamW's update) worked in numpy."""
    import numpy as np

    w, m, v = np.array(w, dtype=np.float64), 0.0, 0.0
    b1, b2 = betas
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = np.array(g, dtype=np.float64)
        w = w * (1 - lr * weight_decay)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        w = w - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return w


@pytest.mark.parametrize("betas, weight_decay", [((0.9, 0.999), 0.01), ((0.5, 0.9), 0.0), ((0.9, 0.95), 0.1)])
def test_adamw_gets_the_configured_betas_weight_decay_and_schedule(betas, weight_decay):
    grads = [[0.3, -0.2], [-0.1, 0.4], [0.25, 0.05], [0.0, -0.3], [0.2, 0.2]]  # norms < 1: never clipped
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -1.0]]))
    cfg = TrainConfig(epochs=1, batch_size=1, lr=0.1, schedule="linear", warmup_ratio=0.4, min_lr_ratio=0.0,
                      betas=list(betas), weight_decay=weight_decay)
    seen, lrs = [], []

    class Spy(Hooks):
        def before_step(self, m, step, opt):
            seen.append((opt.param_groups[0]["betas"], opt.param_groups[0]["weight_decay"]))

    def loss_fn(m, b):  # d loss / d w = g: the gradient is the batch itself
        return (m.weight * b["g"]).sum(), {}

    batches = iter([{"g": torch.tensor([g])} for g in grads])
    train(model, loss_fn, batches, steps=5, cfg=cfg, hooks=[Spy()], log=lambda s, row: lrs.append(row["lr"]))
    # 5 steps, W = round(0.4 * 5) = 2: warm-up 1/2, 2/2, then linear decay (5 - s) / 3 for s = 2, 3, 4
    hand = [0.05, 0.1, 0.1, 0.1 * 2 / 3, 0.1 / 3]
    assert lrs == pytest.approx(hand)
    assert seen == [(tuple(betas), weight_decay)] * 5
    expected = _adamw_numpy([0.5, -1.0], grads, hand, betas, weight_decay)
    assert model.weight.detach().double().flatten().numpy() == pytest.approx(expected, abs=1e-6)
    other = _adamw_numpy([0.5, -1.0], grads, hand, (0.9, 0.5), weight_decay)
    assert abs(expected - other).max() > 1e-3  # the betas matter for these gradients


def test_fused_adamw_is_the_same_update():
    """fused_adamw: torch's fused kernel, checked against the numpy AdamW like the default one."""
    grads = [[0.3, -0.2], [-0.1, 0.4], [0.25, 0.05]]
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -1.0]]))
    cfg = TrainConfig(epochs=1, batch_size=1, lr=0.1, schedule="constant", warmup_ratio=0.0, weight_decay=0.01,
                      fused_adamw=True)
    kinds = []

    class Spy(Hooks):
        def before_step(self, m, step, opt):
            kinds.append(opt.param_groups[0]["fused"])

    train(model, lambda m, b: ((m.weight * b["g"]).sum(), {}), iter([{"g": torch.tensor([g])} for g in grads]),
          steps=3, cfg=cfg, hooks=[Spy()])
    assert kinds == [True] * 3
    expected = _adamw_numpy([0.5, -1.0], grads, [0.1] * 3, (0.9, 0.95), 0.01)
    assert model.weight.detach().double().flatten().numpy() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("section, key, value", [
    ("unlearn", "schedule", "exponential"), ("unlearn", "betas", [0.9, 1.5]), ("unlearn", "betas", [0.9, 0.99, 0.999]),
    ("finetune", "betas", "0.9,0.95"), ("unlearn", "weight_decay", -0.01), ("pretrain", "schedule", 1),
    ("finetune", "warmup_ratio", 1.5), ("unlearn", "min_lr_ratio", float("nan")), ("unlearn", "betas", [-0.1, 0.9]),
    ("finetune", "group_by_length", "yes"), ("unlearn", "length_megabatch", 0), ("pretrain", "sync_every", 0),
    ("finetune", "fused_adamw", 1), ("finetune", "supervised_logits", "yes"),
])
def test_config_schema_rejects_bad_loop_keys_naming_them(section, key, value):
    """The loop settings' ranges live in the schema alone ($defs/train), for every train section."""
    from forgetlab.config import ConfigError, validate_schema

    config = smoke_config()
    config[section][key] = value
    with pytest.raises(ConfigError, match=rf"config key {section}\.{key}"):
        validate_schema(config)
    config = smoke_config()
    config["methods"]["npo"]["train"] = {key: value}  # a method's own override of the unlearn loop
    with pytest.raises(ConfigError, match=rf"config key methods\.npo\.train\.{key}"):
        validate_schema(config)
