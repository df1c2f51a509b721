"""Stage recipes: each reads top to bottom as load inputs, build components, run, save, log."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def set_threads(params: dict) -> None:
    """The job's CPU threads, shared among its data-parallel workers if it has several."""
    from forgetlab import distributed

    torch.set_num_threads(max(1, int(params.get("threads", 1)) // distributed.world_size()))


def write_json(path: str | Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
