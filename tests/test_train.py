"""The shared training loop: schedule, accumulation, NaN stop, determinism, no partial outputs."""

from __future__ import annotations

import math

import pytest
import torch

from forgetlab.config import stage_params
from forgetlab.recipes import finetune
from forgetlab.train import Loader, NonFiniteLossError, TrainConfig, lr_lambda, train
from tests.conftest import smoke_config


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
