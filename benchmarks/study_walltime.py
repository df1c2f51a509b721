"""Wall time of the default study on this machine, and whether its forget quality discriminates.

Runs the default study (config/config.yaml) from scratch under the study name `benchmark`,
then fine-tunes one more retain-only oracle with another seed and scores it against the seed-0
oracle. Prints, and writes to benchmarks/results/study_walltime.json (with the environment it ran in,
from results/benchmark/environment.json):
- wall_s: the study's wall time with `snakemake --cores 2` (target: <= 1200 s on 2 CPU cores);
- fq_target_vs_oracle: forget_quality of each regularizer's target against its oracle, the geometric
  mean over the study's seeds (target: <= 1e-5);
- fq_oracle_seed1_vs_oracle: forget_quality of a second oracle (seed 1) against the seed-0 oracle
  (target: >= 0.05): the study's own seed-1 oracle of each training path when it runs several seeds,
  else one more oracle fine-tuned here;
- jobs: from Snakemake's own `benchmark:` record of every job (results/benchmark/logs/**/*.benchmark.tsv)
  and each job's MLflow run (start to end, which excludes process start-up and imports): the jobs'
  wall time, their time inside the MLflow run, the orchestration overhead = sum over jobs of
  (job wall - time in the run) over (cores x study wall) (issue 14's target: <= 10%), and the
  critical-path efficiency = study wall / (sum of job wall x threads / cores) (target: <= 1.15);
- fork_server: whether the jobs ran through the fork server (forgetlab.forkserver, the Snakefile's
  default; FORGETLAB_FORKSERVER=0 turns it off).

    python benchmarks/study_walltime.py [--config config/config.yaml] [--cores 2] [--finished WALL_S]
    python benchmarks/study_walltime.py --jobs-of smoke --finished WALL_S   # only the job figures of results/smoke
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

STUDY = "benchmark"


def sh(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def job_times(res: Path, cores: int, wall: float, study: str = STUDY) -> dict:
    """Snakemake's benchmark records of the study's jobs against their MLflow runs' durations."""
    import mlflow

    records = {}
    for tsv in sorted((res / "logs").rglob("*.benchmark.tsv")):
        records[tsv] = float(pd.read_csv(tsv, sep="\t")["s"].iloc[0])
    client = mlflow.tracking.MlflowClient(f"sqlite:///{Path('results/mlflow.db').resolve()}")
    runs = client.search_runs([client.get_experiment_by_name(study).experiment_id], max_results=5000,
                              filter_string="attributes.status = 'FINISHED'")
    in_run = {r.data.tags["artifact_path"]: (r.info.end_time - r.info.start_time) / 1000 for r in runs
              if "superseded_by" not in r.data.tags and r.data.tags["stage"] not in ("report", "prepare_data")
              and "/extra/" not in r.data.tags["artifact_path"] and "fan_in" not in r.data.tags}  # rules with a benchmark:
    threads = {r.data.tags["artifact_path"]: int(r.data.params.get("threads", 1)) for r in runs}
    job_wall, run_wall = sum(records.values()), sum(in_run.values())
    # a job's core-time is its wall time x its threads (pretrain's second thread: counted over its run)
    core_time = sum(records.values()) + sum((threads.get(p, 1) - 1) * t for p, t in in_run.items())
    return {"jobs": len(records), "runs": len(in_run), "job_wall_s": round(job_wall, 1), "in_run_s": round(run_wall, 1),
            "overhead_share": round((job_wall - run_wall) / (cores * wall), 3),
            "critical_path_ratio": round(wall / (core_time / cores), 3)}


def oracle_vs_oracle(res: Path, reg: str, split: str, seeds: list[int], paths: list) -> dict:
    """forget_quality of the study's second-seed oracle against its first-seed oracle, per training
    path (key `reg` without paths, `reg/path` with them), from their per-sample tables."""
    from forgetlab.metrics import METRICS

    out = {}
    for path in paths:
        cell = [path, split] if path else [split]
        a, b = (pd.read_parquet(res.joinpath("eval", reg, f"seed{s}", *cell, "oracle", "samples.parquet")) for s in seeds)
        out[f"{reg}/{path}" if path else reg] = METRICS.get("forget_quality")(b, oracle=a)
    return out


def extra_oracle(config: dict, res: Path, data: str, reg: str, split: str, seed: int) -> float:
    """forget_quality of one more oracle, fine-tuned here with seed + 1, against the study's oracle."""
    other_seed = seed + 1
    oracle2 = res / "extra" / reg / f"seed{other_seed}" / split
    study = res / "extra" / "study.yaml"
    study.parent.mkdir(parents=True, exist_ok=True)
    study.write_text(yaml.safe_dump(config, sort_keys=False))
    cell = ["--at", f"regularizer={reg}", "--at", f"seed={other_seed}", "--at", f"split={split}"]
    sh("forgetlab", "finetune", "--config", str(study), *cell, "--at", "role=oracle",
       "--pretrained", str(res / "pretrain" / "model"), "--data", data, "--out", str(oracle2 / "model"))
    sh("forgetlab", "evaluate", "--config", str(study), *cell, "--at", "model=oracle_seed1",
       "--model-dir", str(oracle2 / "model"), "--data", data, "--out", str(oracle2 / "eval"),
       "--oracle", str(res / "eval" / reg / f"seed{seed}" / split / "oracle"),
       "--target", str(res / "eval" / reg / f"seed{seed}" / split / "target"))
    return json.loads((oracle2 / "eval" / "metrics.json").read_text())["metrics"]["forget_quality"]


def fork_server() -> bool:
    """Whether the study's jobs ran through the fork server (the Snakefile enables it unless set to 0)."""
    return os.environ.get("FORGETLAB_FORKSERVER", "1") not in ("", "0")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--cores", default="2")
    ap.add_argument("--finished", type=float, metavar="WALL_S",
                    help="do not run the study again: read the finished results/benchmark, which took WALL_S seconds")
    ap.add_argument("--jobs-of", metavar="STUDY", help="with --finished: print only the job figures of results/STUDY")
    args = ap.parse_args()
    if args.jobs_of:
        print(json.dumps({"fork_server": fork_server(), **job_times(Path("results") / args.jobs_of, int(args.cores),
                                                                     args.finished, args.jobs_of)}, indent=2))
        return
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    config = yaml.safe_load(Path(args.config).read_text())
    config["study"] = STUDY
    if args.finished:
        wall = args.finished
    else:
        for path in (Path("results") / STUDY, Path("data") / STUDY):
            shutil.rmtree(path, ignore_errors=True)
        start = time.perf_counter()
        sh("snakemake", "--cores", args.cores, "--configfile", args.config, "--config", f"study={STUDY}", "--quiet", "rules")
        wall = time.perf_counter() - start

    summary = pd.read_parquet(Path("results") / STUDY / "summary.parquet")
    split, seed = config["splits"][0], config["seeds"][0]
    # the bars use seed-averaged figures (log10 forget quality averaged over the study's seeds), so
    # that a finding never hinges on one seed's machine noise
    targets = summary[(summary.model == "target") & (summary.split == split)]
    by = ["regularizer", "path"] if "path" in targets and targets.path.notna().any() else ["regularizer"]
    fq_target = {"/".join(map(str, key)): float(10 ** np.log10(g.forget_quality).mean())
                 for key, g in targets.groupby(by, sort=False)}

    res, data = Path("results") / STUDY, f"data/{STUDY}"
    reg = next(iter(config["regularizers"]))
    if len(config["seeds"]) > 1:
        fq_oracle = oracle_vs_oracle(res, reg, split, config["seeds"][:2], list(config.get("paths") or [None]))
    else:
        fq_oracle = {reg: extra_oracle(config, res, data, reg, split, seed)}
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads per job from config",
        "config": args.config,
        "wall_s": round(wall, 1),
        "fq_target_vs_oracle": fq_target,
        "fq_oracle_seed1_vs_oracle": fq_oracle,
        "seeds": config["seeds"],
        "jobs": job_times(res, int(args.cores), wall),
        "fork_server": fork_server(),
        "environment": json.loads((res / "environment.json").read_text()) if (res / "environment.json").exists() else None,
        "targets": {"wall_s": "<= 1200", "fq_target_vs_oracle": "<= 1e-5", "fq_oracle_seed1_vs_oracle": ">= 0.05",
                    "jobs.overhead_share": "<= 0.10", "jobs.critical_path_ratio": "<= 1.15"},
        "summary": json.loads(summary[["model", "regularizer", "method", "forget_quality", "model_utility", "forget_prob",
                                       "retain_prob", "forget_rouge", "retain_rouge"]].to_json(orient="records")),
    }
    out = Path("benchmarks/results/study_walltime.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: result[k] for k in ("date", "wall_s", "jobs", "fq_target_vs_oracle", "fq_oracle_seed1_vs_oracle")}, indent=2))


if __name__ == "__main__":
    main()
