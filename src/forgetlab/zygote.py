"""The fork server's process (`python -m forgetlab.zygote SOCKET`, started by the first client; see
forgetlab.forkserver): import forgetlab's stages, and with them torch, transformers and mlflow, then
serve, each job's worker running the `forgetlab` command in this process's fork."""

from __future__ import annotations

import importlib
import os
import sys
import threading
from pathlib import Path

from forgetlab import forkserver
from forgetlab.cli import app

# what the server imports before it serves: the stages, and the modules that their jobs import
# lazily (found by listing sys.modules after a smoke job): ROUGE (nltk), MLflow's SQL store (sqlalchemy,
# alembic), pyarrow's parquet; together ~3.5 s of a 5 s evaluation job. Imports only: nothing connects.
PRELOAD = ("forgetlab.recipes.evaluate", "forgetlab.recipes.unlearn", "forgetlab.recipes.finetune",
           "forgetlab.recipes.pretrain", "forgetlab.recipes.soup", "forgetlab.recipes.report",
           "forgetlab.recipes.prepare_data", "forgetlab.mlstore", "forgetlab.metrics", "forgetlab.eval",
           "rouge_score.rouge_scorer", "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.db.utils",
           "mlflow.store.tracking.sqlalchemy_workspace_store", "mlflow.tracking._tracking_service.utils",
           "sqlalchemy.dialects.sqlite", "sqlite3", "alembic.command", "alembic.config", "alembic.migration",
           "alembic.autogenerate", "pyarrow.parquet", "pyarrow.dataset", "rich.console")


# native threads that survive a fork safely: jemalloc's (pyarrow's allocator, started by importing
# mlflow) has fork handlers and is restarted in the child
SAFE_THREADS = ("jemalloc_bg_thd",)


def check_fork_safe() -> None:
    """Before serving: one Python thread, no other native thread (OpenMP's pool, CUDA's) than
    SAFE_THREADS, CUDA not initialised, no MLflow run."""
    tasks = Path("/proc/self/task")
    names = [(t / "comm").read_text().strip() for t in tasks.iterdir()] if tasks.is_dir() else []
    others = [n for n in names if n not in SAFE_THREADS]
    if threading.active_count() != 1 or len(others) > 1:
        raise RuntimeError(f"the fork server has threads after its imports: {names}")
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError("the fork server initialised CUDA")
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and mlflow.active_run() is not None:
        raise RuntimeError("the fork server has an MLflow run")


def main(socket_path: str) -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as e:  # a stage's optional dependency: its worker imports it as in-process
            print(f"forgetlab fork server: not preloaded: {name}: {e}", file=sys.stderr)
    check_fork_safe()
    forkserver.serve(Path(socket_path), app.run_here, float(os.environ.get(forkserver.IDLE_ENV, "60")))


if __name__ == "__main__":
    main(sys.argv[1])
