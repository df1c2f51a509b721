"""`lora`: the merged weights are W0 + (alpha/r) B A, only the adapters train, the update is low rank,
and the saved checkpoint is a plain transformers model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from forgetlab.model import load_model, save_model
from forgetlab.regularizers import REGULARIZERS, build_regularizers
from tests.helpers import MATRIX, finetune, lora_factors


def test_registered():
    assert {"lora", "allora"} <= set(REGULARIZERS.names())


def test_merged_weights_are_w0_plus_scaled_ba(tiny_model_dir, smoke_data):
    rank, alpha = 4, 8.0
    w0 = load_model(tiny_model_dir, torch.device("cpu")).get_submodule(MATRIX).weight.detach().clone()
    ids = torch.randint(4, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    seen = {}

    def capture(peft_model):
        seen["A"], seen["B"], seen["scaling"] = lora_factors(peft_model)
        peft_model.eval()
        with torch.no_grad():
            seen["logits"] = peft_model(input_ids=ids).logits
        # the frozen base weight was not touched by training
        assert torch.equal(peft_model.get_base_model().get_submodule(MATRIX).base_layer.weight, w0)

    model, _, (reg,) = finetune(tiny_model_dir, smoke_data, [{"name": "lora", "rank": rank, "alpha": alpha}],
                                capture=capture)
    assert type(model).__name__ == "LlamaForCausalLM"
    A, B = seen["A"], seen["B"]
    assert seen["scaling"] == pytest.approx(alpha / rank)
    assert B.abs().max() > 0  # training moved B away from its zero init
    expected = w0 + (alpha / rank) * B @ A
    assert torch.allclose(model.get_submodule(MATRIX).weight, expected, atol=1e-6, rtol=0)
    # the merged model computes what the adapted one did (eval: no LoRA dropout)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, seen["logits"], atol=1e-4)


def test_only_lora_parameters_train(tiny_model_dir):
    model = load_model(tiny_model_dir, torch.device("cpu"))
    total = sum(p.numel() for p in model.parameters())
    (reg,) = build_regularizers([{"name": "lora", "rank": 4}])
    wrapped = reg.setup(model, None)
    trainable = {n: p for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # 2 layers x (q_proj, v_proj), each r x in + out x r = 4 x 32 + 32 x 4
    assert sum(p.numel() for p in trainable.values()) == 4 * (4 * 32 + 32 * 4)
    assert {n.split(".lora_")[0].removeprefix("base_model.model.") for n in trainable} == {
        f"model.layers.{i}.self_attn.{m}" for i in (0, 1) for m in ("q_proj", "v_proj")
    }
    stats = reg.summary()
    assert stats["trainable_params"] == 1024
    assert stats["trainable_fraction"] == pytest.approx(1024 / (total + 1024))
    assert wrapped.peft_config["default"].lora_dropout == 0.05


def test_update_is_low_rank_and_saved_as_a_plain_model(tiny_model_dir, smoke_data, tmp_path):
    rank = 2
    before = load_model(tiny_model_dir, torch.device("cpu"))
    model, tokenizer, (reg,) = finetune(tiny_model_dir, smoke_data, [{"name": "lora", "rank": rank}], steps=3)
    stats = reg.summary()
    assert stats["adapted_matrices"] == 4
    assert 1 <= stats["delta_rank_max"] <= rank
    assert stats["delta_rel_norm_mean"] > 0
    for i in (0, 1):
        for m in ("q_proj", "v_proj"):
            name = f"model.layers.{i}.self_attn.{m}"
            delta = model.get_submodule(name).weight.double() - before.get_submodule(name).weight.double()
            assert torch.linalg.matrix_rank(delta, rtol=1e-5).item() <= rank
    # everything that was not adapted is unchanged
    adapted = {f"model.layers.{i}.self_attn.{m}.weight" for i in (0, 1) for m in ("q_proj", "v_proj")}
    after_sd, before_sd = model.state_dict(), before.state_dict()
    assert after_sd.keys() == before_sd.keys()
    assert all(torch.equal(after_sd[k], before_sd[k]) for k in after_sd if k not in adapted)

    save_model(model, tokenizer, tmp_path / "ft")
    assert not any("lora" in k for k in load_file(tmp_path / "ft" / "model.safetensors"))
    assert not (tmp_path / "ft" / "adapter_config.json").exists()
    loaded = load_model(tmp_path / "ft", torch.device("cpu"))
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert all(torch.equal(v, after_sd[k]) for k, v in loaded.state_dict().items())


@pytest.mark.parametrize(
    "spec, param",
    [
        ({"rank": 0}, "lora.rank"),
        ({"rank": 2.5}, "lora.rank"),
        ({"alpha": 0.0}, "lora.alpha"),
        ({"alpha": -1.0}, "lora.alpha"),
        ({"dropout": 1.0}, "lora.dropout"),
        ({"dropout": -0.1}, "lora.dropout"),
        ({"target_modules": []}, "lora.target_modules"),
        ({"target_modules": "q_proj"}, "lora.target_modules"),
    ],
)
def test_out_of_range_params_are_rejected(spec, param):
    with pytest.raises(ValueError, match=param):
        build_regularizers([{"name": "lora", **spec}])


def test_sparsity_and_second_adapter_are_rejected():
    if "sparsity" in REGULARIZERS:
        with pytest.raises(ValueError, match=r"(lora and sparsity|sparsity and lora)"):
            build_regularizers([{"name": "lora"}, {"name": "sparsity"}])
    (reg,) = build_regularizers([{"name": "lora"}])
    with pytest.raises(ValueError, match="lora and sparsity"):
        reg.check([SimpleNamespace(name="sparsity")])
    for other in ("lora", "allora"):
        with pytest.raises(ValueError, match=f"lora and {other}"):
            build_regularizers([{"name": "lora"}, {"name": other}])
    build_regularizers([{"name": "lora"}, {"name": "dropout"}])  # other regularizers combine
