"""Replay files: what a job could not send to MLflow, and `forgetlab mlflow-replay` sending it later.

A replay file is JSON lines under results/mlflow-unsent/ (outside every stage's output directory,
so it survives the job's failure). The first line describes the run; the others hold one param
(all of the run's params), or one unsent metric or artifact each:

    {"record": "run", "tracking_uri": ..., "experiment": ..., "run_id": ..., "run_name": ...,
     "tags": {...}, "status": "FINISHED" | "FAILED", "error": ...}
    {"record": "param", "key": ..., "value": ...}
    {"record": "metric", "key": ..., "value": ..., "timestamp": ..., "step": ...}
    {"record": "artifact", "path": ...}     # a copy under results/mlflow-unsent/<run_id>.files/

Replaying is idempotent: MLflow keeps one copy of a metric sent twice, and a param sent again with
the same value is accepted. A run that the store does not hold (it was never created there) is
created in the experiment of the same name, and the file's first line is updated to point at it.
A replayed file is renamed to FILE.done.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

UNSENT_DIR = Path("results/mlflow-unsent")


def stash(path: str | Path, run_id: str) -> str:
    """Copy an artifact that could not be sent to where the replay file will find it."""
    path = Path(path)
    dest = (UNSENT_DIR / f"{run_id}.files" / path.name).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if path.is_dir() else shutil.copy2)(path, dest)
    return str(dest)


def _write_lines(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def write(header: dict, params, metrics, artifacts: list[str]) -> Path:
    """Write one run's params (mlflow Param), unsent metrics (mlflow Metric) and artifacts; return the path."""
    UNSENT_DIR.mkdir(parents=True, exist_ok=True)
    path = (UNSENT_DIR / f"{header['run_id']}.jsonl").resolve()
    records = [{"record": "run", **header}]
    records += [{"record": "param", "key": p.key, "value": p.value} for p in params]
    records += [{"record": "metric", "key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}
                for m in metrics]
    records += [{"record": "artifact", "path": a} for a in artifacts]
    _write_lines(path, records)
    return path


def replay(path: str | Path) -> dict:
    """Send one replay file to the current tracking URI; return what was sent."""
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException

    from forgetlab import mlstore

    path = Path(path)
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records or records[0].get("record") != "run":
        raise ValueError("its first line is not a run record")
    head, rest = records[0], records[1:]
    uri = mlstore.tracking_uri()
    client, exp = mlstore.connect(uri, head["experiment"])
    with mlstore.http_settings(mlstore.JOB_HTTP):
        run_id = head["run_id"]
        try:
            mlstore.retry(client.get_run, run_id)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            tags = {**head["tags"], "replayed_from_run_id": run_id}
            run_id = mlstore.retry(client.create_run, exp, run_name=head["run_name"], tags=tags).info.run_id
            _write_lines(path, [{**head, "run_id": run_id}, *rest])  # a second try reuses this run
        params = [Param(r["key"], r["value"]) for r in rest if r["record"] == "param"]
        metrics = [Metric(r["key"], r["value"], r["timestamp"], r["step"]) for r in rest if r["record"] == "metric"]
        artifacts = [r["path"] for r in rest if r["record"] == "artifact"]
        for i in range(0, len(params), 100):
            mlstore.retry(client.log_batch, run_id, params=params[i : i + 100])
        for i in range(0, len(metrics), 1000):
            mlstore.retry(client.log_batch, run_id, metrics=metrics[i : i + 1000])
        for artifact in artifacts:
            mlstore.retry(client.log_artifact, run_id, artifact)
        mlstore.retry(client.set_terminated, run_id, head["status"])
    os.replace(path, path.with_name(path.name + ".done"))
    for folder in {Path(a).parent for a in artifacts}:
        shutil.rmtree(folder, ignore_errors=True)
    return {"uri": uri, "run_id": run_id, "params": len(params), "metrics": len(metrics), "artifacts": len(artifacts)}
