"""The MLflow store of a study: where it is, opening it, and calling it reliably.

The store is `MLFLOW_TRACKING_URI` when set (e.g. `make mlflow-server`), else the SQLite file
results/mlflow.db with artifacts under results/mlartifacts/. Opening a SQLite store is serialised
by a lock file beside it (concurrent first opens race on table creation), calls are retried while
SQLite reports a lock, and an http(s) server that does not answer fails within seconds
(TrackingError). forgetlab.tracking (a job's run) and forgetlab.replay (what a job could not send)
both stand on this module.
"""

from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

PROBE_TIMEOUT = (5, 60)  # seconds to connect to a server, and to wait for a busy one to answer
# mlflow's documented HTTP client settings during a job: a few short retries, after which our own
# buffering and backoff take over (mlflow's defaults retry for minutes); the user's values win.
JOB_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


class TrackingError(RuntimeError):
    """The tracking store cannot be reached; the message names the URI (and any replay file)."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('results/mlflow.db').resolve()}"


def retry(fn, *args, attempts: int = 20, **kwargs):
    """Call fn, retrying with backoff while the SQLite store is locked by a concurrent job."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # mlflow wraps sqlite errors in several exception types
            if "locked" not in str(e) or i == attempts - 1:
                raise
            time.sleep(min(0.1 * 2**i, 5.0))


def unreachable(e: BaseException) -> bool:
    """True for a failure that may pass: no connection, a timeout, a server-side (5xx) error."""
    while e is not None:
        if isinstance(e, (requests.RequestException, ConnectionError, TimeoutError)):
            return True
        if isinstance(e, MlflowException) and e.get_http_status_code() >= 500:
            return True
        e = e.__cause__ or e.__context__
    return False


@contextmanager
def http_settings(values: dict[str, str]):
    """Set mlflow's HTTP client variables that the user has not set, for the block only."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@contextmanager
def store_lock(uri: str):
    """Serialise store creation on a SQLite file: concurrent first opens race on table creation."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(uri[len("sqlite:///"):].split("?")[0])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def probe(uri: str) -> None:
    """Fail within seconds when an http(s) tracking server does not answer its health check."""
    insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true"
    verify = False if insecure else os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True
    try:
        response = requests.get(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT, verify=verify)
    except requests.RequestException as e:
        raise TrackingError(f"MLflow tracking server {uri} does not answer ({short(e)}); start it "
                            "(make mlflow-server) or unset MLFLOW_TRACKING_URI") from e
    if response.status_code >= 500:
        raise TrackingError(f"MLflow tracking server {uri} answered HTTP {response.status_code} to its health check")


def connect(uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """A client and the experiment's id (created if need be); an http(s) server is probed first."""
    if uri.startswith(("http://", "https://")):
        probe(uri)
    with store_lock(uri), http_settings(JOB_HTTP):
        client = MlflowClient(uri)
        try:
            return client, experiment_id(client, experiment)
        except Exception as e:
            if uri.startswith(("http://", "https://")):
                raise TrackingError(f"MLflow tracking server {uri} failed to open experiment {experiment!r} ({short(e)})") from e
            raise


def short(e: BaseException) -> str:
    """One line: the OS error or HTTP status when there is one, else the start of the message."""
    text = " ".join(str(e).split())
    found = re.search(r"\[Errno -?\d+\] [^'\")]+|Read timed out|timed out|error code \d+[^.]*", text)
    return found.group(0) if found else text[:300]


def experiment_id(client: MlflowClient, name: str) -> str:
    exp = retry(client.get_experiment_by_name, name)
    if exp is not None:
        return exp.experiment_id
    location = None  # a server decides where artifacts go; a SQLite file keeps them beside it
    uri = client.tracking_uri
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts" / name).resolve().as_uri()
    try:
        return retry(client.create_experiment, name, artifact_location=location)
    except Exception:  # created meanwhile by a concurrent job
        return retry(client.get_experiment_by_name, name).experiment_id
