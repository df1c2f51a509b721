"""How long Snakemake takes to plan a study at cluster scale; nothing is trained.

Generates a study config from the default one with a grid of at least 10,000 jobs (regularizer
entries x seeds x splits x methods, every entry a copy of a default one under another name), then
times `snakemake -n --quiet` on it in a scratch directory, and, for scale, the default study's
own plan. Prints, and writes to benchmarks/results/planning.json:
- big_jobs, big_plan_s: the generated study's job count and its dry-run time (target: <= 20 s);
- default_jobs, default_plan_s: the same for config/config.yaml.
Each figure is the median of --repeats runs (the first run of each also pays the config check,
which is then stamped; the median is of the warm runs that a user sees when re-planning).

    python benchmarks/planning.py [--regularizers 12] [--seeds 10] [--methods 14] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def big_config(n_regularizers: int, n_seeds: int, n_methods: int) -> dict:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    regs, methods = list(config["regularizers"].values()), list(config["methods"].values())
    config["study"] = "planning"
    config["seeds"] = list(range(n_seeds))
    config["splits"] = ["forget01", "forget05", "forget10"]
    config["regularizers"] = {f"reg{i:03d}": regs[i % len(regs)] for i in range(n_regularizers)}
    config["methods"] = {f"method{i:03d}": methods[i % len(methods)] for i in range(n_methods)}
    config["sequential"] = None
    return config


def plan(config_path: Path, workdir: Path) -> tuple[float, int]:
    """(seconds, jobs) of one `snakemake -n` of the study in `workdir`."""
    start = time.perf_counter()
    proc = subprocess.run(["snakemake", "-n", "--quiet", "rules", "--cores", "2", "-s", str(REPO / "Snakefile"),
                           "--directory", str(workdir), "--configfile", str(config_path)],
                          capture_output=True, text=True, env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    total = re.search(r"^total\s+(\d+)", proc.stdout + proc.stderr, re.MULTILINE)
    return seconds, int(total.group(1)) if total else 0


def timed(config: dict, repeats: int) -> tuple[float, int, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        runs = [plan(path, Path(tmp)) for _ in range(repeats + 1)]
    times = [s for s, _ in runs]
    return statistics.median(times[1:]), runs[0][1], [round(t, 2) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regularizers", type=int, default=12)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--methods", type=int, default=14)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    big_s, big_jobs, big_all = timed(big_config(args.regularizers, args.seeds, args.methods), args.repeats)
    default_s, default_jobs, default_all = timed(yaml.safe_load((REPO / "config" / "config.yaml").read_text()), args.repeats)
    result = {
        "date": datetime.date.today().isoformat(),
        "grid": {"regularizers": args.regularizers, "seeds": args.seeds, "splits": 3, "methods": args.methods},
        "big_jobs": big_jobs, "big_plan_s": round(big_s, 2), "big_runs_s": big_all,
        "default_jobs": default_jobs, "default_plan_s": round(default_s, 2), "default_runs_s": default_all,
        "targets": {"big_jobs": ">= 10000", "big_plan_s": "<= 20"},
    }
    out = REPO / "benchmarks" / "results" / "planning.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
