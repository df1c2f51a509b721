"""`allora`: LoRA with scaling 1 and no dropout, and a per-parameter lr = scheduled lr *
min(max_factor, 1 / (||theta|| + eps)) that follows the schedule without compounding."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from forgetlab.model import load_model, save_model
from forgetlab.regularizers import build_regularizers
from forgetlab.train import TrainConfig, lr_lambda
from tests.test_reg_lora import MATRIX, finetune, lora_factors


def rule(param, eps, max_factor):
    return min(max_factor, 1.0 / (param.detach().double().norm().item() + eps))


def test_peft_config_has_no_dropout_and_unit_scaling(tiny_model_dir):
    (reg,) = build_regularizers([{"name": "allora", "rank": 4}])
    wrapped = reg.setup(load_model(tiny_model_dir, torch.device("cpu")), None)
    config = wrapped.peft_config["default"]
    assert config.lora_dropout == 0.0 and config.r == 4 and config.lora_alpha == 4 and not config.use_rslora
    layers = [m for n, m in wrapped.get_base_model().named_modules() if n.endswith(("q_proj", "v_proj"))]
    assert layers and all(m.scaling["default"] == 1.0 for m in layers)
    assert all(isinstance(m.lora_dropout["default"], torch.nn.Identity) for m in layers)


def test_each_lora_parameter_gets_scheduled_lr_over_its_norm(tiny_model_dir, smoke_data):
    """The loop by hand (as forgetlab.train does it): the lr used at every step is the scheduled
    lr times the factor of the parameter's current norm, and the factor never compounds."""
    eps, max_factor, lr, steps = 1e-3, 10.0, 1e-2, 4
    (reg,) = build_regularizers([{"name": "allora", "rank": 4, "eps": eps, "max_factor": max_factor}])
    model = reg.setup(load_model(tiny_model_dir, torch.device("cpu")), None)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = reg.param_groups(model, [{"params": params, "weight_decay": 0.0}])
    assert len(groups) == len(params) == 8 and all(len(g["params"]) == 1 for g in groups)
    assert "lr" not in groups[0]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    schedule = lr_lambda(steps, warmup_ratio=0.5, min_lr_ratio=0.1)  # warmup then decay: lr moves
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    assert scheduler.base_lrs == [lr] * 8  # the factor stays out of the base lrs

    ids = torch.randint(4, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    for step in range(steps):
        before = [rule(g["params"][0], eps, max_factor) for g in optimizer.param_groups]
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        reg.before_step(model, step, optimizer)
        used = [g["lr"] for g in optimizer.param_groups]
        assert used == pytest.approx([lr * schedule(step) * f for f in before], rel=1e-6)
        assert [g["allora_scheduled_lr"] for g in optimizer.param_groups] == pytest.approx([lr * schedule(step)] * 8)
        optimizer.step()
        scheduler.step()
        # the scheduler resets every lr to base_lr * lambda: no factor survives into the next step
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([lr * schedule(step + 1)] * 8, rel=1e-12)
    # B started at 0 (factor capped at max_factor) and left it; A's factor follows its norm
    factors = {n: g["allora_factor"] for g in optimizer.param_groups
               for n, p in model.named_parameters() if p is g["params"][0]}
    assert all(0 < f < max_factor for n, f in factors.items() if ".lora_A." in n)
    assert all(f <= max_factor for n, f in factors.items() if ".lora_B." in n)
    reg.finalize(model)


def test_factor_follows_the_real_loop_without_compounding(tiny_model_dir, smoke_data):
    """Three steps of forgetlab.train.train: at each optimizer step every LoRA group's lr is
    lr * lambda(step) * rule(current norm), not a product of past factors."""
    eps, max_factor, lr, steps = 1e-3, 10.0, 5e-3, 3
    seen = []
    lam = lr_lambda(steps, 0.0, 0.1)

    def spy(reg):
        original = reg.before_step

        def before_step(model, step, optimizer):
            factors = [rule(g["params"][0], eps, max_factor) for g in optimizer.param_groups if "allora_factor" in g]
            original(model, step, optimizer)
            lrs = [g["lr"] for g in optimizer.param_groups if "allora_factor" in g]
            seen.append([(step, group_lr, f) for group_lr, f in zip(lrs, factors)])

        reg.before_step = before_step

    _, _, (reg,) = finetune(tiny_model_dir, smoke_data,
                            [{"name": "allora", "rank": 4, "eps": eps, "max_factor": max_factor}],
                            steps=steps, lr=lr, prepare=lambda regs: spy(regs[0]))
    assert len(seen) == steps
    for rows in seen:
        assert len(rows) == 8
        for step, group_lr, factor in rows:
            assert group_lr == pytest.approx(lr * lam(step) * factor, rel=1e-6)
    stats = reg.summary()
    assert 0 < stats["lr_factor_min"] <= stats["lr_factor_mean"] <= stats["lr_factor_max"] <= max_factor


def test_merged_model_is_w0_plus_ba_and_saved_plain(tiny_model_dir, smoke_data, tmp_path):
    w0 = load_model(tiny_model_dir, torch.device("cpu")).get_submodule(MATRIX).weight.detach().clone()
    seen = {}

    def capture(peft_model):
        seen["A"], seen["B"], seen["scaling"] = lora_factors(peft_model)

    model, tokenizer, (reg,) = finetune(tiny_model_dir, smoke_data, [{"name": "allora", "rank": 2}],
                                        steps=2, capture=capture)
    assert seen["scaling"] == 1.0 and seen["B"].abs().max() > 0
    assert torch.allclose(model.get_submodule(MATRIX).weight, w0 + seen["B"] @ seen["A"], atol=1e-6, rtol=0)
    assert 1 <= reg.summary()["delta_rank_max"] <= 2
    save_model(model, tokenizer, tmp_path / "ft")
    assert not any("lora" in k for k in load_file(tmp_path / "ft" / "model.safetensors"))
    loaded = load_model(tmp_path / "ft", torch.device("cpu"))
    assert torch.equal(loaded.get_submodule(MATRIX).weight, model.get_submodule(MATRIX).weight)


@pytest.mark.parametrize(
    "spec, param",
    [
        ({"rank": 0}, "allora.rank"),
        ({"eps": 0.0}, "allora.eps"),
        ({"max_factor": 0.0}, "allora.max_factor"),
        ({"target_modules": []}, "allora.target_modules"),
    ],
)
def test_out_of_range_params_are_rejected(spec, param):
    with pytest.raises(ValueError, match=param):
        build_regularizers([{"name": "allora", **spec}])


def test_lora_parameters_of_lora_are_not_accepted():
    with pytest.raises(TypeError):
        build_regularizers([{"name": "allora", "alpha": 16.0}])
    with pytest.raises(TypeError):
        build_regularizers([{"name": "allora", "dropout": 0.1}])


def test_combinations_are_rejected():
    (reg,) = build_regularizers([{"name": "allora"}])
    with pytest.raises(ValueError, match="allora and sparsity"):
        reg.check([SimpleNamespace(name="sparsity")])
    with pytest.raises(ValueError, match="allora and lora"):
        build_regularizers([{"name": "allora"}, {"name": "lora"}])
    with pytest.raises(ValueError, match="allora and allora"):
        build_regularizers([{"name": "allora"}, {"name": "allora"}])


def test_groups_keep_the_options_of_earlier_regularizers(tiny_model_dir):
    """weight_decay (order 0) splits the groups first; allora keeps each group's options."""
    regs = build_regularizers([{"name": "allora", "rank": 2}, {"name": "weight_decay", "coef": 0.1}])
    assert [r.name for r in regs] == ["weight_decay", "allora"]
    model = load_model(tiny_model_dir, torch.device("cpu"))
    for reg in regs:
        model = reg.setup(model, None)
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": 0.0}]
    for reg in regs:
        groups = reg.param_groups(model, groups)
    own = [g for g in groups if "allora_factor" in g]
    assert len(own) == 8 and all(g["weight_decay"] == 0.1 for g in own)
    regs[1].finalize(model)
