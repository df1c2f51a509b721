"""`allora`: LoRA with scaling 1 and no dropout, and a per-row lr = scheduled lr *
1 / sqrt(||row||^2 + 1/eta^2), applied inside optimizer.step() to the LoRA weights only
(the numpy check of the rule itself is in test_fidelity_regularizers)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from forgetlab.model import load_model, save_model
from forgetlab.registry import ComponentError
from forgetlab.regularizers import build_regularizers
from tests.helpers import MATRIX, finetune, lora_factors


def test_peft_config_has_no_dropout_and_unit_scaling(tiny_model_dir):
    (reg,) = build_regularizers([{"name": "allora", "rank": 4}])
    wrapped = reg.setup(load_model(tiny_model_dir, torch.device("cpu")), None)
    config = wrapped.peft_config["default"]
    assert config.lora_dropout == 0.0 and config.r == 4 and config.lora_alpha == 4 and not config.use_rslora
    layers = [m for n, m in wrapped.get_base_model().named_modules() if n.endswith(("q_proj", "v_proj"))]
    assert layers and all(m.scaling["default"] == 1.0 for m in layers)
    assert all(isinstance(m.lora_dropout["default"], torch.nn.Identity) for m in layers)


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
        ({"eta": 0.0}, "allora.eta"),
        ({"eta": float("inf")}, "allora.eta"),
        ({"eta": True}, "allora.eta"),
        ({"granularity": "matrix"}, "allora.granularity"),
        ({"target_modules": []}, "allora.target_modules"),
    ],
)
def test_out_of_range_params_are_rejected(spec, param):
    with pytest.raises(ValueError, match=param):
        build_regularizers([{"name": "allora", **spec}])


def test_lora_parameters_of_lora_are_not_accepted():
    with pytest.raises(ComponentError, match="allora has no parameter 'alpha'"):
        build_regularizers([{"name": "allora", "alpha": 16.0}])
    with pytest.raises(ComponentError, match="allora has no parameter 'dropout'"):
        build_regularizers([{"name": "allora", "dropout": 0.1}])
    with pytest.raises(ComponentError, match="allora has no parameter 'max_factor'"):  # the former per-tensor rule's knobs
        build_regularizers([{"name": "allora", "max_factor": 10.0}])


def test_combinations_are_rejected():
    (reg,) = build_regularizers([{"name": "allora"}])
    with pytest.raises(ValueError, match="allora and sparsity"):
        reg.check([SimpleNamespace(name="sparsity")])
    with pytest.raises(ValueError, match="allora and lora"):
        build_regularizers([{"name": "allora"}, {"name": "lora"}])
    with pytest.raises(ValueError, match="allora and allora"):
        build_regularizers([{"name": "allora"}, {"name": "allora"}])


def test_rule_runs_inside_the_optimizer_step_in_the_real_loop(tiny_model_dir, smoke_data):
    """Three steps of forgetlab.train.train: the groups and their lrs are the loop's own, the factors
    are bounded by eta (reached by B's zero rows at step 0), and finalize removes the hooks."""
    eta = 5.0
    seen = {}

    def spy(regs):
        original = regs[0].before_step

        def before_step(model, step, optimizer):
            original(model, step, optimizer)
            seen.setdefault("optimizer", optimizer)
            seen.setdefault("lrs", []).append([g["lr"] for g in optimizer.param_groups])

        regs[0].before_step = before_step

    _, _, (reg,) = finetune(tiny_model_dir, smoke_data, [{"name": "allora", "rank": 4, "eta": eta}],
                            steps=3, lr=5e-3, prepare=spy, schedule="constant")
    optimizer = seen["optimizer"]
    assert len(optimizer.param_groups) == 1  # no per-parameter groups
    assert all(lrs == [5e-3] for lrs in seen["lrs"])  # constant schedule, no warm-up: the lr is untouched
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks
    stats = reg.summary()
    assert 0 < stats["lr_factor_min"] <= stats["lr_factor_mean"] <= stats["lr_factor_max"] <= eta


def test_groups_are_left_as_they_are(tiny_model_dir):
    regs = build_regularizers([{"name": "allora", "rank": 2}, {"name": "weight_decay", "coef": 0.1}])
    model = load_model(tiny_model_dir, torch.device("cpu"))
    for reg in regs:
        model = reg.setup(model, None)
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": 0.0}]
    for reg in regs:
        groups = reg.param_groups(model, groups)
    before = [(dict((k, v) for k, v in g.items() if k != "params"), len(g["params"])) for g in groups]
    assert regs[1].param_groups(model, groups) is groups and [
        (dict((k, v) for k, v in g.items() if k != "params"), len(g["params"])) for g in groups] == before
    regs[1].finalize(model)
