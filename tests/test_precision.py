"""Device and precision: `precision: auto|fp32|bf16`, autocast around the forward and loss only,
float32 weights and optimizer state; bf16 on the CPU runs through torch's CPU autocast."""

from __future__ import annotations

import pytest
import torch

from forgetlab import model as model_mod
from forgetlab.config import ConfigError, stage_params, validate_schema
from forgetlab.losses import lm_loss
from forgetlab.model import autocast_dtype, load_model, load_tokenizer
from forgetlab.qa import encode_qa
from forgetlab.recipes import read_jsonl
from forgetlab.train import Loader, TrainConfig, train
from tests.helpers import smoke_config

STEPS = 3


def run(tiny_model_dir, smoke_data, precision: str, dev="cpu"):
    """A few fine-tuning steps; returns the final parameters, the logits dtypes seen, the optimizer."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir, torch.device(dev))
    rows = read_jsonl(smoke_data / "qa" / "full.jsonl")[:32]
    loader = Loader([encode_qa(tokenizer, r["question"], r["answer"], 64) for r in rows], 8, tokenizer.pad_token_id,
                    seed=0, device=dev)
    seen, captured = [], {}

    def loss_fn(m, batch):
        loss, parts = lm_loss(m, batch)
        seen.append(torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None)
        return loss, parts

    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-3, warmup_ratio=0.0)
    model = train(model, loss_fn, iter(loader), STEPS, cfg, precision=precision,
                  log=lambda step, values: captured.setdefault("losses", []).append(values["loss"]))
    return {n: p.detach().cpu() for n, p in model.named_parameters()}, seen, captured["losses"]


def test_auto_is_fp32_on_the_cpu_bit_for_bit(tiny_model_dir, smoke_data):
    assert autocast_dtype("auto", "cpu") is None and autocast_dtype("fp32", "cpu") is None
    fp32, seen32, _ = run(tiny_model_dir, smoke_data, "fp32")
    auto, seen_auto, _ = run(tiny_model_dir, smoke_data, "auto")
    assert seen32 == seen_auto == [None] * STEPS  # no autocast at all
    assert all(torch.equal(fp32[k], auto[k]) for k in fp32)


def test_bf16_on_the_cpu_runs_through_cpu_autocast(tiny_model_dir, smoke_data):
    """Documented choice: bf16 is not rejected on the CPU; it runs the forward and the loss under
    torch's CPU autocast (slower than fp32 there, meant for checks), and the weights stay float32."""
    fp32, _, losses32 = run(tiny_model_dir, smoke_data, "fp32")
    bf16, seen, losses16 = run(tiny_model_dir, smoke_data, "bf16")
    assert seen == [torch.bfloat16] * STEPS
    assert all(p.dtype == torch.float32 for p in bf16.values())
    assert all(torch.isfinite(torch.tensor(x)) for x in losses16)
    assert any(not torch.equal(fp32[k], bf16[k]) for k in fp32)  # autocast really changed the numerics
    assert losses16[0] == pytest.approx(losses32[0], rel=0.05)  # ... but not the loss's scale


def test_unknown_precision_fails_before_any_step(tiny_model_dir, smoke_data):
    with pytest.raises(ValueError, match="precision must be one of"):
        run(tiny_model_dir, smoke_data, "fp16")


def test_gpu_without_native_bf16(monkeypatch):
    monkeypatch.setattr(model_mod, "_cuda_bf16", lambda: False)
    assert autocast_dtype("auto", "cuda") is None  # auto falls back to fp32
    with pytest.raises(ValueError, match="no native bfloat16"):
        autocast_dtype("bf16", "cuda")
    monkeypatch.setattr(model_mod, "_cuda_bf16", lambda: True)
    assert autocast_dtype("auto", "cuda") == torch.bfloat16


def test_precision_is_a_checked_top_level_key():
    config = smoke_config()
    assert "precision" not in stage_params(config, "finetune", model="target", role="target", regularizer="none", seed=0)
    config["precision"] = "bf16"
    validate_schema(config)
    for stage, coords in (("pretrain", {}), ("unlearn", dict(regularizer="none", seed=0, split="forget10", method="npo")),
                          ("evaluate", dict(model="target", regularizer="none", seed=0, split="forget10"))):
        assert stage_params(config, stage, **coords)["precision"] == "bf16"
    config["precision"] = "fp16"
    with pytest.raises(ConfigError, match="config key precision"):
        validate_schema(config)


def test_checkpoint_every_is_a_checked_train_setting():
    config = smoke_config()
    config["finetune"]["checkpoint_every"] = 10
    validate_schema(config)
    config["finetune"]["checkpoint_every"] = -1
    with pytest.raises(ConfigError, match="config key finetune.checkpoint_every"):
        validate_schema(config)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_training_steps_on_cuda(tiny_model_dir, smoke_data):
    if not model_mod._cuda_bf16():
        pytest.skip("this GPU has no native bfloat16")
    assert autocast_dtype("auto", "cuda") == torch.bfloat16
    params, seen, losses = run(tiny_model_dir, smoke_data, "bf16", dev="cuda")
    assert seen == [torch.bfloat16] * STEPS
    assert all(p.dtype == torch.float32 for p in params.values())
    assert all(torch.isfinite(torch.tensor(x)) for x in losses)
