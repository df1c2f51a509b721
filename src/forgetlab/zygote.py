"""The fork server's process (`python -m forgetlab.zygote SOCKET`, started by the first client; see
forgetlab.forkserver): import forgetlab's stages, and with them torch, transformers and mlflow, then
serve, each job's worker running the `forgetlab` command in this process's fork."""

from __future__ import annotations

import importlib
import os
import sys
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


def main(socket_path: str) -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as e:  # a stage's optional dependency: its worker imports it as in-process
            print(f"forgetlab fork server: not preloaded: {name}: {e}", file=sys.stderr)
    forkserver.serve(Path(socket_path), app.run_here, float(os.environ.get(forkserver.IDLE_ENV, "60")))


if __name__ == "__main__":
    main(sys.argv[1])
