"""prepare_data: generate the synthetic world, its QA splits and its BPE tokenizer from a seed, or
check and convert a published benchmark's files (`data.source`, forgetlab.data)."""

from __future__ import annotations

from pathlib import Path

from forgetlab.data import prepare_data
from forgetlab.model import atomic_dir
from forgetlab.tracking import stage_run


def run(params: dict, out: Path) -> None:
    with stage_run(params, out) as mlrun, atomic_dir(out) as tmp:
        data = params["data"]
        if params.get("tokenizer_from"):  # tofu, muse: the tokenizer of model.init_from
            data = {**data, "tokenizer_from": params["tokenizer_from"]}
        manifest = prepare_data(data, tmp)
        counts = {f"rows_{Path(name).stem}": n for name, n in manifest["rows"].items()}
        mlrun.log_metrics(counts)
