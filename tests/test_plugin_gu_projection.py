"""gu_projection: after before_step the gradient is g - Q Q^T g for an orthonormal basis Q of k
retain gradients computed here independently, orthogonal to each of them; a gradient already
orthogonal to them is left unchanged."""

from __future__ import annotations

import copy

import pytest
import torch

from forgetlab.losses import nll
from forgetlab.train import Loader, TrainContext
from forgetlab.unlearning import build_method
from forgetlab.unlearning.plugins import build_plugin
from forgetlab.unlearning.plugins.gu_projection import orthonormal_basis, project_out
from tests.test_plugin_saliency import tiny_world

K, SEED = 3, 11


def test_projection_is_worked_by_hand():
    basis = orthonormal_basis([torch.tensor([1.0, 0.0, 0.0]), torch.tensor([2.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 0.0])])
    assert len(basis) == 2  # the second vector adds no direction
    projected, removed = project_out(torch.tensor([1.0, 2.0, 3.0]), basis)
    assert projected.tolist() == pytest.approx([0.0, 0.0, 3.0])
    assert removed.tolist() == pytest.approx([1.0, 2.0, 0.0])


def grads_of(params) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]).double()


def independent_retain_gradients(model, retain, pad) -> torch.Tensor:
    """(d, K): the retain-NLL gradients the plug-in will draw, by backward() on a copy of the model."""
    twin = copy.deepcopy(model)
    params = [p for p in twin.parameters() if p.requires_grad]
    batches, cols = iter(Loader(retain, 4, pad, seed=SEED)), []
    for _ in range(K):
        twin.zero_grad(set_to_none=True)
        nll(twin, next(batches)).backward()
        cols.append(grads_of(params))
    return torch.stack(cols, 1)


def setup_case(smoke_data, tiny_model_dir):
    model, pad, forget, retain = tiny_world(smoke_data, tiny_model_dir)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    R = independent_retain_gradients(model, retain, pad)
    plugin = build_plugin({"name": "gu_projection", "k": K})
    plugin.setup(model, TrainContext(total_steps=1, retain=Loader(retain, 4, pad, seed=SEED)))
    return model, params, plugin, R, forget, pad


def test_gradient_is_projected_off_the_retain_gradients(smoke_data, tiny_model_dir):
    model, params, plugin, R, forget, pad = setup_case(smoke_data, tiny_model_dir)
    (-nll(model, next(iter(Loader(forget, 4, pad, seed=0))))).backward()  # grad_ascent's gradient
    g = grads_of(params)
    plugin.before_step(model, 0, None)
    after = grads_of(params)

    Q = torch.linalg.qr(R).Q
    expected = g - Q @ (Q.T @ g)
    assert torch.allclose(after, expected, rtol=0, atol=1e-5 * g.norm().item())
    cosines = (R.T @ after) / (R.norm(dim=0) * after.norm())
    assert cosines.abs().max() < 1e-5
    assert (R.T @ g / (R.norm(dim=0) * g.norm())).abs().max() > 1e-2  # it was not orthogonal before
    removed = (Q @ (Q.T @ g)).norm() / g.norm()
    assert plugin.summary() == pytest.approx({"gu_projection.removed_fraction": removed.item(),
                                              "gu_projection.rank": float(K)}, rel=1e-4)


def test_a_gradient_orthogonal_to_the_retain_gradients_is_unchanged(smoke_data, tiny_model_dir):
    model, params, plugin, R, forget, pad = setup_case(smoke_data, tiny_model_dir)
    (-nll(model, next(iter(Loader(forget, 4, pad, seed=0))))).backward()
    Q = torch.linalg.qr(R).Q
    g = grads_of(params)
    g = g - Q @ (Q.T @ g)  # made orthogonal to the K retain gradients here, by hand
    offset = 0
    for p in params:
        p.grad.copy_(g[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    before = grads_of(params)
    plugin.before_step(model, 0, None)
    assert torch.allclose(grads_of(params), before, rtol=0, atol=1e-6 * before.norm().item())
    assert plugin.summary()["gu_projection.removed_fraction"] < 1e-5


def test_k_is_checked():
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"gu_projection\.k"):
            build_method({"name": "npo", "plugins": [{"name": "gu_projection", "k": k}]})
