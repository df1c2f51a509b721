"""evaluate: score one model on forget, retain, holdout and world_facts in one batched pass,
keep the per-sample table, and compute the configured aggregate metrics against the oracle."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

from forgetlab.evaluate import score_model
from forgetlab.metrics import compute_metrics
from forgetlab.model import atomic_dir, load_model, load_tokenizer
from forgetlab.recipes import read_jsonl, set_threads, write_json
from forgetlab.tracking import stage_run
from forgetlab.train import seed_everything

LABELS = ("study", "model", "regularizer", "method", "split", "seed")


def eval_splits(params: dict, data_dir: Path) -> dict[str, list[dict]]:
    """The four evaluation sets; large ones capped to a fixed seeded subset."""
    files = {"forget": params["split"], "retain": params["retain_split"], "holdout": "holdout", "world_facts": "world_facts"}
    cap = params["evaluate"].get("max_samples")
    splits = {}
    for role, name in files.items():
        rows = read_jsonl(data_dir / "qa" / f"{name}.jsonl")
        if cap and len(rows) > cap and role != "forget":
            rows = random.Random(params["seed_data"]).sample(rows, cap)
        splits[role] = rows
    return splits


def run(params: dict, model_dir: Path, data_dir: Path, out: Path, oracle: Path | None = None) -> None:
    set_threads(params)
    seed_everything(params["seed_data"])
    with stage_run(params, out) as mlrun, atomic_dir(out) as tmp:
        model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
        ev = params["evaluate"]
        samples = score_model(model, tokenizer, eval_splits(params, data_dir), ev["batch_size"], ev["max_new_tokens"])
        if params["model"] == "oracle":
            oracle_samples = samples  # the oracle is its own reference: forget_quality 1 by definition
        else:
            oracle_samples = pd.read_parquet(oracle / "samples.parquet") if oracle else None
        metrics = compute_metrics(ev["metrics"], samples, oracle_samples)
        samples.to_parquet(tmp / "samples.parquet", index=False)
        labels = {k: params.get(k) for k in LABELS}
        specs = {"regularizer_params": params.get("regularizers"), "method_params": params.get("method_spec")}
        write_json(tmp / "metrics.json", {**labels, **specs, "model_path": str(model_dir), "metrics": metrics})
        mlrun.log_metrics({k: v for k, v in metrics.items() if v == v})
