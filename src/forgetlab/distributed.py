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

Two strategies (`distributed.strategy`):
* ddp (the default): the above. Every rank holds the whole model, its gradients and AdamW's state.
  Unlearning runs in one process: its methods keep data-dependent state (pdu's dual variable,
  saliency masks) that would need syncing, and its jobs are short.
* fsdp: PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`) shards the parameters, gradients and
  optimizer state over the ranks (`shard_model`: one unit per decoder layer, the rest the root's),
  so a model too large for one GPU's memory trains across the GPUs of a node. The data, the loss
  and the control are shared as under ddp; FSDP's reduce-scatter averages the gradients (so
  `average_gradients` is not called). Unlearning jobs run distributed too, the frozen reference
  sharded like the model. Only the components that touch the model through its forward pass alone
  are supported (forgetlab.strategies: the config check refuses the others, naming the key and why).
  Checkpoints hold full (unsharded) state dicts gathered on rank 0 (`model_state`,
  `optimizer_state`), and the final model is saved from the gathered full state dict.
  With one process (nproc_per_node 1) fsdp is a plain one-process run.
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

from forgetlab.strategies import data_parallel_stages

EXIT_PREEMPTED = 143  # a job stopped by SIGTERM after checkpointing: 128 + SIGTERM, so that it is rerun


def strategy(params: dict) -> str:
    """The job's data-parallel strategy: ddp (the default) or fsdp."""
    return (params.get("distributed") or {}).get("strategy", "ddp")


def nproc(params: dict) -> int:
    """The worker count this stage job asks for (1: no launch)."""
    if params.get("stage") not in data_parallel_stages(strategy(params)):
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


# --- fsdp: sharding, full state dicts, and what it supports ---------------------------------

def device() -> torch.device:
    """This rank's device (its GPU, or the CPU)."""
    return _device()


def load_device(params: dict) -> torch.device | None:
    """Where a job loads its model: on the CPU under fsdp in a data-parallel run (shard_model then
    moves each rank's shard to its GPU, so no GPU holds the whole model), else None (the default)."""
    return torch.device("cpu") if strategy(params) == "fsdp" and active() else None


def sharded(model) -> bool:
    """True for a model sharded by `shard_model` (an FSDP2 module)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_model(model, compute_dtype: torch.dtype | None = None):
    """Shard `model` over the ranks with FSDP2: each of its decoder layers (the transformers
    model's `_no_split_modules`) is one unit, all-gathered for its forward and backward and freed
    after; the embeddings, the final norm and the head are the root unit's. With a `compute_dtype`
    (bf16 autocast) the layers compute in it and gradients are reduced in float32; the sharded
    parameters and AdamW's state stay float32. A CPU model moves to this rank's device here."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32) if compute_dtype \
        else MixedPrecisionPolicy()
    units = set(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in units:
            fully_shard(module, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def model_state(model) -> dict:
    """The model's state dict; of a sharded model, the full one, gathered on rank 0 (the other
    ranks get {}): a collective, every rank calls it."""
    if not sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def load_model_state(model, state: dict) -> None:
    """Load a full state dict (every rank holds it) into the model, sharding it if it is sharded."""
    if not sharded(model):
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_options())


def optimizer_state(model, optimizer) -> dict:
    """The optimizer's state dict; of a sharded model's optimizer, the full one (keyed by parameter
    name), gathered on rank 0."""
    if not sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def load_optimizer_state(model, optimizer, state: dict) -> None:
    if not sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_options())


def saved_state(model) -> dict | None:
    """What `save_pretrained` writes of a sharded model: its full state dict without the repeated
    names of tied weights (as a plain model's save), on rank 0; None for a plain model."""
    if not sharded(model):
        return None
    state = model_state(model)
    keep = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    return {k: v for k, v in state.items() if k in keep}


def full_tensor(t):
    """A plain tensor of a sharded model's DTensor (e.g. the clipped gradient norm)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
