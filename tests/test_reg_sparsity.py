"""sparsity: Zhu & Gupta's cubic schedule by hand, and a real run that ends at the target with
pruned entries held at exactly zero."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from forgetlab.losses import lm_loss
from forgetlab.model import load_model, load_tokenizer
from forgetlab.qa import encode_qa
from forgetlab.recipes import read_jsonl
from forgetlab.regularizers import build_regularizers
from forgetlab.regularizers.sparsity import cubic_sparsity
from forgetlab.train import Loader, TrainConfig, TrainContext, train


def test_cubic_schedule_by_hand():
    # s_t = 0.5 * (1 - (1 - t/10)^3) over [0, 10]
    assert cubic_sparsity(-1, 0, 10, 0.5) == 0.0
    assert cubic_sparsity(0, 0, 10, 0.5) == 0.0
    assert cubic_sparsity(5, 0, 10, 0.5) == pytest.approx(0.5 * (1 - 0.5**3))  # 0.4375
    assert cubic_sparsity(9, 0, 10, 0.5) == pytest.approx(0.5 * (1 - 0.1**3))  # 0.4995
    assert cubic_sparsity(4, 2, 6, 0.8) == pytest.approx(0.8 * (1 - 0.5**3))  # 0.7
    assert cubic_sparsity(10, 0, 10, 0.5) == 0.5
    assert cubic_sparsity(30, 0, 10, 0.5) == 0.5


def test_steps_that_recompute_the_masks(tiny_model_dir):
    (reg,) = build_regularizers([{"name": "sparsity", "start": 0.1, "end": 0.75, "every": 3}])
    reg.setup(load_model(tiny_model_dir), TrainContext(total_steps=20))
    assert (reg._t0, reg._t1) == (2, 15)  # floor(0.1 * 20), floor(0.75 * 20)
    assert [t for t in range(20) if reg.updates_at(t)] == [2, 5, 8, 11, 14, 15]


def test_real_run_reaches_the_target_and_keeps_pruned_weights_at_zero(smoke_data, tiny_model_dir):
    torch.manual_seed(0)
    tokenizer = load_tokenizer(tiny_model_dir)
    rows = read_jsonl(smoke_data / "qa" / "full.jsonl")[:32]
    examples = [encode_qa(tokenizer, r["question"], r["answer"]) for r in rows]
    loader = Loader(examples, 8, tokenizer.pad_token_id, seed=0)
    model = load_model(tiny_model_dir)
    steps = 10  # t0 = 0, t1 = floor(0.6 * 10) = 6: masks recomputed after steps 0, 2, 4, 6
    (reg,) = build_regularizers([{"name": "sparsity", "target": 0.5, "start": 0.0, "end": 0.6, "every": 2}])
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-2, warmup_ratio=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    zeros_seen = []
    inner = reg.after_step

    def recording_after_step(model, step, optimizer):
        inner(model, step, optimizer)
        zeros_seen.append([(w == 0).clone() for w in reg._weights])

    reg.after_step = recording_after_step
    model = train(model, partial(lm_loss, regularizers=[reg]), iter(loader), steps, cfg, hooks=[reg])

    layers = model.model.layers
    pruned = [w for layer in layers for w in (
        layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight, layer.self_attn.v_proj.weight,
        layer.self_attn.o_proj.weight, layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight, layer.mlp.down_proj.weight)]
    assert len(pruned) == 7 * len(layers) and [id(w) for w in pruned] == [id(w) for w in reg._weights]
    for w in pruned:
        assert abs(float((w == 0).sum()) - 0.5 * w.numel()) <= 1
    assert reg.summary()["sparsity"] == pytest.approx(0.5, abs=1e-3) and reg.summary()["target"] == 0.5
    # pruned entries stayed exactly zero at every later step, and the pruned set only grew
    for earlier, later in zip(zeros_seen, zeros_seen[1:]):
        for a, b in zip(earlier, later):
            assert bool((b | ~a).all())
    # sparsity after step 0 is 0 (s_0 = 0), after step 2 it is 0.5 * (1 - (2/3)^3), after step 6 the target
    w0 = reg._weights[0]
    assert int(zeros_seen[0][0].sum()) == 0
    assert int(zeros_seen[2][0].sum()) == round(0.5 * (1 - (2 / 3) ** 3) * w0.numel())
    assert int(zeros_seen[6][0].sum()) == round(0.5 * w0.numel())
    # the unpruned parts trained, embeddings and norms were never pruned
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, before["model.layers.0.mlp.up_proj.weight"])
    assert int((model.model.embed_tokens.weight == 0).sum()) == 0
    assert int((model.model.layers[0].input_layernorm.weight == 0).sum()) == 0


@pytest.mark.parametrize(
    "params,match",
    [({"target": 1.0}, "sparsity.target"), ({"start": 0.5, "end": 0.5}, "sparsity.start"),
     ({"end": 1.5}, "sparsity.end"), ({"every": 0}, "sparsity.every")],
)
def test_out_of_range_is_rejected(params, match):
    with pytest.raises(ValueError, match=match):
        build_regularizers([{"name": "sparsity", **params}])
