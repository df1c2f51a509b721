"""MLflow at scale: concurrent writers (on a tracking server and on the SQLite file), a server that
does not answer at job start, a server that goes away mid-run (replay files), and the run tags."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from mlflow.tracking import MlflowClient

from forgetlab import replay, tracking
from forgetlab.memory import PeakMemory
from forgetlab.tracking import Run, stage_run
from tests.helpers import REPO, cli_env

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent

# One stage job's worth of tracking, through forgetlab's own code path. The workers wait at a
# barrier (the file `go`) after their slow imports (those a run's start makes too: the environment
# record's torch and transformers, MLflow's stores), so that all of them write at the same time.
WRITER = r"""
import sys, time
from pathlib import Path
import forgetlab.environment, forgetlab.model, forgetlab.mlstore
import mlflow.store.tracking.sqlalchemy_store, mlflow.store.tracking.rest_store
import sqlalchemy.dialects.sqlite, alembic.command
from forgetlab.tracking import stage_run

i, steps, every = map(int, sys.argv[1:4])
Path(f"ready-{i}").touch()
while not Path("go").exists():
    time.sleep(0.01)
with stage_run({"study": "scale", "stage": "pretrain", "seed": i}, "results/scale") as run:
    for step in range(steps):
        run.log_step(step, {"loss": i + step / 1000})
        if (step + 1) % every == 0:
            run.flush()
    Path(f"note-{i}.txt").write_text(str(i))
    run.log_artifact(f"note-{i}.txt")
print(run.run_id)
"""

# A job whose server goes away after its first flush: it logs 500 steps of loss and lr, then an
# aggregate, and must fail with every unsent metric in a replay file.
OUTAGE = r"""
import time
from pathlib import Path
from forgetlab.tracking import stage_run

with stage_run({"study": "outage", "stage": "finetune", "seed": 0, "train": {"lr": 0.1}}, "results/outage") as run:
    for step in range(500):
        run.log_step(step, {"loss": step / 10, "lr": 0.1})
        if step == 99:
            run.flush()
            Path("flushed.tmp").write_text(run.run_id)
            Path("flushed.tmp").rename("flushed")
            while not Path("killed").exists():
                time.sleep(0.05)
    run.log_metrics({"train_steps": 500})
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(backend: str, artifacts: Path, log: Path):
    """`mlflow server` (as `make mlflow-server` runs it) on a free loopback port; killed at the end."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    with open(log, "a") as out:
        proc = subprocess.Popen([BIN / "mlflow", "server", "--backend-store-uri", backend, "--serve-artifacts",
                                 "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "2"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=cli_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))  # no GenAI job runner
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, f"mlflow server did not start:\n{log.read_text()[-3000:]}"
            time.sleep(0.25)
        yield uri
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """Kill the server's whole process group (mlflow server, uvicorn and its workers)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def wait_for(path: Path, procs: list[subprocess.Popen], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        for p in procs:
            assert p.poll() is None, p.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"timed out waiting for {path}"
        time.sleep(0.05)


@pytest.mark.parametrize("backend", ["sqlite", "server"])
def test_concurrent_writers_lose_no_metric(backend, tmp_path):
    """4 jobs at once (2 a core), 500 step metrics each, flushed 5 at a time (a job flushes every 500
    metrics): 400 commits racing for the store, and all 2000 metrics (and 4 artifacts) arrive."""
    n, steps, every = 4, 500, 5
    server = mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts", tmp_path / "server.log")
    with server if backend == "server" else nullcontext(None) as uri:
        env = cli_env(**({"MLFLOW_TRACKING_URI": uri} if uri else {}))
        procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(i), str(steps), str(every)], cwd=tmp_path, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
        for i in range(n):
            wait_for(tmp_path / f"ready-{i}", procs)
        (tmp_path / "go").touch()
        outs = [p.communicate(timeout=300) for p in procs]
        assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
        run_ids = [out.split()[-1] for out, _ in outs]

        client = MlflowClient(uri or f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("scale").experiment_id])
        assert sorted(r.info.run_id for r in runs) == sorted(run_ids)
        assert all(r.info.status == "FINISHED" for r in runs)
        total = 0
        for i, run_id in enumerate(run_ids):
            history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))
            assert history == [(s, i + s / 1000) for s in range(steps)]
            total += len(history)
            assert [a.path for a in client.list_artifacts(run_id)] == [f"note-{i}.txt"]
        assert total == n * steps
    if backend == "server":  # the artifacts went over HTTP into the server's artifact store
        assert len(list((tmp_path / "artifacts").rglob("note-*.txt"))) == n
    else:
        assert not (tmp_path / "results" / "mlflow-unsent").exists()


def test_unreachable_server_fails_the_job_at_once(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    proc = subprocess.run([BIN / "forgetlab", "prepare-data", "--config", REPO / "config" / "smoke.yaml", "--out", "data/smoke"],
                          cwd=tmp_path, env=cli_env(MLFLOW_TRACKING_URI=uri), capture_output=True, text=True)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: MLflow tracking server {uri} does not answer")
    assert "Traceback" not in proc.stderr
    # imports and the config check included, on a loaded machine too: mlflow's own retries (7, with
    # backoff) would take over 4 minutes
    assert elapsed < 90, elapsed
    assert not (tmp_path / "data" / "smoke").exists()


def test_server_lost_mid_run_saves_every_metric_for_replay(tmp_path):
    backend, artifacts = f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts"
    with mlflow_server(backend, artifacts, tmp_path / "server.log") as uri:
        # short retries: the user's own mlflow HTTP settings win over forgetlab's defaults
        env = cli_env(MLFLOW_TRACKING_URI=uri, FORGETLAB_MLFLOW_RETRY_SECONDS="1", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
        job = subprocess.Popen([sys.executable, "-c", OUTAGE], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(tmp_path / "flushed", [job])
        run_id = (tmp_path / "flushed").read_text()
        sent = {(m.key, m.step) for key in ("loss", "lr") for m in MlflowClient(uri).get_metric_history(run_id, key)}
    (tmp_path / "killed").touch()  # the server is gone: the job goes on, then fails at its end
    _, err = job.communicate(timeout=120)
    assert job.returncode != 0
    assert "keeping the metrics and retrying" in err  # the mid-run flush failed, the job went on
    # 400 steps x (loss, lr) after the flush, train_steps, and the job's peak memory (forgetlab.memory: a
    # finetune job logs it when it succeeds; the figures without CUDA)
    resources = set(PeakMemory().metrics())
    n_unsent = 801 + len(resources)
    assert f"could not send {n_unsent} metrics" in err and f"MLflow at {uri}" in err
    path = tmp_path / "results" / "mlflow-unsent" / f"{run_id}.jsonl"
    assert f"forgetlab mlflow-replay {path}" in err

    records = [json.loads(line) for line in path.read_text().splitlines()]
    head, metrics = records[0], [r for r in records if r["record"] == "metric"]
    assert head["run_id"] == run_id and head["status"] == "FINISHED" and head["tags"]["stage"] == "finetune"
    unsent = {(m["key"], m["step"]) for m in metrics}
    logged = {(k, s) for k in ("loss", "lr") for s in range(500)} | {("train_steps", 0)} | {(k, 0) for k in resources}
    assert len(metrics) == len(unsent) and not unsent & sent and unsent | sent == logged
    assert {"record": "param", "key": "train.lr", "value": "0.1"} in records  # to recreate the run if need be

    with mlflow_server(backend, artifacts, tmp_path / "server.log") as uri:  # a new server on the same store
        proc = subprocess.run([BIN / "forgetlab", "mlflow-replay", path], cwd=tmp_path,
                              env=cli_env(MLFLOW_TRACKING_URI=uri), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"{n_unsent} metrics" in proc.stdout and run_id in proc.stdout
        client = MlflowClient(uri)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.params["train.lr"] == "0.1"
        for key in ("loss", "lr"):
            assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(500))
        assert run.data.metrics["train_steps"] == 500
    assert not path.exists() and path.with_name(path.name + ".done").exists()


def test_replay_creates_the_run_when_the_store_never_saw_it(tmp_path, monkeypatch):
    from mlflow.entities import Metric, Param

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    (tmp_path / "plot.txt").write_text("a plot")
    head = {"tracking_uri": "http://gone:5000", "experiment": "lost", "run_id": "0" * 32,
            "run_name": "finetune/target", "tags": {"stage": "finetune"}, "status": "FAILED", "error": "gone"}
    artifact = replay.stash(tmp_path / "plot.txt", head["run_id"])
    path = replay.write(head, [Param("lr", "0.1")], [Metric("loss", s / 2, 1000 + s, s) for s in range(1500)], [artifact])

    sent = replay.replay(path)
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(sent["run_id"])
    assert sent["run_id"] != head["run_id"] and run.data.tags["replayed_from_run_id"] == head["run_id"]
    assert run.info.status == "FAILED" and run.data.params == {"lr": "0.1"} and run.data.tags["stage"] == "finetune"
    assert [m.value for m in sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)] == [s / 2 for s in range(1500)]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["plot.txt"]
    done = path.with_name(path.name + ".done")
    assert not path.exists() and json.loads(done.read_text().splitlines()[0])["run_id"] == sent["run_id"]


class FlakyClient:
    """Stands in for MlflowClient: the first `failures` calls cannot connect."""

    def __init__(self, failures: int):
        self.failures, self.metrics, self.status = failures, [], None

    def log_batch(self, run_id, metrics=(), params=()):
        if self.failures:
            self.failures -= 1
            raise requests.ConnectionError("[Errno 111] Connection refused")
        self.metrics += metrics

    def set_terminated(self, run_id, status):
        self.status = status


def test_flushes_keep_the_metrics_while_the_store_is_away(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # the Run's clock stands still but for its own sleeps: no retry before the 1 s backoff, however
    # slowly this loop runs on a loaded machine (a real clock let a second try in, once, under load)
    clock = [0.0]
    monkeypatch.setattr(tracking, "time", SimpleNamespace(
        time=time.time, monotonic=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s)))
    client = FlakyClient(failures=2)
    run = Run(client, "r", {"tracking_uri": "http://mlflow:5000", "run_id": "r"}, [])
    for step in range(1200):
        run.log_step(step, {"loss": step})  # the flush at 500 metrics fails; training goes on
    assert client.metrics == [] and client.failures == 1
    run.close("FINISHED")  # the next try fails too, the one after that sends everything
    assert [m.step for m in client.metrics] == list(range(1200)) and client.status == "FINISHED"
    assert "keeping the metrics and retrying" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_runs_are_tagged_with_the_slurm_job_the_host_and_the_commit(tmp_path, monkeypatch):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = {"study": "tags", "stage": "finetune", "model": "target", "regularizer": "dropout", "seed": 1}
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with stage_run(params, "results/tags/x") as under_slurm:
        under_slurm.log_step(0, {"loss": 1.0})
    monkeypatch.delenv("SLURM_JOB_ID")
    with stage_run(params, "results/tags/x") as by_hand:
        pass

    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    tags = client.get_run(under_slurm.run_id).data.tags
    assert tags["slurm_job_id"] == "4242"
    assert tags["host"] == socket.gethostname()
    assert tags["git_commit"] == head and len(head) == 40
    assert {k: tags[k] for k in ("stage", "model", "regularizer", "seed", "artifact_path")} == {
        "stage": "finetune", "model": "target", "regularizer": "dropout", "seed": "1", "artifact_path": "results/tags/x"}
    assert "slurm_job_id" not in client.get_run(by_hand.run_id).data.tags


def test_a_rerun_job_supersedes_its_earlier_runs(tmp_path, monkeypatch):
    """A killed job leaves a RUNNING run; its rerun (same output path) tags it superseded_by, so
    filtering the experiment on the tag shows one run per job."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = {"study": "resume", "stage": "unlearn", "regularizer": "none", "seed": 0, "method": "npo"}
    killed = stage_run(params, "results/resume/unlearn/npo")
    first = killed.__enter__()  # never closed: the job was killed with SIGKILL
    with stage_run(params, "results/resume/unlearn/other") as other:
        pass
    with stage_run(params, "results/resume/unlearn/npo") as second:
        pass
    with stage_run(params, "results/resume/unlearn/npo") as third:  # e.g. --forcerun
        pass

    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    assert client.get_run(first.run_id).data.tags["superseded_by"] == second.run_id
    assert client.get_run(second.run_id).info.status == "FINISHED"
    assert client.get_run(second.run_id).data.tags["superseded_by"] == third.run_id
    assert "superseded_by" not in client.get_run(third.run_id).data.tags
    assert "superseded_by" not in client.get_run(other.run_id).data.tags
    exp = client.get_experiment_by_name("resume").experiment_id
    current = [r for r in client.search_runs([exp]) if "superseded_by" not in r.data.tags]
    assert sorted(r.info.run_id for r in current) == sorted([other.run_id, third.run_id])
