"""How long Snakemake takes to plan a study at cluster scale; nothing is trained.

Generates study configs from the default one (regularizer entries x seeds x splits x methods,
every entry a copy of a default one under another name; no sequential runs or training paths), then times `snakemake -n --quiet` on each
in a scratch directory, and, for scale, the default study's own plan. The default grid, 11 entries
x 10 seeds x 3 splits x 14 methods (10,348 jobs), is the smallest of that shape with at least
10,000 jobs; `--regularizers 11 24` times a larger one (22,568 jobs) after it. Prints, and writes
to benchmarks/results/planning.json:
- grids: per grid its job count, dry-run wall time (target: <= 20 s for >= 10,000 jobs) and the
  CPU time of the snakemake process (user + system: on a shared machine the wall time also holds
  the time other jobs take the cores); big_jobs, big_plan_s: those of the first grid;
- default_jobs, default_plan_s: the same for config/config.yaml;
- with --finished DIR (a copy of the repository whose study STUDY is finished, e.g. the
  `benchmark` study of study_walltime.py): noop_rerun_s, the time of `snakemake --cores 2` there,
  with this repository's Snakefile and package, with nothing to do (target: <= 3 s). It first checks with `snakemake -n` that nothing is to be
  done, and stops otherwise: it never starts a study.
Each figure is the median of --repeats runs (the first run of each also pays the config check,
which is then stamped; the median is of the warm runs that a user sees when re-planning).

    python benchmarks/planning.py [--regularizers 11 [24]] [--seeds 10] [--methods 14] [--repeats 3]
                                  [--finished DIR [--study benchmark]]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
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
    for key in ("paths", "stages"):  # no training paths either: the grid keeps its shape (and job count)
        config.pop(key, None)
    return config


# this repository's Snakefile and package, whatever the environment's install points at
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(REPO / "src")}


def snakemake(args: list[str], cwd: Path | None = None) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the snakemake process, its output) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(["snakemake", *args], capture_output=True, text=True, env=ENV, cwd=cwd)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return seconds, cpu, proc.stdout + proc.stderr


def plan(config_path: Path, workdir: Path) -> tuple[float, float, int]:
    """(seconds, CPU seconds, jobs) of one `snakemake -n` of the study in `workdir`."""
    seconds, cpu, out = snakemake(["-n", "--quiet", "rules", "--cores", "2", "-s", str(REPO / "Snakefile"),
                                   "--directory", str(workdir), "--configfile", str(config_path)])
    total = re.search(r"^total\s+(\d+)", out, re.MULTILINE)
    return seconds, cpu, int(total.group(1)) if total else 0


def timed(config: dict, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        runs = [plan(path, Path(tmp)) for _ in range(repeats + 1)]
    return {"jobs": runs[0][2], "plan_s": round(statistics.median(r[0] for r in runs[1:]), 2),
            "plan_cpu_s": round(statistics.median(r[1] for r in runs[1:]), 2),
            "runs_s": [round(r[0], 2) for r in runs], "runs_cpu_s": [round(r[1], 2) for r in runs]}


def noop_rerun(finished: Path, study: str, repeats: int) -> dict:
    """`snakemake --cores 2` of a finished study (this repository's Snakefile, run in `finished`),
    nothing to do; refuses to run if -n plans any job."""
    args = ["--cores", "2", "-s", str(REPO / "Snakefile"), "--configfile", "config/config.yaml",
            "--config", f"study={study}", "--quiet", "rules"]
    _, _, out = snakemake(["-n", *args], cwd=finished)
    if "Nothing to be done" not in out:
        raise SystemExit(f"{finished}: the study {study!r} is not finished (snakemake -n plans jobs); not rerunning it")
    runs = [snakemake(args, cwd=finished)[:2] for _ in range(repeats)]
    return {"dir": str(finished), "command": "snakemake " + " ".join(args),
            "noop_rerun_s": round(statistics.median(r[0] for r in runs), 2),
            "noop_rerun_cpu_s": round(statistics.median(r[1] for r in runs), 2),
            "runs_s": [round(r[0], 2) for r in runs], "runs_cpu_s": [round(r[1], 2) for r in runs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regularizers", type=int, nargs="+", default=[11])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--methods", type=int, default=14)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--finished", type=Path, help="a repository copy whose study --study is finished")
    ap.add_argument("--study", default="benchmark")
    args = ap.parse_args()
    grids = [{"regularizers": n, "seeds": args.seeds, "splits": 3, "methods": args.methods,
              **timed(big_config(n, args.seeds, args.methods), args.repeats)} for n in args.regularizers]
    default = timed(yaml.safe_load((REPO / "config" / "config.yaml").read_text()), args.repeats)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/planning.py " + " ".join(sys.argv[1:]),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "big_jobs": grids[0]["jobs"], "big_plan_s": grids[0]["plan_s"], "grids": grids,
        "default_jobs": default["jobs"], "default_plan_s": default["plan_s"], "default": default,
        **({"noop_rerun": noop_rerun(args.finished.resolve(), args.study, args.repeats)} if args.finished else {}),
        "targets": {"big_jobs": ">= 10000", "big_plan_s": "<= 20", "noop_rerun_s": "<= 3"},
    }
    out = REPO / "benchmarks" / "results" / "planning.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
