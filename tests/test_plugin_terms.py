"""plugins.terms: the forget/retain split of a method's loss that wagle and gu_projection rely on,
checked on the real methods: the two parts' gradients add up to the loss's, the value is the loss's,
the forget part is the loss with the retain weight set to 0, and a repeated call leaves the
method's state as it was."""

from __future__ import annotations

import copy

import pytest
import torch

from forgetlab.train import Loader, TrainContext
from forgetlab.unlearning import build_method
from forgetlab.unlearning.plugins.terms import gradient_only_of, loss_with_gradient_of
from tests.helpers import tiny_world

METHODS = [{"name": "npo"}, {"name": "grad_diff"}, {"name": "grad_diff", "retain_loss": "kl"}, {"name": "rmu"},
           {"name": "pdu"}, {"name": "simnpo"}, {"name": "satimp"}, {"name": "wga"}, {"name": "grad_ascent"}]


def world(smoke_data, tiny_model_dir, spec):
    model, pad, forget, retain = tiny_world(smoke_data, tiny_model_dir)
    model.double()  # so that sums of gradients compare to 1e-10
    method = build_method(spec)
    method.reference = copy.deepcopy(model).eval().requires_grad_(False)
    ctx = TrainContext(total_steps=4, forget=Loader(forget, 4, pad, seed=5), retain=Loader(retain, 4, pad, seed=6))
    model = method.setup(model, ctx)
    # a trained-looking model, so that the reference-based terms (npo, kl, rmu's retain) have gradients
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype))
    batch = {"forget": next(iter(Loader(forget, 4, pad, seed=1))),
             "retain": next(iter(Loader(retain, 4, pad, seed=2))) if method.uses_retain else None}
    return model, method, batch


def grads(loss, params) -> torch.Tensor:
    gs = torch.autograd.grad(loss, params, allow_unused=True) if loss.requires_grad else [None] * len(params)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(gs, params)])


@pytest.mark.parametrize("spec", METHODS, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_the_forget_and_retain_gradients_add_up_to_the_loss_gradient(spec, smoke_data, tiny_model_dir):
    model, method, batch = world(smoke_data, tiny_model_dir, spec)
    params = [p for p in model.parameters() if p.requires_grad]
    state = copy.deepcopy(method.state_dict())
    total, _ = method.loss(model, batch)
    g_total = grads(total, params)
    after_one_call = copy.deepcopy(method.state_dict())
    method.load_state_dict(copy.deepcopy(state))
    forget, _ = loss_with_gradient_of(method, model, batch, "forget", restore=True)
    assert method.state_dict() == state  # the extra evaluation left no trace (e.g. pdu's retain sum)
    retain, _ = loss_with_gradient_of(method, model, batch, "retain")
    assert method.state_dict() == after_one_call
    assert forget.item() == pytest.approx(total.item(), rel=1e-12)
    assert retain.item() == pytest.approx(total.item(), rel=1e-12)
    g_forget, g_retain = grads(forget, params), grads(retain, params)
    assert torch.allclose(g_forget + g_retain, g_total, rtol=0, atol=1e-10 * g_total.norm().item())
    assert g_forget.norm() > 0
    if method.uses_retain:
        assert g_retain.norm() > 1e-3 * g_forget.norm()  # both parts are there: the split is not trivial


@pytest.mark.parametrize("name", ["npo", "grad_diff"])
def test_the_forget_part_is_the_loss_without_its_retain_term(name, smoke_data, tiny_model_dir):
    model, method, batch = world(smoke_data, tiny_model_dir, {"name": name})
    params = [p for p in model.parameters() if p.requires_grad]
    g_forget = grads(loss_with_gradient_of(method, model, batch, "forget")[0], params)
    method.alpha = 0.0  # the retain weight of both
    g_expected = grads(method.loss(model, batch)[0], params)
    assert torch.allclose(g_forget, g_expected, rtol=0, atol=1e-12 * g_expected.norm().item())


def test_passes_are_told_apart_by_their_input_ids(smoke_data, tiny_model_dir):
    model, method, batch = world(smoke_data, tiny_model_dir, {"name": "grad_diff"})
    with pytest.raises(ValueError, match="term must be one of"):
        loss_with_gradient_of(method, model, batch, "both")
    with pytest.raises(ValueError, match="shares its input_ids"):
        loss_with_gradient_of(method, model, {"forget": batch["forget"], "retain": batch["forget"]}, "forget")
    ids = batch["retain"]["input_ids"]
    with gradient_only_of(model, ids, "forget"):
        assert not model(input_ids=ids).logits.requires_grad
        assert model(input_ids=batch["forget"]["input_ids"]).logits.requires_grad
        assert torch.is_grad_enabled()
    with gradient_only_of(model, ids, "retain"):
        assert model(input_ids=ids).logits.requires_grad
        assert not model(input_ids=batch["forget"]["input_ids"]).logits.requires_grad
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())  # all removed
