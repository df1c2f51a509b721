"""Stage recipes: each reads top to bottom as load inputs, build components, run, save, log."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from forgetlab.data.muse import read_texts, text_files
from forgetlab.qa import encode_text_chunks


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def text_chunks(tokenizer, data_dir: Path, name: str, max_length: int) -> tuple[list[dict], list[Path]]:
    """A muse study's text set `name` (forgetlab.data.muse.TEXT_SETS) as chunked, fully supervised
    examples (forgetlab.qa.encode_text_chunks), and the files it was read from."""
    chunks = [c for t in read_texts(data_dir, name) for c in encode_text_chunks(tokenizer, t, max_length)]
    return chunks, text_files(data_dir, name)


def set_threads(params: dict) -> None:
    """The job's CPU threads, shared among its data-parallel workers if it has several."""
    from forgetlab import distributed

    torch.set_num_threads(max(1, int(params.get("threads", 1)) // distributed.world_size()))


def write_json(path: str | Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
