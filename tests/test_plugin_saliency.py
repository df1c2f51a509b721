"""saliency (SalUn): the top-fraction mask on hand-worked scores and gradients, and only masked
weights moving under a real method's training; plus the plug-in build/config checks."""

from __future__ import annotations

import pytest
import torch

from forgetlab.config import ConfigError, check_config
from forgetlab.losses import nll
from forgetlab.registry import build
from forgetlab.train import Loader, TrainConfig, TrainContext, paired, train
from forgetlab.unlearning import build_method
from forgetlab.unlearning.plugins import PLUGINS
from forgetlab.unlearning.plugins.saliency import top_fraction_mask
from tests.helpers import FORGET, LOGITS, FixedLogits, smoke_config, tiny_world


def masks_as_lists(plugin):
    return [m.tolist() for m in plugin.masks]


def test_top_fraction_mask_is_worked_with_ties_in_flat_order():
    scores = [torch.tensor([[0.1, 0.4], [0.2, 0.2]]), torch.tensor([0.2, 0.0])]
    # N = 6. fraction 1/2 -> s = 3: 0.4, then two of the three tied 0.2s, the first two in flat order
    masks, threshold = top_fraction_mask(scores, 0.5)
    assert [m.tolist() for m in masks] == [[[False, True], [True, True]], [False, False]]
    assert threshold == pytest.approx(0.2)
    masks, _ = top_fraction_mask(scores, 1 / 3)  # s = 2
    assert [m.tolist() for m in masks] == [[[False, True], [True, False]], [False, False]]
    masks, _ = top_fraction_mask(scores, 0.01)  # floor(0.06 + 1/2) = 0 -> at least one weight
    assert [m.tolist() for m in masks] == [[[False, True], [False, False]], [False, False]]
    masks, _ = top_fraction_mask(scores, 1.0)
    assert all(m.all() for m in masks)


def test_saliency_mask_on_fixed_logits_is_worked():
    # grad NLL w.r.t. the logits = (softmax - onehot(label)) / 2 tokens:
    # pos 0, p = [1/2, 1/2], label 1 -> [1/4, -1/4]; pos 1, p = [3/4, 1/4], label 0 -> [-1/8, 1/8]; pos 2 -> 0
    # |g| = [[1/4, 1/4], [1/8, 1/8], [0, 0]]
    model = FixedLogits(LOGITS)
    ctx = TrainContext(total_steps=1, forget=[FORGET])
    plugin = build(PLUGINS, {"name": "saliency", "fraction": 1 / 3})  # s = 2 of 6
    plugin.setup(model, ctx)
    assert masks_as_lists(plugin) == [[[[True, True], [False, False], [False, False]]]]
    assert model.logits.grad is None  # the mask's gradients never reach p.grad
    plugin = build(PLUGINS, {"name": "saliency", "fraction": 0.5})  # s = 3: the 1/8 tie goes to [1][0]
    plugin.setup(model, ctx)
    assert masks_as_lists(plugin) == [[[[True, True], [True, False], [False, False]]]]
    assert plugin.summary() == pytest.approx({"saliency.masked_fraction": 0.5, "saliency.threshold": 1 / 8})


def test_saliency_mask_is_the_top_s_of_the_forget_gradient_on_a_tiny_model(smoke_data, tiny_model_dir):
    model, pad, forget, _ = tiny_world(smoke_data, tiny_model_dir)
    plugin = build(PLUGINS, {"name": "saliency", "fraction": 0.1, "batches": 2})
    plugin.setup(model, TrainContext(total_steps=1, forget=Loader(forget, 4, pad, seed=7)))
    # the same two batches, an independent gradient: backward() on the summed losses
    params = [p for p in model.parameters() if p.requires_grad]
    batches = iter(Loader(forget, 4, pad, seed=7))
    model.eval()
    sum(nll(model, next(batches)) for _ in range(2)).backward()
    scores = torch.cat([p.grad.abs().reshape(-1) for p in params])
    mask = torch.cat([m.reshape(-1) for m in plugin.masks])
    s = round(0.1 * scores.numel())
    assert int(mask.sum()) == s
    assert plugin.summary()["saliency.masked_fraction"] == pytest.approx(s / scores.numel())
    # every masked score is >= every unmasked one (up to float rounding of the two summation orders)
    assert scores[mask].min() >= scores[~mask].max() * (1 - 1e-5)


@pytest.mark.parametrize("spec", [{"name": "saliency", "fraction": 0.2},
                                  {"name": "wagle", "fraction": 0.2, "batches": 2},
                                  {"name": "wagle_taylor", "fraction": 0.2, "gamma": 1.0, "batches": 2}])
def test_only_masked_weights_change_under_training(spec, smoke_data, tiny_model_dir):
    model, pad, forget, retain = tiny_world(smoke_data, tiny_model_dir)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = build_method({"name": "grad_ascent", "plugins": [spec]})
    # weight decay would move every weight, masked or not, if the plug-in did not restore them
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-3, weight_decay=0.1, warmup_ratio=0.0, min_lr_ratio=1.0)
    ctx = TrainContext(total_steps=4, forget=Loader(forget, 4, pad, seed=2), retain=Loader(retain, 4, pad, seed=3))
    train(model, method.loss, paired(Loader(forget, 4, pad, seed=0), None), 4, cfg,
          hooks=[method, *method.plugins], context=ctx)
    plugin = method.plugins[0]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    changed = 0
    for name, p, mask in zip(names, plugin._params, plugin.masks):
        assert torch.equal(p.detach()[~mask], initial[name][~mask]), f"{name}: an unmasked weight moved"
        changed += int((p.detach()[mask] != initial[name][mask]).sum())
    assert changed > 0.5 * sum(int(m.sum()) for m in plugin.masks)


def test_plugins_build_check_and_config_errors():
    method = build_method({"name": "npo", "plugins": ["gu_projection"]})
    assert [p.name for p in method.plugins] == ["gu_projection"]
    with pytest.raises(ValueError, match=r"saliency\.fraction"):
        build_method({"name": "npo", "plugins": [{"name": "saliency", "fraction": 1.5}]})
    with pytest.raises(ValueError, match=r"saliency\.batches"):
        build_method({"name": "npo", "plugins": [{"name": "saliency", "batches": -1}]})
    # a method whose update is not a gradient step takes no plug-in
    method.accepts_plugins = False
    for name in ("gu_projection", "saliency", "wagle", "wagle_taylor"):
        with pytest.raises(ValueError, match="cannot apply"):
            build(PLUGINS, name).check(method)

    config = smoke_config()
    config["methods"]["x"] = {"name": "npo", "plugins": ["no_such_plugin"]}
    with pytest.raises(ConfigError, match=r"methods\.x\.plugins\[0\]"):
        check_config(config)
    config["methods"]["x"] = {"name": "npo", "plugins": ["gu_projection", {"name": "saliency", "fraction": 1.5}]}
    with pytest.raises(ConfigError, match=r"saliency\.fraction"):
        check_config(config)
    config["methods"]["x"] = {"name": "npo", "plugins": [{"name": "wagle", "mu": 1e-3, "fraction": 0.3}]}
    check_config(config)
    config["methods"]["x"] = {"name": "npo", "plugins": [{"name": "wagle", "gamma": 0.5}]}  # wagle_taylor's
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.gamma: wagle has no parameter 'gamma'"):
        check_config(config)


def test_npo_with_the_plugins_runs_through_the_recipe(smoke_data, tiny_model_dir, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from forgetlab.config import stage_params
    from forgetlab.recipes import unlearn

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = smoke_config()
    config["methods"] = {"npo_all": {"name": "npo", "plugins": [
        "gu_projection", {"name": "saliency", "fraction": 0.5}, {"name": "wagle", "fraction": 0.5, "batches": 1}]}}
    config.pop("sequential", None)  # it names the smoke study's npo entry, replaced here
    check_config(config)
    params = stage_params(config, "unlearn", model="unlearned", regularizer="none", seed=0, split="forget10",
                          method="npo_all")
    params["train"] = {**params["train"], "max_steps": 3, "eval_every": 2}
    unlearn.run(params, tiny_model_dir, smoke_data, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").exists()
    client = MlflowClient(uri)
    metrics = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])[0].data.metrics
    assert 0 < metrics["gu_projection.removed_fraction"] < 1 and metrics["gu_projection.rank"] == 2
    assert metrics["gu_projection.euclidean_steps"] == 1  # metric adam: the first step has no optimizer state
    assert metrics["saliency.masked_fraction"] == pytest.approx(0.5, abs=1e-6)
    assert metrics["wagle.masked_fraction"] == pytest.approx(0.5, abs=1e-6)


def test_freeze_unmasked_false_masks_only_the_gradient(smoke_data, tiny_model_dir):
    # the authors' (SalUn's, WAGLE's) behaviour: unmasked weights get no gradient, but AdamW's decoupled
    # weight decay still shrinks them: theta0 * (1 - lr * wd)^steps at a constant lr
    model, pad, forget, retain = tiny_world(smoke_data, tiny_model_dir)
    initial = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    method = build_method({"name": "grad_ascent", "plugins": [{"name": "saliency", "fraction": 0.2,
                                                                "freeze_unmasked": False}]})
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-3, weight_decay=0.1, warmup_ratio=0.0, min_lr_ratio=1.0)
    ctx = TrainContext(total_steps=3, forget=Loader(forget, 4, pad, seed=2), retain=Loader(retain, 4, pad, seed=3))
    train(model, method.loss, paired(Loader(forget, 4, pad, seed=0), None), 3, cfg,
          hooks=[method, *method.plugins], context=ctx)
    plugin = method.plugins[0]
    for p, p0, mask in zip(plugin._params, initial, plugin.masks):
        assert torch.allclose(p.detach()[~mask], p0[~mask] * (1 - 1e-3 * 0.1) ** 3, rtol=1e-6, atol=0)


def test_weight_mask_parameters_are_checked():
    for spec, key in [({"forget_loss": "kl"}, "saliency.forget_loss"), ({"freeze_unmasked": 1}, "saliency.freeze_unmasked"),
                      ({"fraction": True}, "saliency.fraction")]:
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            build_method({"name": "npo", "plugins": [{"name": "saliency", **spec}]})
    # a method whose forget term needs another view than the plug-in's forget batches hold
    with pytest.raises(ValueError, match=r"saliency\.forget_loss 'method' cannot apply to idk_nll"):
        build_method({"name": "idk_nll", "plugins": [{"name": "saliency", "forget_loss": "method"}]})
    build_method({"name": "idk_nll", "plugins": [{"name": "saliency"}]})  # nll: fine
