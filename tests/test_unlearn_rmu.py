"""rmu: the loss against a direct computation, the frozen weights, and the direction of its gradient."""

import pytest
import torch

from forgetlab.model import load_model
from forgetlab.qa import IGNORE, collate
from forgetlab.train import Loader, TrainConfig, TrainContext, paired, train
from forgetlab.unlearning import build_method
from forgetlab.unlearning.rmu import layer_output, steering_direction, token_mse

PAD = 0


def examples(n: int, seed: int, vocab: int = 100) -> list[dict]:
    """n random QA-like encodings of varying length; the first 3 tokens are prompt."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(3, vocab, (6 + i % 3,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE] * 3 + ids[3:]})
    return out


def test_steering_direction_is_a_seeded_nonnegative_unit_vector():
    u = steering_direction(32, seed=3)
    assert u.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert (u >= 0).all()
    assert torch.equal(u, steering_direction(32, seed=3))
    assert not torch.equal(u, steering_direction(32, seed=4))


def test_rmu_pooled_all_tokens_loss_matches_a_direct_computation(tiny_model_dir):
    """tokens: all, reduction: pooled (forgetlab's earlier choice; the reference's is in test_fidelity_rmu_pdu)."""
    model, frozen = load_model(tiny_model_dir), load_model(tiny_model_dir)
    with torch.no_grad():  # make the frozen model differ, so that the retain term is not zero
        frozen.model.layers[0].mlp.down_proj.weight.add_(0.05)
    c, alpha = 3.0, 2.0
    method = build_method({"name": "rmu", "layer": 0, "steering_coef": c, "alpha": alpha,
                           "tokens": "all", "reduction": "pooled"})
    method.reference = frozen
    d = model.config.hidden_size
    method.u = torch.zeros(d)
    method.u[1] = 1.0  # u = e_1, chosen by hand
    forget, retain = collate(examples(3, 0), PAD), collate(examples(2, 1), PAD)
    assert (forget["attention_mask"] == 0).any()  # padding is present and must be ignored
    loss, parts = method.loss(model, {"forget": forget, "retain": retain})

    def direct(m, b):  # layer 0's output is hidden_states[1]
        out = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
        return out.hidden_states[1]

    with torch.no_grad():
        hf, hr, hr_frozen = direct(model, forget), direct(model, retain), direct(frozen, retain)
    target = c * method.u
    f_terms = [((hf[b, t] - target) ** 2).sum() / d
               for b in range(hf.size(0)) for t in range(hf.size(1)) if forget["attention_mask"][b, t]]
    r_terms = [((hr[b, t] - hr_frozen[b, t]) ** 2).sum() / d
               for b in range(hr.size(0)) for t in range(hr.size(1)) if retain["attention_mask"][b, t]]
    f_mse, r_mse = sum(f_terms) / len(f_terms), sum(r_terms) / len(r_terms)
    assert r_mse > 0
    assert parts["rmu_forget"] == pytest.approx(f_mse.item(), rel=1e-5)
    assert parts["rmu_retain"] == pytest.approx(r_mse.item(), rel=1e-5)
    assert loss.item() == pytest.approx((f_mse + alpha * r_mse).item(), rel=1e-5)


def test_rmu_forward_stops_at_the_layer(tiny_model_dir):
    model = load_model(tiny_model_dir)
    called = []
    handle = model.lm_head.register_forward_hook(lambda *a: called.append(1))
    h = layer_output(model, 0, collate(examples(2, 0), PAD))
    handle.remove()
    assert not called and h.shape[-1] == model.config.hidden_size


def _changed_after_training(tiny_model_dir, **spec):
    model, frozen = load_model(tiny_model_dir), load_model(tiny_model_dir).requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen_before = {k: v.clone() for k, v in frozen.state_dict().items()}
    method = build_method({"name": "rmu", "layer": 1, "steering_coef": 5.0, "alpha": 1.0, **spec})
    method.reference = frozen
    cfg = TrainConfig(epochs=1, batch_size=2, lr=1e-2, max_steps=3, warmup_ratio=0.0, min_lr_ratio=1.0)
    forget, retain = Loader(examples(4, 0), 2, PAD, seed=0), Loader(examples(4, 1), 2, PAD, seed=1)
    train(model, method.loss, paired(forget, retain), 3, cfg, hooks=[method],
          context=TrainContext(total_steps=3))
    after = model.state_dict()
    assert all(torch.equal(frozen_before[k], v) for k, v in frozen.state_dict().items())
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_rmu_updates_only_the_down_projections_of_the_update_layers_by_default(tiny_model_dir):
    assert _changed_after_training(tiny_model_dir) == {f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1)}


def test_rmu_trainable_params_choose_the_matrices(tiny_model_dir):
    mlp = [f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    changed = _changed_after_training(tiny_model_dir, update_layers=[1], trainable_params=mlp)
    assert changed == {f"model.layers.1.{name}" for name in mlp}


def test_rmu_trainable_params_all_trains_every_weight_up_to_the_layer(tiny_model_dir):
    changed = _changed_after_training(tiny_model_dir, layer=0, trainable_params=["all"])
    assert "model.embed_tokens.weight" in changed and "model.layers.0.self_attn.q_proj.weight" in changed
    assert not any(k.startswith(("model.layers.1.", "model.norm.")) for k in changed)  # above layer 0: no gradient


def test_rmu_unknown_trainable_param_names_the_layer(tiny_model_dir):
    method = build_method({"name": "rmu", "layer": 1, "trainable_params": ["mlp.down.weight"]})
    with pytest.raises(ValueError, match=r"rmu.trainable_params: decoder layer 0 has no parameter 'mlp.down.weight'"):
        method.setup(load_model(tiny_model_dir), TrainContext(total_steps=1))


def test_rmu_default_update_layers_end_at_the_layer():
    assert build_method({"name": "rmu", "layer": 1}).update_layers == [0, 1]
    assert build_method({"name": "rmu", "layer": 3}).update_layers == [1, 2, 3]
    assert build_method({"name": "rmu", "layer": 0}).update_layers == [0]


def test_rmu_gradient_moves_forget_activations_toward_the_steering_vector(tiny_model_dir):
    model = load_model(tiny_model_dir)
    c = 4.0
    method = build_method({"name": "rmu", "layer": 1, "steering_coef": c, "alpha": 0.0})
    assert not method.needs_reference
    model = method.setup(model, TrainContext(total_steps=1))
    forget = collate(examples(3, 0), PAD)

    def distance():
        with torch.no_grad():
            h = layer_output(model, 1, forget)
            return token_mse(h, (c * method.u).expand_as(h), forget["labels"] != IGNORE, "sequence").item()

    start = distance()
    loss, _ = method.loss(model, {"forget": forget, "retain": None})
    assert loss.item() == pytest.approx(start, rel=1e-5)
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    with torch.no_grad():
        for p in trainable:
            p -= 0.05 * p.grad
    assert distance() < start


def test_rmu_layer_is_checked_against_the_model(tiny_model_dir):
    model = load_model(tiny_model_dir)
    n = model.config.num_hidden_layers
    with pytest.raises(ValueError, match=rf"rmu.layer = {n}, but the model has {n} decoder layers"):
        build_method({"name": "rmu", "layer": n}).setup(model, TrainContext(total_steps=1))


@pytest.mark.parametrize("spec, field", [
    ({"layer": -1}, "layer"),
    ({"layer": 1.5}, "layer"),
    ({"layer": 1, "update_layers": [2]}, "update_layers"),
    ({"layer": 1, "update_layers": []}, "update_layers"),
    ({"layer": 1, "update_layers": [1, 1]}, "update_layers"),
    ({"steering_coef": 0.0}, "steering_coef"),
    ({"alpha": -1.0}, "alpha"),
    ({"seed": 0.5}, "seed"),
    ({"gamma": -1.0}, "gamma"),
    ({"tokens": "prompt"}, "tokens"),
    ({"reduction": "sum"}, "reduction"),
    ({"trainable_params": []}, "trainable_params"),
    ({"trainable_params": ["all", "mlp.down_proj.weight"]}, "trainable_params"),
])
def test_rmu_range_checks(spec, field):
    with pytest.raises(ValueError, match=f"rmu.{field}"):
        build_method({"name": "rmu", **spec})
