"""swa: the saved weights are the mean of exactly the expected snapshots of the window; from the
window's start every step runs at the SWA lr (constant / cyclic), or the loop's (lr_schedule: loop)."""

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


@pytest.mark.parametrize("spec,param", [
    ({"start": 1.0}, "swa.start"), ({"start": -0.1}, "swa.start"), ({"every": 0}, "swa.every"),
    ({"every": True}, "swa.every"), ({"end": 0.5, "start": 0.5}, "swa.end"), ({"end": 1.5}, "swa.end"),
    ({"dense": 1}, "swa.dense"), ({"lr_schedule": "cosine"}, "swa.lr_schedule"), ({"swa_lr": 0.0}, "swa.swa_lr"),
    ({"swa_lr": -1e-3}, "swa.swa_lr"), ({"lr_schedule": "loop", "swa_lr": 1e-3}, "swa.swa_lr"),
    ({"swa_lr_max": 1e-3}, "swa.swa_lr_max"), ({"lr_schedule": "cyclic", "dense": True}, "swa.lr_schedule"),
    ({"lr_schedule": "cyclic", "every": 1}, "swa.lr_schedule"),
    ({"lr_schedule": "cyclic", "swa_lr": 1e-3, "swa_lr_max": 1e-4}, "swa.swa_lr_max"),
])
def test_out_of_range_is_rejected(spec, param):
    with pytest.raises(ValueError, match=param):
        build_regularizers([{"name": "swa", **spec}])


def test_end_closes_the_window_early():
    # T = 10, start 0.2, end 0.7 -> window [2, 6]; every 2 -> snapshots after steps 6, 4, 2
    model, reg = _drive(10, start=0.2, end=0.7, every=2)
    assert torch.allclose(model.weight, torch.full((3, 2), (4 + 16 + 36) / 3))
    assert reg.summary() == {"snapshots": 3.0}


def _lrs(total, lam, **params):
    """The lr of each step as AdamW sees it (LambdaLR + swa.before_step), base lr 0.1."""
    (reg,) = build_regularizers([{"name": "swa", **params}])
    model = torch.nn.Linear(2, 1)
    reg.setup(model, TrainContext(total_steps=total))
    opt = torch.optim.AdamW(reg.param_groups(model, [{"params": list(model.parameters())}]), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    seen = []
    for t in range(total):
        reg.before_step(model, t, opt)
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        reg.after_step(model, t, opt)
    return seen, reg


def test_constant_swa_lr_from_the_window_start():
    lam = lambda t: 1.0 - 0.05 * t  # noqa: E731  a decaying schedule of the loop
    seen, reg = _lrs(10, lam, start=0.6, every=2)  # t0 = 6: lr held at 0.1 * lam(6) = 0.07
    assert seen == pytest.approx([0.1 * lam(t) for t in range(6)] + [0.07] * 4)
    assert reg.summary()["swa_lr"] == pytest.approx(0.07)
    seen, _ = _lrs(10, lam, start=0.6, every=2, swa_lr=0.02)
    assert seen == pytest.approx([0.1 * lam(t) for t in range(6)] + [0.02] * 4)
    seen, _ = _lrs(10, lam, start=0.6, every=2, lr_schedule="loop")
    assert seen == pytest.approx([0.1 * lam(t) for t in range(10)])


def test_groups_with_another_base_lr_keep_their_ratio():
    (reg,) = build_regularizers([{"name": "swa", "start": 0.5, "swa_lr": 0.02}])
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    reg.setup(torch.nn.Linear(1, 1), TrainContext(total_steps=4))
    opt = torch.optim.AdamW([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    reg.before_step(None, 2, opt)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.02, 0.1])


def test_cyclic_lr_reaches_swa_lr_at_each_snapshot():
    seen, reg = _lrs(12, lambda t: 1.0, start=0.5, every=3, lr_schedule="cyclic", swa_lr=0.01, swa_lr_max=0.05)
    snaps = [t for t in range(12) if reg.averages_at(t)]
    assert snaps == [8, 11] and reg.summary()["snapshots"] == 2.0  # window [6, 11], counted back from 11
    assert all(seen[t] == pytest.approx(0.01) for t in snaps)
    assert seen[:6] == pytest.approx([0.1] * 6)
    assert seen[9] > seen[10] > seen[11]  # linear decay within a cycle


def test_lr_and_average_survive_a_checkpoint():
    (reg,) = build_regularizers([{"name": "swa", "start": 0.5}])
    model = torch.nn.Linear(1, 1)
    reg.setup(model, TrainContext(total_steps=4))
    opt = torch.optim.AdamW(list(model.parameters()), lr=0.1)
    torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (t + 1))
    for g in opt.param_groups:
        g["lr"] = 0.1 / 3  # the scheduler's value at step 2 = t0
    reg.before_step(model, 2, opt)
    state = reg.state_dict()
    (again,) = build_regularizers([{"name": "swa", "start": 0.5}])
    again.setup(model, TrainContext(total_steps=4))
    again.load_state_dict(state)
    for g in opt.param_groups:
        g["lr"] = 0.1 / 4  # lambda(3), which a resumed run must not pick up
    again.before_step(model, 3, opt)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 / 3)


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
    train(load_model(tiny_model_dir), lambda m, b: lm_loss(m, b, regs), iter([batch] * 3), 3, cfg, hooks=regs)
    swa = regs[0]
    assert swa.summary()["snapshots"] == 3
    assert swa._params and all(min(p.shape) == 2 for p in swa._params)  # the rank-2 A and B matrices only
