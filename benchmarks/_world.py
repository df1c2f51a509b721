"""Shared set-up of the benchmarks: the default world's tokenizer and encoded fine-tuning QA."""

from __future__ import annotations

from pathlib import Path

from forgetlab.data import prepare_data
from forgetlab.model import load_tokenizer
from forgetlab.qa import encode_qa
from forgetlab.recipes import read_jsonl


def finetune_examples(config: dict, workdir: str | Path, max_length: int):
    """Generate the config's world into workdir; return its tokenizer and the encoded `full` QA."""
    data = Path(workdir) / "data"
    prepare_data(config["data"], data)
    tok = load_tokenizer(data / "tokenizer")
    rows = read_jsonl(data / "qa" / "full.jsonl")
    return tok, [encode_qa(tok, r["question"], r["answer"], max_length) for r in rows]
