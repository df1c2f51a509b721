"""glibc's malloc as it is against forgetlab's tuning of it (forgetlab.recipes.tune_malloc), side by side.

Runs the default study's most common job, the `none` authors-stage fine-tune of seed 0 (the target),
twice at once on the 2 cores, one thread each, as two jobs of the study run: one with
FORGETLAB_MALLOC=default, one tuned. `--pairs` such pairs (3 by default) are run in turn. It prints
each run's wall seconds, system seconds and page faults (the kernel's count of the child, os.wait4),
and the ratio tuned / default of the median wall time; and checks that both gave the same weights.
The pretrained model is the study's (snakemake builds it if missing).

    python benchmarks/malloc_tuning.py [--config config/config.yaml] [--pairs 3]

Figures to benchmarks/results/malloc_tuning.json.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def fine_tune(config: Path, study: dict, out: Path, malloc: str) -> subprocess.Popen:
    stages = study.get("stages") or {}
    authors = [f"--at=stages={s}" for s, spec in stages.items() if spec.get("data") == "authors"][:1]
    cmd = ["forgetlab", "finetune", "--config", str(config), "--at=regularizer=none", "--at=seed=0", "--at=model=target",
           "--at=role=target", *authors, "--data", str(REPO / "data" / study["study"]), "--threads", "1",
           "--pretrained", str(REPO / "results" / study["study"] / "pretrain" / "model"), "--out", str(out / "model")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FORGETLAB_MALLOC": malloc, "FORGETLAB_FORKSERVER": "0",
           "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}"}
    out.mkdir(parents=True)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=open(out / "log", "w"))


def wait_all(procs: dict[str, subprocess.Popen], start: float) -> dict[str, dict]:
    """Each run's wall seconds (to its own exit), and its CPU seconds and page faults (os.wait4)."""
    done = {}
    while len(done) < len(procs):
        for m, proc in procs.items():
            if m in done:
                continue
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == 0:
                continue
            assert os.waitstatus_to_exitcode(status) == 0, f"the {m} fine-tune failed (exit {status})"
            done[m] = {"wall_s": round(time.monotonic() - start, 2), "sys_s": round(usage.ru_stime, 2),
                       "user_s": round(usage.ru_utime, 2), "page_faults": usage.ru_minflt + usage.ru_majflt}
        time.sleep(0.05)
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--pairs", type=int, default=3)
    a = ap.parse_args()
    config = REPO / a.config
    study = yaml.safe_load(config.read_text())
    pretrained = REPO / "results" / study["study"] / "pretrain" / "model"
    if not pretrained.exists():
        subprocess.run(["snakemake", str(pretrained.relative_to(REPO)), "--cores", "2", "--configfile", str(config)],
                       check=True, cwd=REPO)
    scratch = REPO / "results" / study["study"] / "bench" / "malloc_tuning"
    shutil.rmtree(scratch, ignore_errors=True)
    runs = {"default": [], "tuned": []}
    digests = set()
    for i in range(a.pairs):
        start = time.monotonic()
        procs = {m: fine_tune(config, study, scratch / f"{m}{i}", m) for m in runs}
        for m, res in wait_all(procs, start).items():
            runs[m].append(res)
            digests.add(hashlib.sha256((scratch / f"{m}{i}" / "model" / "model.safetensors").read_bytes()).hexdigest())
        print(f"pair {i}: " + "  ".join(f"{m} {r[-1]}" for m, r in runs.items()), flush=True)
    median = {m: statistics.median(r["wall_s"] for r in rs) for m, rs in runs.items()}
    result = {"date": datetime.date.today().isoformat(), "config": a.config, "pairs": a.pairs, "runs": runs,
              "median_wall_s": median, "ratio_tuned_over_default": round(median["tuned"] / median["default"], 3),
              "same_weights": len(digests) == 1}
    print(f"median wall: default {median['default']} s, tuned {median['tuned']} s, "
          f"ratio {result['ratio_tuned_over_default']}; same weights: {result['same_weights']}")
    out = REPO / "benchmarks" / "results" / "malloc_tuning.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    assert result["same_weights"], "the tuned and the default allocator gave different weights"


if __name__ == "__main__":
    main()
