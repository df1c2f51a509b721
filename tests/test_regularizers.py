"""Regularizer mechanisms, checked on the mechanism itself rather than on a falling loss."""

from __future__ import annotations

import pytest
import torch

from forgetlab.model import load_model
from forgetlab.regularizers import REGULARIZERS, build_regularizers


def test_registry_holds_none_and_dropout():
    assert {"none", "dropout"} <= set(REGULARIZERS.names())


def _mlp_outputs(model, ids):
    seen = []
    handle = model.model.layers[0].mlp.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    model(input_ids=ids)
    handle.remove()
    return seen[-1]


def test_residual_dropout_zeroes_and_rescales_the_branch(tiny_model_dir):
    """Each MLP branch output is either 0 or h / (1 - p), with about a fraction p zeroed."""
    p = 0.5
    model = load_model(tiny_model_dir)
    ids = torch.randint(4, 200, (4, 32), generator=torch.Generator().manual_seed(0))
    model.eval()
    clean = model.model.layers[0].mlp(model.model.embed_tokens(ids))  # reference branch output, no hooks
    (reg,) = build_regularizers([{"name": "dropout", "attention": 0.0, "residual": p}])
    reg.setup(model, None)
    model.train()
    # feed the same input to the hooked MLP directly so only the dropout differs
    out = model.model.layers[0].mlp(model.model.embed_tokens(ids))
    kept = out != 0
    assert torch.allclose(out[kept], clean[kept] / (1 - p), atol=1e-6)
    assert 0.4 < 1 - kept.float().mean().item() < 0.6
    # attention dropout is set on every layer while training ...
    assert all(layer.self_attn.attention_dropout == 0.0 for layer in model.model.layers)
    reg.finalize(model)
    # ... and after finalize the hooks are gone: the branch is deterministic again
    assert torch.equal(model.model.layers[0].mlp(model.model.embed_tokens(ids)), clean)


def test_attention_dropout_is_set_and_undone(tiny_model_dir):
    model = load_model(tiny_model_dir)
    (reg,) = build_regularizers([{"name": "dropout", "attention": 0.2, "residual": 0.0}])
    reg.setup(model, None)
    assert all(layer.self_attn.attention_dropout == 0.2 for layer in model.model.layers)
    reg.finalize(model)
    assert all(layer.self_attn.attention_dropout == 0.0 for layer in model.model.layers)


def test_dropout_rate_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="dropout.residual"):
        build_regularizers([{"name": "dropout", "residual": 1.0}])


def test_none_leaves_the_model_unchanged(tiny_model_dir):
    model = load_model(tiny_model_dir).train()
    ids = torch.randint(4, 200, (2, 16), generator=torch.Generator().manual_seed(1))
    before = model(input_ids=ids).logits
    (reg,) = build_regularizers([{"name": "none"}])
    reg.setup(model, None)
    assert torch.equal(model(input_ids=ids).logits, before)
