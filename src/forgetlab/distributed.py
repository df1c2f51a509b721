"""Data-parallel training inside one job: the config switch `distributed.nproc_per_node`.

With `distributed: {nproc_per_node: N}` (N > 1) in the study config, each pretrain and finetune
job re-launches itself through torchrun (`torch.distributed.run --standalone`) as N worker
processes on its node: one per GPU on a CUDA machine (rank r uses cuda:r, NCCL), or N CPU
processes (gloo) elsewhere. Nothing else changes: the Snakemake rules, the paths and the outputs
are the same, so a study switches between one process and N by config alone. On SLURM, ask for
the GPUs of the job with `resources.<stage>.gpu: N` (see docs/cluster.md).

What the workers share, and how (forgetlab.train calls these):
* data: every rank draws the same seeded permutation and takes its share of each global batch
  (`shard`: examples r, r+N, ...), so `batch_size` stays the global batch and the step count,
  the learning-rate schedule and the data order are those of a one-process run;
* gradients: after each step's backward, `average_gradients` all-reduces and averages them, so
  every rank takes the same optimizer step and the replicas stay identical. This is what DDP does,
  without wrapping the model: regularizers keep seeing the plain model (LoRA, SWA, sparsity...).
  A loss averaged per rank equals the one-process loss exactly when the ranks hold equally many
  supervised tokens (it is the mean of the ranks' token means otherwise, as in DDP);
* control: a stop request (SIGTERM) or a due checkpoint is agreed by all ranks (`agree`), so they
  stop at the same step boundary; rank 0 writes the checkpoint, with every rank's RNG state, and
  every rank resumes from it;
* exit: the launching process waits for torchrun and exits with its status, or with 143 after a
  SIGTERM (passed on to the workers), like a one-process job;
* output: rank 0 alone logs to MLflow and saves the model; the other ranks' `stage_run` is silent
  and their `atomic_dir` is a throwaway directory.

Unlearning runs in one process: its methods keep data-dependent state (pdu's dual variable,
saliency masks) that would need syncing, and its jobs are short.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

STAGES = ("pretrain", "finetune")
EXIT_PREEMPTED = 143  # a job stopped by SIGTERM after checkpointing: 128 + SIGTERM, so that it is rerun


def nproc(params: dict) -> int:
    """The worker count this stage job asks for (1: no launch)."""
    if params.get("stage") not in STAGES:
        return 1
    return int((params.get("distributed") or {}).get("nproc_per_node", 1))


def in_worker() -> bool:
    """True inside a torchrun worker (torchrun sets LOCAL_RANK and the rendezvous variables)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch(params: dict, argv: list[str]) -> None:
    """Run the same command through torchrun in `nproc(params)` workers, and exit with its status.

    SIGTERM and SIGINT (SLURM's preemption signal, `scancel`, a Snakemake kill) are passed on to
    torchrun, which passes them to the workers: they checkpoint at the step's end and stop. The
    job then exits with 143, as a one-process job does, so that it is rerun and resumes."""
    n = nproc(params)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "forgetlab.cli", *argv]
    print(f"forgetlab: launching {n} data-parallel workers: {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd)
    stopped = []

    def forward(signum, frame):
        stopped.append(signum)
        proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    code = proc.wait()
    sys.exit(EXIT_PREEMPTED if stopped and code != 0 else code)


def setup(params: dict) -> None:
    """Join the process group of a torchrun launch (no-op in a one-process run)."""
    if not in_worker() or torch.distributed.is_initialized():
        return
    backend = (params.get("distributed") or {}).get("backend", "auto")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # forgetlab.model.device() is then this GPU
    torch.distributed.init_process_group(backend)


def active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if active() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def shard(indices: list[int]) -> list[int]:
    """This rank's share of one global batch. A batch smaller than the world (the last one of an
    epoch) gives the ranks without an example its last one again, so no rank idles in the step."""
    if not active():
        return indices
    mine = indices[rank()::world_size()]
    return mine or indices[-1:]


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def average_gradients(params) -> None:
    """All-reduce the gradients of `params` (one flat buffer) and divide by the world size."""
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def mean(value: float) -> float:
    """The mean of a scalar over the ranks (e.g. the logged loss)."""
    if not active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_device())
    torch.distributed.all_reduce(t)
    return float(t.item()) / world_size()


def agree(flag: bool) -> bool:
    """True on every rank if it is True on any rank (e.g. SIGTERM reached one of them)."""
    if not active():
        return flag
    t = torch.tensor([1 if flag else 0], device=_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def gather(obj) -> list:
    """Every rank's `obj`, in rank order (a one-element list in a one-process run)."""
    if not active():
        return [obj]
    out = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


class SilentRun:
    """The MLflow run of a worker other than rank 0: it logs nothing (rank 0 logs for the job)."""

    run_id = None
    client = None

    def log_step(self, step, values) -> None:
        pass

    def log_metrics(self, values) -> None:
        pass

    def log_artifact(self, path) -> None:
        pass

    def resumed(self, step, previous_run) -> None:
        pass


@contextmanager
def throwaway_dir():
    """The output directory of a worker other than rank 0: written to, then deleted."""
    tmp = tempfile.mkdtemp(prefix=f"forgetlab-rank{rank()}-")
    try:
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def finish() -> None:
    """Leave the process group at the end of a worker's job."""
    if active():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
