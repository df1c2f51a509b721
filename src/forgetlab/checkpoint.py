"""Training checkpoints: resume a killed or preempted job exactly where it stopped.

A training job (pretrain, finetune, unlearn) writes `<out>.ckpt/state.pt` beside its output
directory (never inside it: the output is written atomically at the end, see
forgetlab.model.atomic_dir), every `checkpoint_every` optimizer steps (train settings; 0 = never)
and when it receives SIGTERM. A checkpoint holds, at an optimizer-step boundary: the model, the
optimizer and the scheduler; the python, numpy, torch CPU (and CUDA) RNG states; the data-order
position of every loader and iterator (forgetlab.train.Loader); each hook's state (the
regularizers', the unlearning method's and plug-ins', the trajectory's: `state_dict()`); and the
step metrics logged so far. It is written to a temporary file and renamed, so a kill at any moment
leaves the previous checkpoint whole.

On SIGTERM (SLURM's preemption or time-limit signal, `scancel`, a `kill`), the loop finishes the
current step, saves a checkpoint and exits with status 143 (`Preempted`), so that SLURM's requeue
or a Snakemake rerun runs the job again. The rerun rebuilds everything as a fresh run does (setup
on the initial model), then restores the checkpoint's state and goes on; on the CPU the final
weights and the MLflow step metrics are bit-identical to an uninterrupted run. Its MLflow run is a
new one: the step metrics of the steps before the checkpoint are logged to it again, and it is
tagged `resumed_from_step` (and `resumed_from_run`). A checkpoint written for other parameters or
other input files (a changed config, a retrained upstream model) is discarded, and the job starts
afresh. Under `distributed.strategy: fsdp` the model's and the optimizer's state are full state
dicts gathered on rank 0 (forgetlab.distributed.model_state) and sharded again on resume: the same
one-file checkpoint, and the same bit-identical guarantee on the CPU (tests/test_fsdp.py). The checkpoint directory is removed when the job succeeds.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from forgetlab import distributed
from forgetlab.distributed import EXIT_PREEMPTED

FORMAT = 1


class CheckpointError(RuntimeError):
    """The run cannot be checkpointed (or resumed) faithfully; the message says which part."""


class Preempted(SystemExit):
    """SIGTERM received: the checkpoint is saved and the job exits with status 143 to be rerun."""

    def __init__(self):
        super().__init__(EXIT_PREEMPTED)


def checkpoint_dir(out: str | Path) -> Path:
    """`<out>.ckpt`: beside the output directory, not an output of any Snakemake rule."""
    out = Path(out)
    return out.with_name(f"{out.name}.ckpt")


def fingerprint(params: dict, inputs=()) -> str:
    """What must not change between a run and its resumption: the job's parameters (except the
    thread count and checkpoint_every, which do not change what is computed) and the size and
    modification time of its input files (a directory: the files in it)."""

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k != "checkpoint_every"}
        return obj

    doc = {k: v for k, v in strip(params).items() if k != "threads"}
    files = []
    for path in map(Path, inputs):
        for f in sorted(x for x in path.iterdir() if x.is_file()) if path.is_dir() else [path]:
            st = f.stat()
            files.append([f.name, st.st_size, st.st_mtime_ns])
    text = json.dumps({"params": doc, "inputs": files}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class StepLog:
    """The step-metric logger of a job (MLflow's `log_step` behind it), which keeps what it logged:
    a resumed job logs the checkpoint's history again, so its run holds every step."""

    def __init__(self, sink=None):
        self.sink, self.history, self._muted = sink, [], False

    def __call__(self, step: int, values: dict) -> None:
        if self._muted:
            return
        values = {k: float(v) for k, v in values.items()}
        self.history.append((int(step), values))
        if self.sink is not None:
            self.sink(step, values)

    @contextmanager
    def muted(self):
        """Drop what is logged in the block (a resumed job's setup: its history comes from the checkpoint)."""
        self._muted = True
        try:
            yield
        finally:
            self._muted = False

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = []
        for step, values in state["history"]:
            self(step, values)


def rng_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        if not torch.cuda.is_available():
            raise CheckpointError("the checkpoint was written on a CUDA device; resume it on one")
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Where and when a training job checkpoints, and its SIGTERM flag (see the module docstring)."""

    def __init__(self, path: str | Path, every: int = 0, fingerprint: str = "", log: StepLog | None = None,
                 on_resume=None, run_id: str | None = None):
        self.path, self.every, self.fingerprint = Path(path), int(every or 0), fingerprint
        self.log = log if log is not None else StepLog()
        self.on_resume, self.run_id, self.requested = on_resume, run_id, False

    @classmethod
    def for_stage(cls, out, params: dict, mlrun, every: int = 0, inputs=()) -> "Checkpointer":
        """The checkpointer of a stage job writing `out`: step metrics go to its MLflow run, which
        a resumed job tags (`mlrun.resumed`, forgetlab.tracking.Run)."""
        return cls(checkpoint_dir(out) / "state.pt", every, fingerprint(params, inputs), StepLog(mlrun.log_step),
                   on_resume=mlrun.resumed, run_id=getattr(mlrun, "run_id", None))

    def due(self, done: int, total: int) -> bool:
        return self.every > 0 and done % self.every == 0 and done < total

    def load(self) -> dict | None:
        """The saved state, or None (no checkpoint, or one that does not belong to this job)."""
        if not self.path.exists():
            return None
        try:
            # data-parallel workers map the file (its pages shared through the page cache) rather than
            # each reading a copy: a sharded 8B model's full state is ~100 GB
            state = torch.load(self.path, map_location="cpu", weights_only=True, mmap=distributed.active())
        except Exception as e:
            print(f"forgetlab: checkpoint {self.path} is unreadable ({e}); starting afresh", file=sys.stderr)
            return None
        if state.get("format") != FORMAT or state.get("fingerprint") != self.fingerprint:
            print(f"forgetlab: checkpoint {self.path} was written for other parameters or inputs; "
                  "discarding it and starting afresh", file=sys.stderr)
            self.remove()
            return None
        return state

    def save(self, state: dict) -> None:
        """Write atomically: a temporary file in the same directory, flushed to disk, then renamed.
        Of data-parallel workers, rank 0 writes (the state holds every rank's RNG streams)."""
        if not distributed.is_main():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            torch.save({**state, "format": FORMAT, "fingerprint": self.fingerprint, "run_id": self.run_id}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def remove(self) -> None:
        """Delete the checkpoint (and any temporary file of a killed save), then its directory if empty."""
        if not distributed.is_main():
            return
        for f in self.path.parent.glob(f"{self.path.name}*"):
            f.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:  # absent, or holds something else
            pass

    def resumed(self, step: int, total: int, previous_run: str | None) -> None:
        print(f"forgetlab: resuming from checkpoint {self.path} at step {step}/{total}", file=sys.stderr, flush=True)
        if self.on_resume is not None and distributed.is_main():
            self.on_resume(step, previous_run)

    @contextmanager
    def on_sigterm(self):
        """While training: SIGTERM only sets `requested`; the loop checkpoints and exits at the step's end."""
        self.requested = False

        def handler(signum, frame):
            if not self.requested:  # os.write: safe inside a handler, unlike print
                os.write(2, b"\nforgetlab: SIGTERM received; checkpointing at the end of this step\n")
            self.requested = True

        try:
            previous = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread: no handler, SIGTERM keeps its default
            previous = None
        try:
            yield self
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def stop(self, done: int, total: int, saved: bool, reason: str = "") -> Preempted:
        where = f"checkpoint {self.path} saved" if saved else f"NO checkpoint saved ({reason})"
        print(f"forgetlab: stopped by SIGTERM after step {done}/{total}; {where}; exiting with status "
              f"{EXIT_PREEMPTED} so that the job is rerun (SLURM requeue, snakemake --rerun-incomplete "
              "or --retries): the rerun resumes from the checkpoint", file=sys.stderr, flush=True)
        return Preempted()


# --- a training run's whole state, at an optimizer-step boundary -----------------------------

def preempt(checkpoint: Checkpointer, done: int, steps: int, saved: int, parts: tuple) -> None:
    """After SIGTERM: save the state at this step boundary (unless just saved) and exit with 143."""
    reason = ""
    if saved != done:
        try:
            checkpoint.save(snapshot(done, *parts))
            saved = done
        except CheckpointError as e:
            reason = str(e)
    raise checkpoint.stop(done, steps, saved == done, reason)


def hook_name(hook) -> str:
    return f"{type(hook).__module__}.{type(hook).__qualname__}:{getattr(hook, 'name', '')}"


def snapshot(done, model, optimizer, scheduler, batches, ctx, hooks, log) -> dict:
    """Everything a resumed run needs to continue exactly from `done` completed steps."""
    if not hasattr(batches, "state_dict"):
        raise CheckpointError("the data iterator has no state_dict (use forgetlab.train.Loader / paired)")
    missing = [hook_name(h) for h in hooks if not hasattr(h, "state_dict")]
    if missing:
        raise CheckpointError(f"hooks without state_dict cannot be checkpointed: {missing}")
    for loader in loaders_of(batches, ctx):  # a new snapshot: every iterator in it must be saved again
        loader.snapshots += 1
    state = {
        "step": done,
        "model": distributed.model_state(model),  # of a sharded (fsdp) model: the full one, on rank 0
        "optimizer": distributed.optimizer_state(model, optimizer),
        "scheduler": scheduler.state_dict(),
        "batches": batches.state_dict(),
        "context": {k: getattr(ctx, k).state_dict() for k in ("forget", "retain") if getattr(ctx, k) is not None},
        "hooks": [(hook_name(h), h.state_dict()) for h in hooks],
        "log": log.state_dict() if isinstance(log, StepLog) else None,
        "rng": rng_state(),
    }
    if distributed.active():  # every rank's RNG streams (e.g. its dropout masks), in rank order
        state["rng_ranks"] = distributed.gather(state["rng"])
    unsaved = unsaved_iterators(loaders_of(batches, ctx))
    if unsaved:
        raise CheckpointError(f"{unsaved} data iterator(s) in use are not in any state_dict: a hook keeps an "
                              "iterator over TrainContext.forget/retain without saving its position")
    return state


def loaders_of(batches, ctx) -> list:
    """The data loaders (forgetlab.train.Loader) of the training batches and of the context."""
    found = [getattr(batches, "loader", None)]
    found += [getattr(getattr(batches, k, None), "loader", None) for k in ("primary", "secondary")]
    found += [getattr(ctx, k) for k in ("forget", "retain")]
    unique = {id(x): x for x in found if x is not None}
    return list(unique.values())


def unsaved_iterators(loaders: list) -> int:
    """Started iterators over these loaders that the checkpoint being collected does not hold."""
    live = {id(it): it for loader in loaders if loader is not None for it in list(loader.iterators)}
    return sum(1 for it in live.values() if it.order is not None and it.saved != it.loader.snapshots)


def restore(state: dict, model, optimizer, scheduler, batches, ctx, hooks, log) -> int:
    """Load a snapshot into a run that has just been set up as a fresh one; returns the step."""
    names = [hook_name(h) for h in hooks]
    if [n for n, _ in state["hooks"]] != names:
        raise CheckpointError(f"the checkpoint's hooks {[n for n, _ in state['hooks']]} are not this run's {names}")
    distributed.load_model_state(model, state["model"])
    distributed.load_optimizer_state(model, optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    for k, loader_state in state["context"].items():
        getattr(ctx, k).load_state_dict(loader_state)
    for hook, (_, hook_state) in zip(hooks, state["hooks"]):
        hook.load_state_dict(hook_state)
    batches.load_state_dict(state["batches"])
    if isinstance(log, StepLog) and state["log"] is not None:
        log.load_state_dict(state["log"])
    set_rng_state(rng_of_this_rank(state))
    return state["step"]


def rng_of_this_rank(state: dict) -> dict:
    """The RNG state this process resumes with: its own rank's in a data-parallel checkpoint."""
    ranks = state.get("rng_ranks")
    if ranks is None and distributed.world_size() == 1:
        return state["rng"]
    if ranks is None or len(ranks) != distributed.world_size():
        saved = len(ranks) if ranks is not None else 1
        raise CheckpointError(f"the checkpoint was written by {saved} data-parallel worker(s), this run has "
                              f"{distributed.world_size()}: resume with the same distributed.nproc_per_node")
    return ranks[distributed.rank()]
