"""Data-parallel training (forgetlab.distributed) on the CPU with gloo: two workers take the same
steps as one process, a `distributed.nproc_per_node` study config launches them through torchrun
with one MLflow run and one output, and a SIGTERM'd data-parallel job resumes bit-identical."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from transformers import LlamaConfig, LlamaForCausalLM

from forgetlab import distributed
from forgetlab.config import ConfigError, validate_schema
from forgetlab.losses import lm_loss
from forgetlab.train import Loader, TrainConfig, seed_everything, train
from tests.helpers import (
    assert_same_history,
    assert_same_weights,
    cli_env,
    command,
    finished_run,
    free_port,
    interrupted,
    smoke_config,
)

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                 reason="torch.distributed with gloo is not available")]

STEPS, BATCH = 6, 8


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(cfg)


def equal_length_examples() -> list[dict]:
    """24 sequences of 10 tokens, every token supervised: each rank's token mean then weighs its
    tokens exactly as the one-process batch mean does, so the mean of the ranks' gradients is the
    one-process gradient (up to the order of float additions)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (24, 10), generator=g).tolist()
    return [{"input_ids": x, "labels": x} for x in ids]


def train_tiny(out: Path) -> None:
    seed_everything(0)
    model = tiny_llama()
    cfg = TrainConfig(epochs=1, batch_size=BATCH, lr=1e-2, max_steps=STEPS, warmup_ratio=0.0)
    loader = Loader(equal_length_examples(), BATCH, pad_id=0, seed=0)
    model = train(model, lm_loss, iter(loader), STEPS, cfg)
    torch.save(model.state_dict(), out)


def worker(rank: int, world: int, port: int, outdir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        train_tiny(Path(outdir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_two_workers_take_the_steps_of_one_process(tmp_path):
    train_tiny(tmp_path / "single.pt")
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    single = torch.load(tmp_path / "single.pt")
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for name, w in single.items():
        assert torch.equal(rank0[name], rank1[name]), f"{name}: the replicas drifted apart"
        # not bit-equal: the all-reduce adds the halves' gradients in another order than one batch does
        torch.testing.assert_close(rank0[name], w, rtol=1e-4, atol=1e-5, msg=f"{name} differs from one process")
    moved = sum(float((single[n] - tiny_llama().state_dict()[n]).abs().sum()) for n in single)
    assert moved > 0.1, "the run must actually train, or the comparison says nothing"


def test_shard_splits_a_batch_among_ranks_and_never_leaves_one_empty(monkeypatch):
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    shares = {}
    for r in range(3):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shares[r] = (distributed.shard([10, 11, 12, 13, 14, 15, 16]), distributed.shard([20, 21]))
    assert [shares[r][0] for r in range(3)] == [[10, 13, 16], [11, 14], [12, 15]]
    assert [shares[r][1] for r in range(3)] == [[20], [21], [21]]  # the short last batch: rank 2 repeats 21


def test_a_bad_distributed_section_is_rejected_naming_the_key():
    config = smoke_config()
    config["distributed"] = {"nproc_per_node": 0}
    with pytest.raises(ConfigError, match="distributed.nproc_per_node"):
        validate_schema(config)
    config["distributed"] = {"nproc_per_node": 2, "backend": "mpi"}
    with pytest.raises(ConfigError, match="distributed.backend"):
        validate_schema(config)


DDP = {"distributed": {"nproc_per_node": 2, "backend": "gloo"}}


def ddp_finetune(model: Path, data: Path, out: Path, **train) -> list[str]:
    """The command of a data-parallel finetune job (2 gloo workers)."""
    return command("finetune", [{"name": "dropout"}], train, model, data, out, extra=DDP)


DDP_STEPS = 120


@pytest.fixture(scope="module")
def ddp_run(smoke_data, tiny_model_dir, tmp_path_factory):
    """An uninterrupted data-parallel finetune job: the config switch's run, and the reference of the resumed one."""
    tmp = tmp_path_factory.mktemp("ddp")
    proc = subprocess.run(ddp_finetune(tiny_model_dir, smoke_data, tmp / "out", max_steps=DDP_STEPS), cwd=tmp,
                          env=cli_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'm.db'}"), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, proc


def test_the_config_switch_launches_workers_with_one_run_and_one_output(ddp_run):
    tmp, proc = ddp_run
    out = tmp / "out"
    assert "launching 2 data-parallel workers" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.json", "forgetlab_stage.json", "generation_config.json",
                                                          "job.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
    client, run = finished_run(tmp / "m.db")  # exactly one run: rank 0's
    assert run.data.params["distributed.nproc_per_node"] == "2"
    assert len(client.get_metric_history(run.info.run_id, "loss")) == DDP_STEPS  # the global batch: one-process steps
    assert json.loads((out / "forgetlab_stage.json").read_text())["distributed"]["nproc_per_node"] == 2


def test_a_sigtermed_data_parallel_job_resumes_bit_identical(ddp_run, smoke_data, tiny_model_dir, tmp_path):
    reference, _ = ddp_run
    env = cli_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'm.db'}")
    cmd = ddp_finetune(tiny_model_dir, smoke_data, tmp_path / "out", max_steps=DDP_STEPS, checkpoint_every=40)
    steps = interrupted(cmd, tmp_path, tmp_path / "out", env, [signal.SIGTERM], 40, "finetune target")
    assert 0 < steps[0] < DDP_STEPS
    assert_same_weights(reference / "out", tmp_path / "out")
    run = assert_same_history(reference / "m.db", tmp_path / "m.db")
    assert run.data.tags["resumed_from_step"] == str(steps[0])
