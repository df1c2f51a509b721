"""distributed.strategy fsdp on the CPU with gloo (FSDP2, torch.distributed.fsdp.fully_shard): two
workers hold half of each weight and take the steps of one process; a run resumes bit-identical
from its checkpoint of full state dicts; an unlearning method's frozen reference is sharded too;
the saved model is the plain save_pretrained checkpoint; and the config switch runs an unlearn
job as torchrun workers with one MLflow run and one output.

The two-worker weights are allclose to the one-process weights, not bit-equal: FSDP's
reduce-scatter adds the two halves' gradients in another order than one batch's backward does
(float addition is not associative); AdamW then acts elementwise on each shard, as on the whole."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from forgetlab import distributed
from forgetlab.checkpoint import Checkpointer
from forgetlab.losses import lm_loss
from forgetlab.model import checkpointing, load_model, load_tokenizer, save_model
from forgetlab.train import Loader, TrainConfig, paired, seed_everything, train
from forgetlab.unlearning import build_method
from tests.helpers import cli_env, command, finished_run, free_port


def fsdp_available() -> bool:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401  (FSDP2: torch >= 2.6)
    except ImportError:
        return False
    return torch.distributed.is_available() and torch.distributed.is_gloo_available()


pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not fsdp_available(),
                                 reason="torch.distributed.fsdp.fully_shard (FSDP2) with gloo is not available in this torch")]

STEPS, BATCH = 6, 8
NPO = {"name": "npo", "beta": 0.1, "gamma": 1.0, "alpha": 1.0}


def tiny_llama() -> LlamaForCausalLM:
    """Two decoder layers (two FSDP units besides the root), tied embeddings as forgetlab's models."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def examples(seed: int, n: int = 24) -> list[dict]:
    """Sequences of 10 tokens, all supervised: each rank's token mean weighs its tokens as the
    one-process batch mean does (see tests/test_distributed.py)."""
    ids = torch.randint(0, 64, (n, 10), generator=torch.Generator().manual_seed(seed)).tolist()
    return [{"input_ids": x, "labels": x} for x in ids]


def finetune(strategy: str, checkpoint: Checkpointer | None = None, every: int = 0, recompute: bool = False):
    seed_everything(0)
    cfg = TrainConfig(epochs=1, batch_size=BATCH, lr=1e-2, max_steps=STEPS, warmup_ratio=0.0, grad_accum=2,
                      checkpoint_every=every)
    loader = Loader(examples(1), BATCH, pad_id=0, seed=0)
    model = checkpointing(tiny_llama(), {"model_switches": {"gradient_checkpointing": recompute}})
    return train(model, lm_loss, iter(loader), STEPS, cfg, checkpoint=checkpoint, strategy=strategy)


def unlearn(strategy: str):
    seed_everything(0)
    method = build_method(NPO)
    method.reference = tiny_llama().eval().requires_grad_(False)
    cfg = TrainConfig(epochs=1, batch_size=BATCH, lr=1e-3, max_steps=4, warmup_ratio=0.0)
    forget = Loader([{"forget": e} for e in examples(2)], BATCH, pad_id=0, seed=0)
    retain = Loader(examples(3), BATCH, pad_id=0, seed=1)
    model = train(tiny_llama(), method.loss, paired(forget, retain), 4, cfg, hooks=[method], strategy=strategy)
    return model, method


def full(model) -> dict:
    """The full weights (a collective under fsdp: every rank calls it; rank 0 gets them)."""
    return {k: v.detach().clone() for k, v in distributed.model_state(model).items()}


def worker(rank: int, world: int, port: int, outdir: str, tokenizer_dir: str) -> None:
    """Every scenario in one pair of workers (starting processes is what costs here)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    out = Path(outdir)
    try:
        model = finetune("fsdp")
        local = model.model.layers[0].mlp.up_proj.weight.to_local().shape  # this rank's shard
        weights = full(model)
        recomputed = full(finetune("fsdp", recompute=True))  # gradient checkpointing inside the FSDP units
        if rank == 0:
            torch.save({"weights": weights, "shard": tuple(local), "sharded": distributed.sharded(model),
                        "recomputed": recomputed}, out / "finetune.pt")

        ckpt = lambda: Checkpointer(out / "ckpt" / "state.pt", every=3)  # noqa: E731
        first = full(finetune("fsdp", ckpt(), every=3))  # leaves its step-3 checkpoint behind
        resumed = full(finetune("fsdp", ckpt(), every=3))  # resumes from it
        if rank == 0:
            torch.save({"first": first, "resumed": resumed}, out / "resume.pt")

        model, method = unlearn("fsdp")
        weights = full(model)
        if rank == 0:
            torch.save({"weights": weights, "reference_sharded": distributed.sharded(method.reference)},
                       out / "unlearn.pt")

        save_model(model, load_tokenizer(tokenizer_dir), out / "saved")
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    mp.spawn(worker, args=(2, free_port(), str(out), str(tiny_model_dir)), nprocs=2, join=True)
    return out


def test_two_fsdp_workers_shard_the_weights_and_take_the_steps_of_one_process(fsdp_runs):
    single = finetune("fsdp").state_dict()  # one process: no group, so a plain run
    run = torch.load(fsdp_runs / "finetune.pt")
    assert run["sharded"]
    assert run["shard"] == (16, 16), "up_proj is 32 x 16: each of the two ranks holds 16 of its rows"
    assert run["weights"].keys() == single.keys()
    for name, w in single.items():
        torch.testing.assert_close(run["weights"][name], w, rtol=1e-4, atol=1e-5, msg=f"{name} differs from one process")
    moved = sum(float((single[n] - tiny_llama().state_dict()[n]).abs().sum()) for n in single)
    assert moved > 0.1, "the run must actually train, or the comparison says nothing"


def test_gradient_checkpointing_under_fsdp_trains_to_the_same_weights(fsdp_runs):
    run = torch.load(fsdp_runs / "finetune.pt")
    for name, w in run["weights"].items():  # the recomputed forward is the same computation
        torch.testing.assert_close(run["recomputed"][name], w, rtol=1e-6, atol=1e-7, msg=name)


def test_an_fsdp_run_resumes_bit_identical_from_full_state_dicts(fsdp_runs):
    runs = torch.load(fsdp_runs / "resume.pt")
    for name, w in runs["first"].items():
        assert torch.equal(runs["resumed"][name], w), f"{name}: the resumed run differs from the uninterrupted one"
    state = torch.load(fsdp_runs / "ckpt" / "state.pt", weights_only=True)
    assert state["step"] == 3
    plain = tiny_llama().state_dict()
    assert {k: v.shape for k, v in state["model"].items()} == {k: v.shape for k, v in plain.items()}, \
        "the checkpoint holds the full (unsharded) weights"
    assert len(state["rng_ranks"]) == 2


def test_an_unlearning_method_s_reference_is_sharded_and_the_run_matches_one_process(fsdp_runs):
    model, _ = unlearn("fsdp")
    single = model.state_dict()
    run = torch.load(fsdp_runs / "unlearn.pt")
    assert run["reference_sharded"]
    for name, w in single.items():
        torch.testing.assert_close(run["weights"][name], w, rtol=1e-4, atol=1e-5, msg=f"{name} differs from one process")


def test_a_sharded_model_is_saved_as_the_plain_save_pretrained_checkpoint(fsdp_runs, tiny_model_dir, tmp_path):
    model, _ = unlearn("fsdp")  # the same weights, unsharded (up to the float order checked above)
    save_model(model, load_tokenizer(tiny_model_dir), tmp_path / "plain")
    saved, plain = load_file(fsdp_runs / "saved" / "model.safetensors"), load_file(tmp_path / "plain" / "model.safetensors")
    assert saved.keys() == plain.keys(), "the same tensors as a plain save (tied weights once)"
    for name in plain:
        torch.testing.assert_close(saved[name], plain[name], rtol=1e-4, atol=1e-5)
    config = json.loads((fsdp_runs / "saved" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    reloaded = load_model(fsdp_runs / "saved")
    assert torch.equal(reloaded.lm_head.weight, reloaded.model.embed_tokens.weight)


FSDP = {"distributed": {"nproc_per_node": 2, "backend": "gloo", "strategy": "fsdp"}}


def test_the_config_switch_runs_an_unlearn_job_as_fsdp_workers(smoke_data, tiny_model_dir, tmp_path):
    env = cli_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'm.db'}")
    out = tmp_path / "out"
    cmd = command("unlearn", NPO, {"max_steps": 4, "eval_every": 2}, tiny_model_dir, smoke_data, out, extra=FSDP)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "launching 2 data-parallel workers" in proc.stderr
    assert (out / "model.safetensors").exists() and (out / "trajectory.csv").exists()
    client, run = finished_run(tmp_path / "m.db")  # exactly one run: rank 0's
    assert run.data.params["distributed.strategy"] == "fsdp"
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 4
    assert run.data.metrics["peak_rss_mb"] > 0  # rank 0's peak memory (forgetlab.memory)
    record = json.loads((out / "job.json").read_text())
    assert record["resources"]["peak_rss_mb"] == run.data.metrics["peak_rss_mb"]
    assert "peak_rss_mb" not in record["metrics"], "not among the aggregates that forgetlab verify compares"
    assert json.loads((out / "forgetlab_stage.json").read_text())["distributed"]["strategy"] == "fsdp"
