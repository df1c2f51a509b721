"""task_vector: the loop fine-tunes on forget, finalize returns theta_ref - alpha (theta_ft - theta_ref)."""

import copy

import pytest
import torch

from forgetlab.hooks import Hooks
from forgetlab.losses import nll
from forgetlab.model import load_model
from forgetlab.qa import IGNORE, collate
from forgetlab.train import Loader, TrainConfig, TrainContext, paired, train
from forgetlab.unlearning import build_method
from forgetlab.unlearning.plugins import Plugin

PAD = 0


def examples(n: int, seed: int, vocab: int = 100) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(3, vocab, (6 + i % 3,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE] * 3 + ids[3:]})
    return out


class Snapshot(Hooks):
    """Copies the parameters after every optimizer step: the last copy is theta_ft."""

    def after_step(self, model, step, optimizer):
        self.params = {k: p.detach().clone() for k, p in model.named_parameters()}


def with_params(model, params):
    """A throwaway copy of the model holding `params`."""
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for k, p in clone.named_parameters():
            p.copy_(params[k])
    return clone


@pytest.mark.parametrize("alpha", [1.0, 0.7])
def test_finalize_subtracts_the_scaled_task_vector(tiny_model_dir, alpha):
    model, target = load_model(tiny_model_dir), load_model(tiny_model_dir).eval().requires_grad_(False)
    theta_ref = {k: p.detach().clone() for k, p in target.named_parameters()}
    method = build_method({"name": "task_vector", "alpha": alpha})
    assert method.needs_reference and not method.accepts_plugins
    method.reference = target
    snapshot = Snapshot()
    forget = collate(examples(4, 0), PAD)
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-2, max_steps=3, warmup_ratio=0.0, min_lr_ratio=1.0)
    model = train(model, method.loss, paired(Loader(examples(4, 0), 4, PAD, seed=0), None), 3, cfg,
                  hooks=[method, snapshot], context=TrainContext(total_steps=3))
    theta_ft = snapshot.params
    with torch.no_grad():  # the loop descended on forget: theta_ft fits it better than the target
        assert nll(with_params(model, theta_ft), forget) < nll(target, forget)
    final = dict(model.named_parameters())
    assert final.keys() == theta_ref.keys()
    assert any(not torch.equal(theta_ft[k], theta_ref[k]) for k in theta_ref)
    for k, ref in theta_ref.items():
        expected = ref - alpha * (theta_ft[k] - ref)
        assert torch.allclose(final[k], expected, atol=1e-6, rtol=0), k
    # the tied output embedding follows the input embedding
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    # the frozen target itself is untouched
    assert all(torch.equal(p, theta_ref[k]) for k, p in target.named_parameters())


def test_alpha_zero_returns_the_target_exactly(tiny_model_dir):
    model, target = load_model(tiny_model_dir), load_model(tiny_model_dir).requires_grad_(False)
    with torch.no_grad():  # stand-in for fine-tuned weights
        g = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    method = build_method({"name": "task_vector", "alpha": 0.0})
    method.reference = target
    model = method.finalize(model)
    ref = dict(target.named_parameters())
    assert all(torch.equal(p, ref[k]) for k, p in model.named_parameters())


def test_task_vector_loss_is_the_forget_nll(tiny_model_dir):
    model = load_model(tiny_model_dir)
    forget = collate(examples(3, 2), PAD)
    loss, parts = build_method({"name": "task_vector"}).loss(model, {"forget": forget, "retain": None})
    assert loss.item() == pytest.approx(nll(model, forget).item(), rel=1e-6)
    assert parts["forget_nll"] == pytest.approx(loss.item())


def test_task_vector_refuses_plugins_and_needs_a_reference():
    method = build_method({"name": "task_vector"})
    with pytest.raises(ValueError, match="cannot apply to task_vector"):
        Plugin().check(method)
    with pytest.raises(ValueError, match="task_vector.finalize needs"):
        method.finalize(torch.nn.Linear(2, 2))


def test_task_vector_range_checks():
    with pytest.raises(ValueError, match="task_vector.alpha"):
        build_method({"name": "task_vector", "alpha": -1.0})
