"""The study's data: a source module writes the layout every later stage reads.

`prepare_data(cfg, out_dir)` dispatches on `data.source`:
* `synthetic` (the default): the generated world (forgetlab.data.world);
* `tofu`, `muse`: the published files of a local directory `data.path`, checked and converted
  (forgetlab.data.tofu, forgetlab.data.muse).

Every source writes into `out_dir`: corpus.jsonl (pretraining text; may be empty), qa/<split>.jsonl
(forgetlab's QA schema, see forgetlab.data.world), tokenizer/ (save_pretrained) and manifest.json
(the config, row counts and the sha256 of every file written or read). A muse study also writes
text/<set>.jsonl (raw documents {id, text}, what it fine-tunes and unlearns on), verbmem/ and
privleak/ (see forgetlab.data.muse); workflow/rules/data.smk declares text/ for muse only.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

SOURCES = ("synthetic", "tofu", "muse")


def source_module(cfg: dict):
    """The module of a data config's source; each has `prepare(cfg, out_dir) -> manifest`."""
    source = cfg.get("source", "synthetic")
    if source not in SOURCES:
        raise ValueError(f"data.source must be one of {SOURCES}, got {source!r}")
    return import_module(f"forgetlab.data.{'world' if source == 'synthetic' else source}")


def prepare_data(cfg: dict, out_dir: str | Path) -> dict:
    return source_module(cfg).prepare(cfg, out_dir)


__all__ = ["SOURCES", "prepare_data", "source_module"]
