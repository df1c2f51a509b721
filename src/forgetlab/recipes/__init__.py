"""Stage recipes: each reads top to bottom as load inputs, build components, run, save, log."""

from __future__ import annotations

import ctypes
import json
import os
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


MALLOC_ENV = "FORGETLAB_MALLOC"  # "default" leaves glibc's malloc as it is (benchmarks/malloc_tuning.py)


def tune_malloc() -> bool:
    """glibc's malloc kept from handing memory back to the kernel between training steps: blocks up to
    32 MiB (the largest it allows) come from the heap instead of fresh mmaps, and freed heap stays mapped
    (trim threshold 1 GiB, top pad 256 MiB). By default each step's activations are mapped, faulted in
    page by page and unmapped again: 1.4M page faults and 3 s of system time in a default fine-tune,
    0.2M and 0.9 s with this (docs/benchmarks.md, malloc). The numbers computed do not change. Not on
    other C libraries (macOS) or with FORGETLAB_MALLOC=default; True where it was set."""
    if os.environ.get(MALLOC_ENV) == "default":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # glibc's malloc.h
    return all(mallopt(param, value) == 1 for param, value in
               ((m_mmap_threshold, 32 << 20), (m_trim_threshold, 1 << 30), (m_top_pad, 256 << 20)))


def set_threads(params: dict) -> None:
    """The job's CPU threads, shared among its data-parallel workers if it has several; and its
    allocator (tune_malloc)."""
    from forgetlab import distributed

    torch.set_num_threads(max(1, int(params.get("threads", 1)) // distributed.world_size()))
    tune_malloc()


def write_json(path: str | Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
