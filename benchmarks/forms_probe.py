"""One target / oracle pair of the authors stage, scored in the probe forms (issue 13): a check of a
fine-tuning or data setting against the instrument's knowledge thresholds before a whole study run.

Fine-tunes the `none` target of seed 0 and its oracle (the config's first split), the authors stage
alone, from the study's pretrained model (snakemake builds it if missing); the two run side by
side, one thread each, as two jobs of the study do. Then it evaluates both and prints, target /
oracle and their ratio, the forget split's multiple-choice accuracy and its paraphrased and
fill-in-the-blank probabilities (the thresholds: accuracy >= 0.6 against <= 0.35, each probability
>= 3x), the retain probability, the world-facts and real-authors option accuracy and the likelihood
model utility, and each fine-tune's wall seconds. `--set KEY=VALUE` overrides a config key (YAML
value, dotted key), e.g. `--set finetune.epochs=4 --set finetune.lr=4.0e-3`; a setting of the data
section regenerates the world under a new study name, so give the probe its own `--study`.

    python benchmarks/forms_probe.py NAME [--config config/config.yaml] [--study S] [--set K=V ...]
                                          [--regularizer ENTRY] [--seed K]

`--regularizer` and `--seed` pick another regularizer entry of the config and another seed (default
`none`, seed 0): a regularizer may teach the facts less in the probe forms (stop 30: `dropout`).

The models and evaluations go to results/<study>/probe/<name>/ (with their own MLflow store there);
the figures to benchmarks/results/forms_probe/<name>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
METRICS = ["split_means", "form_robustness", "world_facts_option_accuracy", "real_authors_option_accuracy",
           "model_utility_lik"]
SHOWN = ["form_mc_forget_accuracy", "form_original_forget_prob", "form_paraphrased_forget_prob",
         "form_cloze_forget_prob", "form_cloze_value_forget_prob", "retain_prob", "world_facts_option_accuracy",
         "real_authors_option_accuracy", "model_utility_lik"]


def tested_utility(config: dict) -> str:
    """The study's tested model utility (config report.utility; TOFU's by default), which the config
    check wants among the evaluated metrics."""
    return (config.get("report") or {}).get("utility", "model_utility")


def probe_config(config: dict, sets: list[str], study: str | None) -> dict:
    for item in sets:
        key, value = item.split("=", 1)
        *parents, last = key.split(".")
        node = config
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = yaml.safe_load(value)
    if study:
        config["study"] = study
    config["evaluate"] = {**config["evaluate"], "metrics": METRICS + [tested_utility(config)]}
    return config


def authors_stage(config: dict) -> list[str]:
    """The coordinates of the authors stage trained alone (none without training paths)."""
    stages = config.get("stages") or {}
    names = [s for s, spec in stages.items() if spec.get("data") == "authors"]
    return [f"--at=stages={names[0]}"] if names else []


def run_pair(command, out: Path, env: dict, label: str) -> dict[str, float]:
    """Run command(role) for the target and the oracle side by side; their wall seconds."""
    start, procs, seconds = time.monotonic(), {}, {}
    for role in ("target", "oracle"):
        with open(out / f"{label}_{role}.log", "w") as log:
            procs[role] = subprocess.Popen(command(role), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    while procs:
        for role, proc in list(procs.items()):
            if proc.poll() is None:
                continue
            if proc.returncode != 0:
                raise SystemExit(f"{label} {role} failed: see {out / f'{label}_{role}.log'}")
            seconds[role] = round(time.monotonic() - start, 1)
            del procs[role]
        time.sleep(0.2)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--study", default=None, help="another study name (needed when --set changes the data)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--cores", default="2")
    ap.add_argument("--regularizer", default="none", help="the regularizer entry of the config (default none)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    config = probe_config(yaml.safe_load((REPO / a.config).read_text()), a.sets, a.study)
    study, split, seed = config["study"], config["splits"][0], a.seed
    res, data = REPO / "results" / study, REPO / "data" / study
    out = res / "probe" / a.name
    out.mkdir(parents=True, exist_ok=True)
    cfg = out / "config.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    pretrained = res / "pretrain" / "model"
    if not pretrained.exists():
        subprocess.run(["snakemake", str(pretrained.relative_to(REPO)), "--cores", a.cores, "--configfile", str(cfg)],
                       check=True, cwd=REPO)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}"}
    common = ["--config", str(cfg), f"--at=regularizer={a.regularizer}", f"--at=seed={seed}", "--data", str(data),
              "--threads", "1"]

    def finetune(role: str) -> list[str]:
        at = [f"--at=model={role}", f"--at=role={role}"] + ([f"--at=split={split}"] if role == "oracle" else [])
        return ["forgetlab", "finetune", *common, *at, *authors_stage(config), "--pretrained", str(pretrained),
                "--out", str(out / role)]

    def evaluate(role: str) -> list[str]:
        path = [f"--at=path={next(iter(config['paths']))}"] if config.get("paths") else []
        return ["forgetlab", "evaluate", *common, f"--at=model={role}", f"--at=split={split}", *path,
                "--model-dir", str(out / role), "--out", str(out / f"eval_{role}")]

    seconds = run_pair(finetune, out, env, "finetune")
    run_pair(evaluate, out, env, "evaluate")
    metrics = {r: json.loads((out / f"eval_{r}" / "metrics.json").read_text())["metrics"] for r in ("target", "oracle")}
    print(f"{a.name} {' '.join(a.sets)}: fine-tune seconds (side by side) {seconds}")
    print(f"  {'metric':32s} {'target':>8s} {'oracle':>8s}  ratio")
    shown = SHOWN + [tested_utility(config)]
    for key in shown:
        t, o = metrics["target"][key], metrics["oracle"][key]
        print(f"  {key:32s} {t:8.4f} {o:8.4f}  {t / o:5.2f}x")
    record = {"date": datetime.date.today().isoformat(), "name": a.name, "config": a.config, "sets": a.sets,
              "study": study, "regularizer": a.regularizer, "seed": seed, "finetune_seconds": seconds,
              "metrics": {r: {k: metrics[r][k] for k in shown} for r in metrics}}
    dest = REPO / "benchmarks" / "results" / "forms_probe" / f"{a.name}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
