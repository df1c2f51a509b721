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
afresh. The checkpoint directory is removed when the job succeeds.
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

EXIT_PREEMPTED = 143  # 128 + SIGTERM, as if the signal had ended the process
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
        """The checkpointer of a stage job writing `out`, logging step metrics to its MLflow run."""

        def tag(step: int, previous_run: str | None) -> None:
            tags = {"resumed_from_step": str(step), **({"resumed_from_run": previous_run} if previous_run else {})}
            from forgetlab.tracking import retry

            try:
                for k, v in tags.items():
                    retry(mlrun.client.set_tag, mlrun.run_id, k, v)
            except Exception as e:  # the tag is informative; the job goes on without it
                print(f"warning: could not tag the MLflow run {tags} ({e})", file=sys.stderr)

        return cls(checkpoint_dir(out) / "state.pt", every, fingerprint(params, inputs), StepLog(mlrun.log_step),
                   on_resume=tag, run_id=getattr(mlrun, "run_id", None))

    def due(self, done: int, total: int) -> bool:
        return self.every > 0 and done % self.every == 0 and done < total

    def load(self) -> dict | None:
        """The saved state, or None (no checkpoint, or one that does not belong to this job)."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
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
