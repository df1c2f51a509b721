"""weight_decay: AdamW groups (matrices decayed; norms, biases, optionally the embedding not) and
the decoupled update w <- w * (1 - lr * coef) checked on a zero-gradient step."""

from __future__ import annotations

import pytest
import torch

from forgetlab.model import load_model
from forgetlab.regularizers import build_regularizers
from forgetlab.train import TrainConfig, train


def _groups(model, **params):
    (reg,) = build_regularizers([{"name": "weight_decay", **params}])
    trainable = [p for p in model.parameters() if p.requires_grad]
    return reg.param_groups(model, [{"params": trainable, "weight_decay": 0.0}])


@pytest.mark.parametrize("exclude", [False, True])
def test_groups_split_matrices_from_norms_and_embedding(tiny_model_dir, exclude):
    model = load_model(tiny_model_dir)
    emb = model.model.embed_tokens.weight
    assert model.lm_head.weight is emb  # tied: one Parameter, must land in exactly one group
    groups = _groups(model, coef=0.1, exclude_embeddings=exclude)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    decayed = {id(p) for g in groups if g["weight_decay"] == 0.1 for p in g["params"]}
    plain = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    for name, p in model.named_parameters():
        if p.ndim < 2 or (exclude and p is emb):
            assert id(p) in plain, name
        else:
            assert id(p) in decayed, name
    assert (id(emb) in plain) == exclude
    assert id(model.model.layers[0].input_layernorm.weight) in plain
    assert id(model.model.layers[0].mlp.up_proj.weight) in decayed


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([[2.0, -3.0]]))  # a weight matrix: decayed
        self.norm = torch.nn.Parameter(torch.tensor([1.5]))  # a norm weight: not decayed


def test_one_adamw_step_with_zero_gradient_shrinks_only_the_matrix():
    lr, coef = 0.1, 0.25
    model = _Tiny()
    w0, n0 = model.w.detach().clone(), model.norm.detach().clone()
    (reg,) = build_regularizers([{"name": "weight_decay", "coef": coef}])
    cfg = TrainConfig(epochs=1, batch_size=1, lr=lr, warmup_ratio=0.0, weight_decay=0.0)

    def loss_fn(m, b):  # a loss with exactly zero gradient: only the decay moves the weights
        return (m.w * 0).sum() + (m.norm * 0).sum(), {}

    train(model, loss_fn, iter([{}]), steps=1, cfg=cfg, hooks=[reg])
    assert torch.equal(model.w.detach(), w0 * (1 - lr * coef))
    assert torch.allclose(model.w.detach(), torch.tensor([[2.0 * 0.975, -3.0 * 0.975]]))
    assert torch.equal(model.norm.detach(), n0)


def test_negative_coef_is_rejected():
    with pytest.raises(ValueError, match="weight_decay.coef"):
        build_regularizers([{"name": "weight_decay", "coef": -0.1}])
