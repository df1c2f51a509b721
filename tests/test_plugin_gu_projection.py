"""gu_projection: after a projected step the forget term's contribution to the gradient is
M-orthogonal to each retain gradient (zero first-order change of the retain losses in the chosen
metric), the method's retain term's contribution is unchanged, and the loss value is the method's;
everything here is recomputed independently (backward() on a copy, the projection in closed form,
Adam's v from the recorded gradient)."""

from __future__ import annotations

import copy

import pytest
import torch

from forgetlab.losses import nll
from forgetlab.registry import build
from forgetlab.train import Loader, TrainContext
from forgetlab.unlearning import build_method
from forgetlab.unlearning.plugins import PLUGINS
from forgetlab.unlearning.plugins.gu_projection import orthonormal_basis, project_out
from tests.helpers import tiny_world

K, SEED, LR, BETA2, EPS = 3, 11, 1e-3, 0.95, 1e-8


def test_projection_is_worked_by_hand():
    basis = orthonormal_basis([torch.tensor([1.0, 0.0, 0.0]), torch.tensor([2.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 0.0])])
    assert len(basis) == 2  # the second vector adds no direction
    projected, removed = project_out(torch.tensor([1.0, 2.0, 3.0]), basis)
    assert projected.tolist() == pytest.approx([0.0, 0.0, 3.0])
    assert removed.tolist() == pytest.approx([1.0, 2.0, 0.0])
    # r = [1, 1, 0], g = [1, 2, 3]; Euclidean: <r,g>/<r,r> = 3/2; M = diag(4, 1, 1): (4 + 2) / (4 + 1) = 6/5
    r, g, m = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 1.0, 1.0])
    assert project_out(g, orthonormal_basis([r]))[0].tolist() == pytest.approx([-0.5, 0.5, 3.0])
    assert project_out(g, orthonormal_basis([r], m), m)[0].tolist() == pytest.approx([-0.2, 0.8, 3.0])


def flat_grads(model) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in model.parameters() if p.requires_grad])


def gradient(model, loss_fn) -> torch.Tensor:
    """backward() on a copy of the model: an independent gradient."""
    twin = copy.deepcopy(model)
    twin.zero_grad(set_to_none=True)
    loss = loss_fn(twin)
    loss.backward()
    return flat_grads(twin), loss.item()


@pytest.mark.parametrize("metric", ["euclidean", "adam"])
@pytest.mark.parametrize("name", ["grad_diff", "grad_ascent"])
def test_a_projected_step_leaves_the_retain_losses_unchanged_to_first_order(name, metric, smoke_data, tiny_model_dir):
    model, pad, forget, retain = tiny_world(smoke_data, tiny_model_dir)
    model.double().train()
    method = build_method({"name": name, "plugins": [{"name": "gu_projection", "k": K, "metric": metric}]})
    plugin = method.plugins[0]
    assert method.loss == plugin.loss  # bound: the loop minimises the plug-in's loss
    plugin.setup(model, TrainContext(total_steps=2, retain=Loader(retain, 4, pad, seed=SEED)))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, BETA2), eps=EPS, weight_decay=0.0)
    forgets, retains = iter(Loader(forget, 4, pad, seed=0)), iter(Loader(retain, 4, pad, seed=1))

    def step(s: int) -> tuple[dict, float]:
        batch = {"forget": next(forgets), "retain": next(retains) if method.uses_retain else None}
        optimizer.zero_grad(set_to_none=True)
        loss, _ = method.loss(model, batch)
        loss.backward()
        plugin.before_step(model, s, optimizer)
        return batch, loss.item()

    step(0)
    g0 = flat_grads(model)  # the first step's gradient: Adam's v after it is (1 - beta2) g0^2
    optimizer.step()
    plugin.after_step(model, 0, optimizer)

    # independently: the retain gradients of the K batches the plug-in draws at step 1 (after K at step 0)
    theirs = iter(Loader(retain, 4, pad, seed=SEED))
    for _ in range(K):
        next(theirs)
    R = torch.stack([gradient(model, lambda m, b=next(theirs): nll(m, b))[0] for _ in range(K)], 1)
    M = 1.0 / (((1 - BETA2) * g0**2 / (1 - BETA2)).sqrt() + EPS) if metric == "adam" else torch.ones_like(g0)
    frozen = copy.deepcopy(model)
    batch, value = step(1)
    g_forget, forget_term = gradient(frozen, lambda m: -nll(m, batch["forget"]))  # both methods: gamma 1
    g_retain, retain_nll = (gradient(frozen, lambda m: nll(m, batch["retain"])) if method.uses_retain
                            else (torch.zeros_like(g_forget), 0.0))  # grad_diff: alpha 1
    expected = g_forget - R @ torch.linalg.solve(R.T @ (M[:, None] * R), R.T @ (M * g_forget))

    after = flat_grads(model)
    forget_part = after - g_retain
    scale = g_forget.norm().item()
    assert torch.allclose(forget_part, expected, rtol=0, atol=1e-8 * scale)
    # the first-order change of each retain loss along the forget part, in the metric: 0
    r_norms = (R.T @ (M[:, None] * R)).diagonal().sqrt()

    def cosines(d):
        return (R.T @ (M * d)) / (r_norms * (d @ (M * d)).sqrt())

    assert cosines(forget_part).abs().max() < 1e-6
    assert cosines(g_forget).abs().max() > 1e-2  # it was not orthogonal before
    # the retain term's contribution is unchanged, and the loss is the method's
    assert torch.allclose(after - expected, g_retain, rtol=0, atol=1e-8 * max(scale, g_retain.norm().item()))
    assert value == pytest.approx(forget_term + retain_nll, rel=1e-12)
    summary = plugin.summary()
    assert summary["gu_projection.rank"] == K
    assert summary.get("gu_projection.euclidean_steps") == (1.0 if metric == "adam" else None)


def test_binding_pass_through_and_checks(smoke_data, tiny_model_dir):
    model, pad, forget, retain = tiny_world(smoke_data, tiny_model_dir)
    method = build_method({"name": "grad_diff", "plugins": [{"name": "gu_projection", "k": 1}]})
    plugin = method.plugins[0]
    plugin.check(method)  # checking again keeps the one binding
    assert method.loss == plugin.loss
    with pytest.raises(ValueError, match="given twice"):
        build_method({"name": "grad_diff", "plugins": ["gu_projection", "gu_projection"]})
    batch = {"forget": next(iter(Loader(forget, 4, pad, seed=0))), "retain": next(iter(Loader(retain, 4, pad, seed=1)))}
    with torch.no_grad():  # before setup, and without gradients, the method's own loss
        assert method.loss(model, batch)[0].item() == type(method).loss(method, model, batch)[0].item()
    with pytest.raises(ValueError, match="not bound to a method"):
        build(PLUGINS, "gu_projection").setup(model, TrainContext(total_steps=1, retain=Loader(retain, 4, pad, seed=1)))


def test_parameters_are_checked():
    for spec, key in [({"k": 0}, "k"), ({"k": -1}, "k"), ({"k": 1.5}, "k"), ({"k": True}, "k"),
                      ({"metric": "riemann"}, "metric"), ({"metric": None}, "metric")]:
        with pytest.raises(ValueError, match=rf"gu_projection\.{key}"):
            build_method({"name": "npo", "plugins": [{"name": "gu_projection", **spec}]})
