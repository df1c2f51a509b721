"""MLflow tracking: one run per stage job, in the study's experiment.

The store is `MLFLOW_TRACKING_URI` when set (e.g. a server), else a SQLite file at
results/mlflow.db with artifacts under results/mlartifacts/. Every run records the resolved
stage params, its tags (stage, grid coordinates, git commit, host, SLURM job id, artifact path),
its step metrics, aggregates and artifacts. Writes are retried while SQLite reports a lock.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

TAG_KEYS = ("stage", "model", "role", "regularizer", "method", "split", "seed", "ingredient", "soup")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('results/mlflow.db').resolve()}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def retry(fn, *args, attempts: int = 20, **kwargs):
    """Call fn, retrying with backoff while the SQLite store is locked by a concurrent job."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # mlflow wraps sqlite errors in several exception types
            if "locked" not in str(e) or i == attempts - 1:
                raise
            time.sleep(min(0.1 * 2**i, 5.0))


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def _experiment_id(client: MlflowClient, name: str) -> str:
    exp = retry(client.get_experiment_by_name, name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if "MLFLOW_TRACKING_URI" not in os.environ:
        location = (Path("results/mlartifacts") / name).resolve().as_uri()
    try:
        return retry(client.create_experiment, name, artifact_location=location)
    except Exception:  # created meanwhile by a concurrent job
        return retry(client.get_experiment_by_name, name).experiment_id


class Run:
    """A live MLflow run: buffered step metrics, aggregates and artifacts."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id, self._buffer = client, run_id, []

    def log_step(self, step: int, values: dict[str, float]) -> None:
        ts = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), ts, step) for k, v in values.items()]
        if len(self._buffer) >= 500:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            chunk, self._buffer = self._buffer[:1000], self._buffer[1000:]
            retry(self.client.log_batch, self.run_id, metrics=chunk)

    def log_metrics(self, values: dict[str, float]) -> None:
        ts = int(time.time() * 1000)
        metrics = [Metric(k, float(v), ts, 0) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            retry(self.client.log_batch, self.run_id, metrics=metrics[i : i + 1000])

    def log_artifact(self, path: str | Path) -> None:
        retry(self.client.log_artifact, self.run_id, str(path))


@contextmanager
def stage_run(params: dict, artifact_path: str | Path):
    """Open the MLflow run of one stage job; mark it FAILED if the job raises."""
    client = MlflowClient(tracking_uri())
    exp = _experiment_id(client, params["study"])
    tags = {k: str(params[k]) for k in TAG_KEYS if params.get(k) is not None}
    tags.update(git_commit=git_commit(), host=socket.gethostname(), artifact_path=str(artifact_path))
    if os.environ.get("SLURM_JOB_ID"):
        tags["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    name = "/".join(str(params[k]) for k in ("stage", "model", "regularizer", "seed", "split", "role", "ingredient", "method") if params.get(k) is not None)
    run = retry(client.create_run, exp, run_name=name, tags=tags)
    live = Run(client, run.info.run_id)
    try:
        flat = [Param(k, v[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(flat), 100):
            retry(client.log_batch, live.run_id, params=flat[i : i + 100])
        yield live
        live.flush()
    except BaseException:
        try:
            live.flush()
        finally:
            retry(client.set_terminated, live.run_id, "FAILED")
        raise
    retry(client.set_terminated, live.run_id, "FINISHED")
