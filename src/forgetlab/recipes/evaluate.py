"""evaluate: score one model on forget, retain, holdout, world_facts and real_authors in batched passes,
keep the per-sample table, and compute the configured aggregate metrics against the oracle (also
the reference model of mia_reference, as in open-unlearning) and, for relearn_recovery, the target.
Only the passes that the configured metrics read are run (`forgetlab.eval.plan`). A muse study
scores MUSE's own knowmem, verbmem and privleak files instead (forgetlab.eval.muse)."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

from forgetlab.eval.muse import score_muse
from forgetlab.eval.plan import RELEARN, metrics_to_run, needs_target, passes_for
from forgetlab.eval.relearn import RelearnConfig, attach_relearn, relearn_columns
from forgetlab.eval.scoring import score_model
from forgetlab.eval.tables import attach_target, read_table
from forgetlab.eval.trajectory import matched_metrics, steps_to_threshold
from forgetlab.metrics import EvalInputError, compute_metrics, mean_or_nan, split_values
from forgetlab.model import atomic_dir, attention, autocast, load_model, load_tokenizer
from forgetlab.recipes import read_jsonl, set_threads, write_json
from forgetlab.tracking import stage_run
from forgetlab.train import seed_everything

LABELS = ("study", "model", "regularizer", "method", "split", "seed")
SEQUENTIAL_LABELS = ("sequential_step", "sequential_chunks")  # only a sequential run's steps have them
PATH_LABELS = ("path",)  # only the models of a study with training paths have it


def eval_splits(params: dict, data_dir: Path) -> dict[str, list[dict]]:
    """The five evaluation sets (TOFU's forget, retain, real_authors and world_facts, plus the
    holdout; a source's `eval_files` may name other files for a role, e.g. TOFU's retain_eval); all
    but forget capped to a fixed seeded subset of `max_samples`. A missing or empty
    file, or a row without an answer, is an error naming the file."""
    files = {"forget": params["split"], "retain": params["retain_split"], "holdout": "holdout",
             "world_facts": "world_facts", "real_authors": "real_authors", **params.get("eval_files", {})}
    cap = params["evaluate"].get("max_samples")
    splits = {}
    for role, name in files.items():
        path = data_dir / "qa" / f"{name}.jsonl"
        if not path.exists():
            raise EvalInputError(f"QA file {path} not found")
        rows = read_jsonl(path)
        if not rows:
            raise EvalInputError(f"QA file {path} is empty: the {role} split has no rows to evaluate")
        empty = [r.get("id", i) for i, r in enumerate(rows) if not str(r.get("answer") or "").strip()]
        if empty:
            raise EvalInputError(f"QA file {path}: {len(empty)} row(s) with an empty answer, e.g. {empty[0]!r}")
        if cap and len(rows) > cap and role != "forget":
            rows = random.Random(params["seed_data"]).sample(rows, cap)
        splits[role] = rows
    return splits


def run(params: dict, model_dir: Path, data_dir: Path, out: Path, oracle: Path | None = None,
        target: Path | None = None) -> None:
    set_threads(params)
    seed_everything(params["seed_data"])
    ev, role, precision = params["evaluate"], params["model"], params.get("precision", "auto")
    is_oracle, is_target = role == "oracle", role == "target"
    oracle_table = read_table(oracle, "oracle") if oracle and not is_oracle else None
    target_table = read_table(target, "target") if target and not is_target else None
    # the oracle is its own oracle, the target its own target; the oracle needs no target (its
    # relearn_recovery is 0 by definition)
    available = {k for k, present in (("oracle", is_oracle or oracle_table is not None),
                                      ("target", is_oracle or is_target or target_table is not None)) if present}
    names = metrics_to_run(ev["metrics"], role, available)
    passes = passes_for(names)
    muse = params.get("data_source") == "muse"  # MUSE's own sets (forgetlab.eval.muse), not the QA splits
    splits = None if muse else eval_splits(params, data_dir)
    with stage_run(params, out) as mlrun, atomic_dir(out) as tmp:
        model, tokenizer = load_model(model_dir, **attention(params)), load_tokenizer(model_dir)
        with autocast(precision, next(model.parameters()).device):  # fp32 on the CPU
            if muse:
                samples = score_muse(model, tokenizer, data_dir, ev, passes)
            else:
                samples = score_model(model, tokenizer, splits, ev["batch_size"], ev["max_new_tokens"],
                                      seed=params["seed_data"], passes=[p for p in passes if p != RELEARN])
        if RELEARN in passes:  # the relearning attack, on a copy of the model
            relearned = relearn_columns(model, tokenizer, splits["forget"], RelearnConfig(**ev.get("relearn", {})),
                                        params["seed_data"], precision, ev["batch_size"], ev["max_new_tokens"])
            samples = attach_relearn(samples, relearned)
        if needs_target(names) and is_target:
            samples = attach_target(samples, samples, Path(out) / "samples.parquet")
        elif needs_target(names) and target_table is not None:
            samples = attach_target(samples, target_table, Path(target) / "samples.parquet")
        # the oracle is its own reference: forget_quality 1, privleak 0 and mia_reference 1/2 by definition
        metrics = compute_metrics(names, samples, oracle_table, role=role)
        oracle_samples = samples if is_oracle else oracle_table
        if (model_dir / "trajectory.csv").exists() and oracle_samples is not None:
            oracle_forget_prob = mean_or_nan(split_values(oracle_samples, "forget", "prob"))
            traj = pd.read_csv(model_dir / "trajectory.csv")
            metrics.update(steps_to_threshold(traj, oracle_forget_prob))
            if (model_dir / "trajectory_samples.parquet").exists():  # the comparison at equal forgetting
                metrics.update(matched_metrics(traj, pd.read_parquet(model_dir / "trajectory_samples.parquet"),
                                               oracle_forget_prob, oracle_samples))
        samples.to_parquet(tmp / "samples.parquet", index=False)
        labels = {k: params.get(k) for k in LABELS}
        labels.update({k: params[k] for k in SEQUENTIAL_LABELS + PATH_LABELS if params.get(k) is not None})
        specs = {"regularizer_params": params.get("regularizers"), "method_params": params.get("method_spec")}
        write_json(tmp / "metrics.json", {**labels, **specs, "model_path": str(model_dir), "metrics": metrics})
        mlrun.log_metrics({k: v for k, v in metrics.items() if v == v})
