"""MLflow tracking: one run per stage job, in the study's experiment.

The store and how it is reached: forgetlab.mlstore. A run holds the stage params, tags
(stage, grid coordinates, git commit, host, SLURM job id, artifact path), step metrics, aggregates
and artifacts. No metric is lost silently:
- step metrics are buffered, and a flush that cannot reach the store keeps them for a later try.
  What is still unsent at the end of the job (after FORGETLAB_MLFLOW_RETRY_SECONDS of retries) is
  written to results/mlflow-unsent/<run_id>.jsonl, and the job fails naming it: see forgetlab.replay.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from forgetlab import replay
from forgetlab.mlstore import JOB_HTTP, TrackingError, connect, http_settings, retry, short, tracking_uri, unreachable

MEASURED_STAGES = ("pretrain", "finetune", "unlearn", "evaluate")  # their peak memory is logged (forgetlab.memory)
TAG_KEYS = ("stage", "model", "role", "regularizer", "method", "split", "seed", "ingredient", "fan_in",
            "sequential_step", "sequential_chunks", "path", "stages")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


class Run:
    """A live MLflow run: buffered step metrics, aggregates and artifacts; nothing unsent is dropped."""

    def __init__(self, client: MlflowClient, run_id: str, header: dict, params: list[Param]):
        self.client, self.run_id, self.header = client, run_id, header
        self.params, self._params, self._buffer, self._artifacts = params, list(params), [], []
        self._error, self._next_try, self._backoff = None, 0.0, 1.0
        self.logged: dict[str, float] = {}  # the aggregates, for the job's record (job.json)

    def log_step(self, step: int, values: dict[str, float]) -> None:
        ts = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), ts, step) for k, v in values.items()]
        if len(self._buffer) >= 500 and time.monotonic() >= self._next_try:
            self.flush()

    def log_metrics(self, values: dict[str, float]) -> None:
        ts = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), ts, 0) for k, v in values.items()]
        self.logged.update({k: float(v) for k, v in values.items()})
        self.flush()

    def log_resources(self, values: dict[str, float]) -> None:
        """Metrics of what the job used (its peak memory): logged to MLflow, but not among the
        aggregates of job.json, which `forgetlab verify` compares between a job and its rerun."""
        ts = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), ts, 0) for k, v in values.items()]

    def flush(self) -> bool:
        """Send what is pending; if the store cannot be reached, keep it for a later try."""
        try:
            while self._params:
                retry(self.client.log_batch, self.run_id, params=self._params[:100])
                del self._params[:100]
            while self._buffer:
                retry(self.client.log_batch, self.run_id, metrics=self._buffer[:1000])
                del self._buffer[:1000]
        except Exception as e:
            if not unreachable(e):
                raise
            self._postpone(e)
            return False
        self._backoff = 1.0
        return True

    def log_artifact(self, path: str | Path) -> None:
        try:
            retry(self.client.log_artifact, self.run_id, str(path))
        except Exception as e:
            if not unreachable(e):
                raise
            self._postpone(e)  # copied now: the job's temporary directory may be gone by the end
            self._artifacts.append(replay.stash(path, self.run_id))

    def resumed(self, step: int, previous_run: str | None) -> None:
        """Tag a job resumed from a checkpoint (forgetlab.checkpoint); a failure only warns."""
        tags = {"resumed_from_step": str(step), **({"resumed_from_run": previous_run} if previous_run else {})}
        try:
            for k, v in tags.items():
                retry(self.client.set_tag, self.run_id, k, v)
        except Exception as e:  # the tag is informative; the job goes on without it
            print(f"warning: could not tag the MLflow run {tags} ({e})", file=sys.stderr)

    def _postpone(self, e: Exception) -> None:
        if self._error is None:
            print(f"warning: MLflow store {self.header['tracking_uri']} unreachable ({short(e)}); "
                  "keeping the metrics and retrying", file=sys.stderr)
        self._error, self._next_try = e, time.monotonic() + self._backoff
        self._backoff = min(2 * self._backoff, 60.0)

    def close(self, status: str, raise_error: bool = True) -> None:
        """Send everything (retrying for FORGETLAB_MLFLOW_RETRY_SECONDS), then end the run; else save it."""
        deadline = time.monotonic() + float(os.environ.get("FORGETLAB_MLFLOW_RETRY_SECONDS", 60))
        delay = 0.5
        try:
            while not self.flush():
                if time.monotonic() + delay > deadline:
                    raise self._error
                time.sleep(delay)
                delay = min(2 * delay, 10.0)
            if self._artifacts:
                raise self._error
            retry(self.client.set_terminated, self.run_id, status)
            return
        except Exception as e:
            error = e
        # all the params: the run may have to be created again where the file is replayed
        path = replay.write(self.header | {"status": status, "error": short(error)}, self.params,
                            self._buffer, self._artifacts)
        message = (f"could not send {len(self._buffer)} metrics, {len(self._params)} params and "
                   f"{len(self._artifacts)} artifacts to MLflow at {self.header['tracking_uri']} "
                   f"({short(error)}); saved to {path}; send them with: forgetlab mlflow-replay {path}")
        if not raise_error:
            print(f"error: {message}", file=sys.stderr)
            return
        raise TrackingError(message) from error


def supersede(client: MlflowClient, experiment: str, run_id: str, artifact_path: str) -> None:
    """Tag every earlier run of the same job (the same output path) `superseded_by=<run_id>`, so
    that a resumed or rerun study shows one current run per job: filter the experiment on the tag
    being absent. A run still marked RUNNING keeps its status: from here a killed job cannot be told
    from a live one (the tests' concurrent writers share one path), so only the tag says it is old."""
    quoted = artifact_path.replace("'", "\\'")
    earlier = retry(client.search_runs, [experiment], filter_string=f"tags.artifact_path = '{quoted}'", max_results=1000)
    for run in earlier:
        if run.info.run_id == run_id or "superseded_by" in run.data.tags:
            continue
        try:
            retry(client.set_tag, run.info.run_id, "superseded_by", run_id)
        except Exception:  # a concurrent job tagged it first (the store's unique key); a label, never worth failing a job
            continue


@contextmanager
def stage_run(params: dict, artifact_path: str | Path):
    """Open the MLflow run of one stage job; mark it FAILED if the job raises. Its environment is
    logged as `env.*` tags and, once the job succeeds, its record is written to <artifact_path>/job.json
    (forgetlab.environment). A training or evaluation job's peak memory from here on
    (forgetlab.memory) is logged as metrics when it succeeds, and recorded in job.json's `resources`."""
    from forgetlab import distributed, environment, memory

    if not distributed.is_main():  # a data-parallel worker: rank 0 logs for the job
        yield distributed.SilentRun()
        return
    meter = memory.PeakMemory() if params.get("stage") in MEASURED_STAGES else None
    uri = tracking_uri()
    client, exp = connect(uri, params["study"])
    tags = {k: str(params[k]) for k in TAG_KEYS if params.get(k) is not None}
    tags.update(git_commit=git_commit(), host=socket.gethostname(), artifact_path=str(artifact_path))
    job = environment.Job(params, artifact_path, tags["git_commit"])
    tags.update(environment.tags(job.environment))
    if os.environ.get("SLURM_JOB_ID"):
        tags["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    name_keys = ("stage", "model", "regularizer", "seed", "path", "stages", "split", "role", "ingredient", "method",
                 "sequential_step")
    name = "/".join(str(params[k]) for k in name_keys if params.get(k) is not None)
    with http_settings(JOB_HTTP):
        try:
            run_id = retry(client.create_run, exp, run_name=name, tags=tags).info.run_id
        except Exception as e:
            if unreachable(e):
                raise TrackingError(f"MLflow tracking store {uri} failed to create the run ({short(e)})") from e
            raise
        supersede(client, exp, run_id, tags["artifact_path"])
        header = {"tracking_uri": uri, "experiment": params["study"], "run_id": run_id, "run_name": name, "tags": tags}
        live = Run(client, run_id, header, [Param(k, v[:6000]) for k, v in flatten(params).items()])
        live.job = job
        try:
            live.flush()
            yield live
        except BaseException:
            live.close("FAILED", raise_error=False)  # the job's own error is the one to raise
            raise
        resources = meter.metrics() if meter is not None else None
        if resources is not None:
            live.log_resources(resources)
        live.close("FINISHED")
        job.finish(live.logged, run_id, resources)
