"""verify: rerun a seeded sample of a study's jobs from their recorded inputs, and compare.

Each job's record (job.json, forgetlab.environment) holds its exact command; the rerun is that
command with --out in a scratch directory (and, with --threads, another thread count), reading the
study's stored inputs, with its own MLflow store in the scratch directory; like the study's jobs
(the Snakefile's), it runs in a fork of forgetlab's fork server (forgetlab.forkserver), which imports
torch, transformers and mlflow once for all the reruns, unless FORGETLAB_FORKSERVER is set (0: each
rerun in a fresh process). The rerun's files are compared with the stored ones: model weights
(max |Δ| per tensor), tables (max |Δ| per numeric column; text cells must match), JSON files
(numbers within the metric tolerance, the rest equal).

Verdicts, per job and for the whole sample (the worst of its jobs):
  identical   every file bit for bit the same
  equivalent  every difference within TOLERANCES, and the environment differs (the field is named)
  different   a difference beyond tolerance; or any difference in the same environment (where the
              study promises bit-identical results); or a failed rerun
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from forgetlab import environment as env_mod
from forgetlab.forkserver import ENV as FORKSERVER_ENV

# The stated tolerances, the only place they are set: |stored - rerun| <= atol + rtol * |stored|.
# Calibrated on the smoke study rerun with 2 threads instead of 1 (fp32 on the CPU): trained weights
# moved by up to ~1e-7 and per-sample numbers by ~2e-7; the margins leave room for longer training
# (differences grow with the steps) and other CPUs. A changed input or setting moves them far more.
TOLERANCES = {
    "weights": (1e-4, 0.0),   # every weight of a saved model
    "tables": (1e-5, 1e-4),   # every number of a per-sample or summary table (parquet, CSV)
    "metrics": (1e-5, 1e-4),  # every number of a JSON output (metrics.json, ...) and of the logged aggregates
}
TEXT_ROWS = 0.0     # the fraction of a table's text cells (e.g. generated answers) allowed to differ
FIGURES = (".png", ".svg", ".pdf")  # drawn from the compared tables: a byte difference is tolerated
IGNORED = (env_mod.JOB_FILE, "environment.json")  # environment records: compared field by field
ENV_KEYS = ("threads",)  # keys of JSON outputs that echo the environment, not the results
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # set as they were recorded, or to --threads
THREADED = ("prepare-data", "pretrain", "finetune", "unlearn", "evaluate")  # commands with --threads
VERDICTS = ("identical", "equivalent", "different")


class VerifyError(ValueError):
    """The study cannot be verified (no job records, ...); the message says why."""


@dataclass
class Diff:
    file: str
    item: str       # a tensor, a column, a JSON key, or what is wrong with the file
    value: float    # the max |Δ| (math.inf: cannot be compared)
    within: bool
    limit: str = ""

    def line(self) -> str:
        return f"{self.file} {self.item}: max |Δ| {self.value:.3g}" + (f" (tolerance {self.limit})" if self.limit else "")


def _limit(kind: str) -> str:
    atol, rtol = TOLERANCES[kind]
    return f"{atol:g}" + (f" + {rtol:g}·|x|" if rtol else "")


def _excess(a, b, kind: str):
    """(max |a - b|, whether every pair is within the kind's tolerance); a, b: float arrays."""
    import numpy as np

    atol, rtol = TOLERANCES[kind]
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf, False
    same_nan = np.isnan(a) == np.isnan(b)
    both = ~np.isnan(a) & ~np.isnan(b)
    with np.errstate(invalid="ignore"):
        delta = np.where(both & (a != b), np.abs(a - b), 0.0)  # equal infinities: no difference
    delta = np.where(same_nan, np.nan_to_num(delta, nan=math.inf), math.inf)
    worst = float(delta.max()) if delta.size else 0.0
    return worst, bool(same_nan.all() and (delta <= atol + rtol * np.nan_to_num(np.abs(b), posinf=0.0)).all())


def compare_tensors(stored: dict, rerun: dict, file: str) -> list[Diff]:
    """Max |Δ| per tensor that is not bit-identical; missing or reshaped tensors cannot be compared."""
    import torch

    diffs = [Diff(file, f"tensor {k} only in {'stored' if k in stored else 'rerun'}", math.inf, False)
             for k in sorted(set(stored) ^ set(rerun))]
    for k in sorted(set(stored) & set(rerun)):
        a, b = stored[k], rerun[k]
        if a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b):
            continue
        if a.shape != b.shape:
            diffs.append(Diff(file, f"tensor {k} shape {tuple(a.shape)} -> {tuple(b.shape)}", math.inf, False))
            continue
        value, within = _excess(a.double().numpy(), b.double().numpy(), "weights")
        diffs.append(Diff(file, f"tensor {k}", value, within and a.dtype == b.dtype, _limit("weights")))
    return diffs


def compare_tables(stored, rerun, file: str) -> list[Diff]:
    """Max |Δ| per numeric column; the share of differing cells per other column."""
    import pandas as pd

    if list(stored.columns) != list(rerun.columns) or len(stored) != len(rerun):
        return [Diff(file, f"shape {stored.shape} -> {rerun.shape} or columns differ", math.inf, False)]
    diffs = []
    for column in stored.columns:
        a, b = stored[column], rerun[column]
        if a.equals(b):
            continue
        numeric = pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b) \
            and not pd.api.types.is_bool_dtype(a)
        arrays = _arrays(a, b) if not numeric else None
        if numeric or arrays:
            x, y = arrays or (a.astype("float64").to_numpy(na_value=math.nan), b.astype("float64").to_numpy(na_value=math.nan))
            value, within = _excess(x, y, "tables")
            diffs.append(Diff(file, f"column {column}", value, within, _limit("tables")))
        else:
            share = float((a.astype(str) != b.astype(str)).mean())
            if share:
                diffs.append(Diff(file, f"column {column}: share of cells differing", share, share <= TEXT_ROWS,
                                  f"{TEXT_ROWS:g}"))
    return diffs


def _arrays(a, b):
    """Two columns of numeric arrays (one per row, e.g. per-token log-probs) as two flat arrays,
    or None when they are not such columns or their rows' lengths differ."""
    import numpy as np

    try:
        rows = [(np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel())
                for x, y in zip(a, b)]
    except (TypeError, ValueError):
        return None
    if not rows or any(x.shape != y.shape for x, y in rows):
        return None
    return np.concatenate([x for x, _ in rows]), np.concatenate([y for _, y in rows])


def _flat(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        return {k2: v2 for k, v in obj.items() for k2, v2 in _flat(v, f"{prefix}{k}.").items()}
    if isinstance(obj, list):
        return {k2: v2 for i, v in enumerate(obj) for k2, v2 in _flat(v, f"{prefix}{i}.").items()}
    return {prefix[:-1]: obj}


def compare_values(stored, rerun, file: str) -> list[Diff]:
    """Numbers within the metric tolerance, everything else equal; ENV_KEYS are left out."""
    a, b = _flat(stored), _flat(rerun)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key.rsplit(".", 1)[-1] in ENV_KEYS or a.get(key) == b.get(key):
            continue
        x, y = a.get(key), b.get(key)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y))
        if numbers:
            value, within = _excess([x], [y], "metrics")
            diffs.append(Diff(file, key, value, within, _limit("metrics")))
        else:
            diffs.append(Diff(file, f"{key}: {str(x)[:60]!r} -> {str(y)[:60]!r}", math.inf, False))
    return diffs


def compare_file(stored: Path, rerun: Path, name: str) -> list[Diff]:
    if stored.read_bytes() == rerun.read_bytes():
        return []
    suffix = stored.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return compare_tensors(load_file(stored), load_file(rerun), name)
    if suffix in (".parquet", ".csv"):
        import pandas as pd

        read = pd.read_parquet if suffix == ".parquet" else pd.read_csv
        return compare_tables(read(stored), read(rerun), name)
    if suffix == ".json":
        try:
            return compare_values(json.loads(stored.read_text()), json.loads(rerun.read_text()), name)
        except ValueError:
            pass
    if suffix in FIGURES:
        return [Diff(name, "figure bytes differ (drawn from the tables compared here)", 0.0, True)]
    return [Diff(name, "bytes differ", math.inf, False)]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name not in IGNORED
            and not any(part.startswith(".") for part in p.relative_to(root).parts)}


def compare_outputs(stored: Path, rerun: Path) -> list[Diff]:
    """Every file of the rerun's output against the stored one; a stored file the rerun did not make
    is missing, unless the stored directory also holds other jobs' outputs (the report's, results/<study>)."""
    made = _files(rerun)
    nested = any(p.parent != stored for p in stored.rglob(env_mod.JOB_FILE))
    names = made | (set() if nested else _files(stored))
    diffs = []
    for name in sorted(names):
        if name not in made or not (stored / name).is_file():
            diffs.append(Diff(name, "missing in the " + ("rerun" if name not in made else "stored study"), math.inf, False))
        else:
            diffs.extend(compare_file(stored / name, rerun / name, name))
    return diffs


def judge(diffs: list[Diff], env_changes: dict, stored_env: dict, failed: str | None = None) -> tuple[str, str]:
    """(verdict, reason) of one job."""
    decisive = [k for k in env_changes if k not in env_mod.INFO_FIELDS]
    changed = "environment differs: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in env_changes.items() if k in decisive)
    if failed:
        return "different", failed
    if not diffs:
        return "identical", changed if decisive else "bit-identical"
    if all(d.within for d in diffs):
        if decisive:
            return "equivalent", changed
        if stored_env.get("device") == "cuda" and not stored_env.get("deterministic_algorithms"):
            return "equivalent", "nondeterministic CUDA kernels: deterministic_algorithms False"
        return "different", "within tolerance, but not bit-identical in the same environment"
    return "different", "beyond tolerance" + (f"; {changed}" if decisive else "; same environment")


def sample(jobs: dict[str, dict], n: int | None, seed: int, stages: list[str] | None = None) -> list[str]:
    """A seeded sample of rerunnable jobs: one of each stage (command), then others up to n."""
    kind = {key: job["command"][1] for key, job in jobs.items() if job.get("command")}
    if stages:
        unknown = sorted(set(stages) - set(kind.values()))
        if unknown:
            raise VerifyError(f"no recorded job of stage {', '.join(unknown)}; stages: {', '.join(sorted(set(kind.values())))}")
        kind = {k: v for k, v in kind.items() if v in stages}
    if not kind:
        raise VerifyError("no job with a recorded command to rerun")
    rng = random.Random(seed)
    chosen = [rng.choice(sorted(k for k, v in kind.items() if v == s)) for s in sorted(set(kind.values()))]
    rest = sorted(set(kind) - set(chosen))
    rng.shuffle(rest)
    return chosen + rest[: max(0, (n or 0) - len(chosen))]


def rerun_command(job: dict, out: Path, threads: int | None) -> list[str]:
    """The job's command with its output in `out`, recorded paths mapped into this tree, and threads set."""
    args = [str(env_mod.local(a, job)) if os.path.isabs(a) else a for a in env_mod.split_options(job["command"][1:])]
    if "--out" not in args:
        raise VerifyError(f"the recorded command of {job['out']} has no --out: {' '.join(job['command'][:2])} ...")
    i = args.index("--out")
    args[i + 1] = str(out)
    if threads and args[0] in THREADED:
        if "--threads" in args:
            args[args.index("--threads") + 1] = str(threads)
        else:
            args += ["--threads", str(threads)]
    exe = Path(sys.executable).with_name("forgetlab")
    return [str(exe) if exe.exists() else (shutil.which("forgetlab") or "forgetlab"), *args]


def verify_job(key: str, job: dict, scratch: Path, threads: int | None) -> dict:
    name = key.replace("/", "--")
    out = scratch / name  # one directory per job: the report's output would otherwise hold the others'
    log = scratch / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    changed = [p for p, d in job.get("inputs", {}).items() if env_mod.digest(env_mod.local(p, job)) != d]
    stored_env = job.get("environment", {})
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{(scratch / 'mlflow.db').resolve()}")
    env.setdefault(FORKSERVER_ENV, "1")  # as the Snakefile runs the study's jobs; FORGETLAB_FORKSERVER=0: each in a fresh process
    omp = str(threads) if threads else stored_env.get("omp_num_threads")  # Snakemake sets it to the job's threads
    for variable in THREAD_VARIABLES:
        env.pop(variable, None)
        env.update({variable: omp} if omp else {})
    start = time.monotonic()
    with open(log, "w") as fh:
        rc = subprocess.run(rerun_command(job, out, threads), env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    seconds = round(time.monotonic() - start, 1)
    failed, diffs, env_changes = None, [], {}
    if rc != 0 or not (out / env_mod.JOB_FILE).is_file():
        lines = log.read_text(errors="replace").strip().splitlines() or [""]
        failed = f"the rerun failed (exit {rc}: {lines[-1][:200]}); log {log}"
    else:
        rerun = env_mod.read_job(out)
        env_changes = env_mod.differences(stored_env, rerun["environment"])
        diffs = compare_outputs(env_mod.local(job["out"], job), out)
        diffs += compare_values(job.get("metrics") or {}, rerun.get("metrics") or {}, "logged metrics")
    verdict, reason = judge(diffs, env_changes, stored_env, failed)
    if changed and verdict != "identical":
        reason += f"; inputs changed since the job ran: {', '.join(changed)}"
    diffs.sort(key=lambda d: (d.within, -d.value if d.value == d.value else 0))
    return {"job": key, "stage": job["command"][1], "verdict": verdict, "reason": reason, "seconds": seconds,
            "environment_changes": {k: list(v) for k, v in env_changes.items()}, "inputs_changed": changed,
            "differences": [asdict(d) for d in diffs]}


def study_jobs(study: str) -> dict[str, dict]:
    root = Path("results") / study
    if not (root / env_mod.JOB_FILE).is_file():
        raise VerifyError(f"{root / env_mod.JOB_FILE} not found: run the study (make run) or restore it "
                          f"(make pull STUDY={study}) first, with a forgetlab that records its jobs")
    try:
        return env_mod.upstream([root])
    except ValueError as e:
        raise VerifyError(str(e)) from e


def verify(study: str, n: int | None = None, seed: int = 0, threads: int | None = None,
           stages: list[str] | None = None, scratch: Path | None = None, echo=print) -> dict:
    """Rerun and compare a sample of the study's jobs (from the study's root, the current directory)."""
    jobs = study_jobs(study)
    chosen = sample(jobs, n, seed, stages)
    scratch = Path(scratch).resolve() if scratch else None
    if scratch is None:
        import tempfile

        scratch = Path(tempfile.mkdtemp(prefix=f"forgetlab-verify-{study}-"))
    scratch.mkdir(parents=True, exist_ok=True)
    echo(f"verify {study}: {len(chosen)} of {len(jobs)} jobs (seed {seed}"
         f"{f', {threads} threads' if threads else ''}), rerun in {scratch}")
    results = []
    for key in chosen:
        result = verify_job(key, jobs[key], scratch, threads)
        results.append(result)
        echo(f"  {result['verdict']:<10} {result['stage']:<12} {key} ({result['seconds']} s): {result['reason']}")
        for d in result["differences"][:5]:
            echo(f"      {Diff(**d).line()}")
    worst = max((r["verdict"] for r in results), key=VERDICTS.index)
    fields = sorted({k for r in results for k in r["environment_changes"] if k not in env_mod.INFO_FIELDS})
    summary = {"study": study, "seed": seed, "threads": threads, "scratch": str(scratch), "verdict": worst,
               "environment_fields": fields, "tolerances": {k: list(v) for k, v in TOLERANCES.items()},
               "text_rows": TEXT_ROWS, "jobs": results}
    (scratch / "verify.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    echo(f"verdict: {worst}" + (f" (environment differs: {', '.join(fields)})" if fields else ""))
    return summary
