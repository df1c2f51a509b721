"""swa: the saved weights are the mean of exactly the expected snapshots of the window."""

from __future__ import annotations

import pytest
import torch

from forgetlab.regularizers import build_regularizers
from forgetlab.train import TrainContext


def _drive(total, **params):
    """Set the weights to t^2 before each after_step(t); return the finalized weights and the reg."""
    (reg,) = build_regularizers([{"name": "swa", **params}])
    model = torch.nn.Linear(2, 3)
    reg.setup(model, TrainContext(total_steps=total))
    for t in range(total):
        with torch.no_grad():
            model.weight.fill_(t**2)
            model.bias.fill_(-t)
        reg.after_step(model, t, None)
    # the loop finishes with the last step's weights; finalize must replace them by the average
    reg.finalize(model)
    return model, reg


def test_every_averages_every_kth_step_back_from_the_last():
    # T = 10, start 0.5 -> window t in [5, 9]; every 2 -> snapshots after steps 9, 7, 5
    model, reg = _drive(10, start=0.5, every=2)
    assert torch.allclose(model.weight, torch.full((3, 2), (25 + 49 + 81) / 3))
    assert torch.allclose(model.bias, torch.full((3,), -(5 + 7 + 9) / 3))
    assert reg.summary() == {"snapshots": 3.0}
    # T = 10, start 0.25 -> window [2, 9]; every 3 -> 9, 6, 3 (not 2: counted back from the end)
    model, reg = _drive(10, start=0.25, every=3)
    assert torch.allclose(model.weight, torch.full((3, 2), (9 + 36 + 81) / 3))
    assert reg.summary() == {"snapshots": 3.0}


def test_dense_averages_every_step_of_the_window():
    # T = 10, start 0.5, dense (every is ignored) -> snapshots after steps 5, 6, 7, 8, 9
    model, reg = _drive(10, start=0.5, every=4, dense=True)
    assert torch.allclose(model.weight, torch.full((3, 2), (25 + 36 + 49 + 64 + 81) / 5))
    assert torch.allclose(model.bias, torch.full((3,), -7.0))
    assert reg.summary() == {"snapshots": 5.0}


def test_window_shorter_than_every_still_keeps_the_final_weights():
    model, reg = _drive(8, start=0.75, every=10)  # window [6, 7]: only step 7
    assert torch.equal(model.weight, torch.full((3, 2), 49.0))
    assert reg.summary() == {"snapshots": 1.0}


def test_bf16_weights_are_averaged_in_float32():
    (reg,) = build_regularizers([{"name": "swa", "start": 0.0, "every": 1}])
    model = torch.nn.Linear(1, 1, bias=False).to(torch.bfloat16)
    reg.setup(model, TrainContext(total_steps=3))
    for t, v in enumerate([1.0, 2.0, 4.0]):
        with torch.no_grad():
            model.weight.fill_(v)
        reg.after_step(model, t, None)
    reg.finalize(model)
    assert model.weight.dtype == torch.bfloat16 and model.weight.item() == pytest.approx(7 / 3, rel=1e-2)


@pytest.mark.parametrize("param,value", [("start", 1.0), ("start", -0.1), ("every", 0)])
def test_out_of_range_is_rejected(param, value):
    with pytest.raises(ValueError, match=f"swa.{param}"):
        build_regularizers([{"name": "swa", param: value}])


def test_swa_averages_the_lora_adapters_before_the_merge(tiny_model_dir):
    """With LoRA, the trainable parameters are the adapters: swa must average those, then lora merges."""
    from forgetlab.losses import lm_loss
    from forgetlab.model import load_model
    from forgetlab.regularizers import build_regularizers
    from forgetlab.train import TrainConfig, train

    regs = build_regularizers([{"name": "lora", "rank": 2}, {"name": "swa", "start": 0.0, "dense": True}])
    assert [r.name for r in regs] == ["swa", "lora"]  # swa finalizes first, lora merges last
    ids = torch.randint(4, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}
    cfg = TrainConfig(epochs=1, batch_size=2, lr=1e-2, warmup_ratio=0.0)
    train(load_model(tiny_model_dir), lambda m, b: lm_loss(m, b, regs), iter([batch] * 3), 3, cfg, regularizers=regs)
    swa = regs[0]
    assert swa.summary()["snapshots"] == 3
    assert swa._params and all(min(p.shape) == 2 for p in swa._params)  # the rank-2 A and B matrices only
