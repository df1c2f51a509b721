"""What decides a job's numbers, recorded with every job: `job.json` beside its output.

A job's record (written by tracking.stage_run once the job succeeds, into its output directory):
  command      the exact `forgetlab <stage> ...` command line (None when not run from the CLI)
  cwd          where it ran: the command's relative paths are relative to it
  out          its output directory; inputs: every path in the command but --out, with a digest
  params       the resolved parameters; metrics: the aggregates it logged to MLflow
  environment  the flat record of `collect()`: package versions, the code's digest, the device
               (CPU model and instruction set, or GPU, CUDA and cuDNN), thread counts, precision
               and the determinism settings in force; MLflow gets the same as `env.<field>` tags

Fields fall in three groups: INFO fields are recorded but do not decide the numbers (the host, the
workflow's git commit: the code itself is `forgetlab_source`); JOB_FIELDS are set per stage by the
config (threads, precision); all others are the environment proper. `study_environment` sums up a
study's jobs (the report's environment.json) and warns when they ran in more than one environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import sys
import time
from collections import Counter
from importlib import metadata
from pathlib import Path

JOB_FILE = "job.json"
FORMAT = 1
PACKAGES = ("torch", "transformers", "peft", "numpy", "snakemake", "forgetlab")
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
              "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
              "asimd", "asimdhp", "sve", "sve2")
INFO_FIELDS = ("host", "git_commit", "platform", "snakemake")  # recorded; not thought to move the numbers
# set per stage: a stage's jobs share them (the config's threads.<stage>, precision; seeding stages
# turn deterministic algorithms on), so they are compared within a stage
JOB_FIELDS = ("threads", "omp_num_threads", "world_size", "precision", "compute_dtype", "deterministic_algorithms")
SKIPPED_OPTIONS = ("--out", "--threads", "--at", "--remote")  # options whose value is no input path
UNHASHED = (JOB_FILE, "environment.json")  # written after the job's inputs were read: not part of them


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_info() -> tuple[str, list[str]]:
    """The CPU model name and its SIMD flags that matter to floating-point kernels."""
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "cpu model", "hardware") and model is None:
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), [f for f in SIMD_FLAGS if f in flags]


def source_digest() -> str:
    """A digest of the installed forgetlab code (*.py, *.yaml): it changes with any edit, committed or not."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(p for ext in ("*.py", "*.yaml") for p in root.rglob(ext) if "__pycache__" not in p.parts):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def collect(params: dict | None = None, git_commit: str | None = None) -> dict:
    """The environment of this process now (call it after the job set its threads and seeds)."""
    import torch

    from forgetlab import distributed
    from forgetlab.model import autocast_dtype, device

    params = params or {}
    cpu_model, flags = cpu_info()
    cuda = torch.cuda.is_available()
    precision = params.get("precision", "auto")
    try:
        dtype = autocast_dtype(precision, device())
        compute = str(dtype or torch.float32).replace("torch.", "")
    except ValueError as e:
        compute = f"unavailable ({e})"
    env = {
        "python": platform.python_version(),
        **{name: _version(name) for name in PACKAGES},
        "forgetlab_source": source_digest(),
        "git_commit": git_commit,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "device": "cuda" if cuda else "cpu",
        "cpu_model": cpu_model,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": " ".join(flags),
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "gpu_capability": ".".join(map(str, torch.cuda.get_device_capability())) if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "world_size": distributed.world_size(),
        "precision": precision,
        "compute_dtype": compute,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
    }
    if cuda:
        env.update(cudnn_deterministic=torch.backends.cudnn.deterministic, cudnn_benchmark=torch.backends.cudnn.benchmark,
                   matmul_tf32=torch.backends.cuda.matmul.allow_tf32, cudnn_tf32=torch.backends.cudnn.allow_tf32,
                   cublas_workspace_config=os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    return env


def tags(env: dict) -> dict[str, str]:
    """The record as MLflow tags, `env.<field>`."""
    return {f"env.{k}": str(v) for k, v in env.items()}


def digest(path: str | Path) -> str | None:
    """sha256 of a file, or of a directory's files (names and contents, job records left out)."""
    path = Path(path)
    if path.is_file():
        files, root = [path], path.parent
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name not in UNHASHED
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        root = path
    else:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def job_command() -> list[str] | None:
    """This process's `forgetlab ...` command line, or None when it is not the forgetlab CLI."""
    prog = Path(sys.argv[0])
    if prog.name == "forgetlab" or prog.parts[-2:] == ("forgetlab", "cli.py"):
        return ["forgetlab", *sys.argv[1:]]
    return None


def split_options(command: list[str]) -> list[str]:
    """`--opt=value` as `--opt value`."""
    return [part for arg in command for part in (arg.split("=", 1) if arg.startswith("--") and "=" in arg else [arg])]


def command_paths(command: list[str] | None) -> tuple[str | None, list[str]]:
    """(the --out value, the other existing paths of the command: its inputs)."""
    if not command:
        return None, []
    command = split_options(command)
    out, inputs, skip_next = None, [], False
    for i, arg in enumerate(command[2:], start=2):
        if skip_next:
            skip_next = False
            continue
        if arg in SKIPPED_OPTIONS:
            out = command[i + 1] if arg == "--out" and i + 1 < len(command) else out
            skip_next = True
        elif not arg.startswith("-") and Path(arg).exists():
            inputs.append(arg)
    return out, inputs


class Job:
    """The record of one running job; `finish` writes it into the output directory."""

    def __init__(self, params: dict, out: str | Path, git_commit: str | None = None):
        self.started = time.time()
        self.command = job_command()
        _, inputs = command_paths(self.command)
        self.record = {"format": FORMAT, "stage": params.get("stage"), "command": self.command, "cwd": os.getcwd(),
                       "out": str(out), "inputs": {p: digest(p) for p in inputs}, "params": params,
                       "environment": collect(params, git_commit)}

    @property
    def environment(self) -> dict:
        return self.record["environment"]

    def finish(self, metrics: dict, run_id: str | None, resources: dict | None = None) -> Path | None:
        out = Path(self.record["out"])
        if not out.is_dir():
            return None
        record = {**self.record, "metrics": metrics, "mlflow_run_id": run_id,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
                  "seconds": round(time.time() - self.started, 3)}
        if resources is not None:  # what the job used (its peak memory): not compared by verify
            record["resources"] = resources
        tmp = out / f".{JOB_FILE}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
        os.replace(tmp, out / JOB_FILE)
        return out / JOB_FILE


def read_job(path: str | Path) -> dict:
    """A job record, from the file or from the output directory that holds it."""
    path = Path(path)
    path = path / JOB_FILE if path.is_dir() else path
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the job record {path} ({e})") from e
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path} is not a forgetlab job record (format {FORMAT})")
    return record


def local(path: str, record: dict) -> Path:
    """A path of a job record in this tree: an absolute path under the job's cwd becomes relative."""
    cwd = record.get("cwd") or ""
    if os.path.isabs(path) and cwd and Path(path).is_relative_to(cwd):
        return Path(os.path.relpath(path, cwd))
    return Path(path)


def upstream(paths, root: str | Path = ".") -> dict[str, dict]:
    """Every job that produced `paths` or, transitively, their inputs: output path (relative to
    `root`, the study's root, where the jobs ran) -> record. A path's job is the job.json of the
    directory itself or, for a file, of its directory."""
    root = Path(root)
    jobs, todo = {}, [Path(p) for p in paths]
    while todo:
        path = root / todo.pop()
        for candidate in (path / JOB_FILE, path.parent / JOB_FILE):
            if candidate.is_file():
                key = os.path.relpath(candidate.parent, root)
                if key not in jobs:
                    jobs[key] = read_job(candidate)
                    todo += [local(p, jobs[key]) for p in jobs[key].get("inputs", {})]
                break
    return jobs


def environment_of(env: dict) -> dict:
    """The fields that decide the numbers and are the same for all of a study's jobs."""
    return {k: v for k, v in env.items() if k not in INFO_FIELDS and k not in JOB_FIELDS}


def differences(old: dict, new: dict, fields=None) -> dict[str, tuple]:
    """field -> (old value, new value) for the fields whose values differ."""
    keys = fields if fields is not None else sorted(set(old) | set(new))
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def _counts(values: list) -> dict[str, int]:
    """value -> how many jobs had it, the commonest first."""
    return dict(Counter(map(str, values)).most_common())


def _text(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} ({n} job{'s' * (n > 1)})" for v, n in counts.items())


def study_environment(jobs: dict[str, dict]) -> dict:
    """A study's environment.json: the shared environment, the per-stage settings, and warnings."""
    records = {path: job["environment"] for path, job in jobs.items() if job.get("environment")}
    fields = sorted({k for env in records.values() for k in env})
    shared = {k: next(iter(records.values())).get(k) for k in fields
              if len({json.dumps(env.get(k)) for env in records.values()}) == 1}
    kinds = {path: (jobs[path].get("command") or [None, jobs[path].get("stage")])[1] for path in records}
    varying = {k: _counts([env.get(k) for env in records.values()]) for k in fields
               if k not in shared and k not in JOB_FIELDS}
    per_stage = {}
    for kind in sorted(set(map(str, kinds.values()))):
        envs = [env for path, env in records.items() if str(kinds[path]) == kind]
        per_stage[kind] = {k: _counts([e.get(k) for e in envs]) for k in JOB_FIELDS if any(k in e for e in envs)}
    warnings = []
    numeric = [k for k in varying if k not in INFO_FIELDS]
    if numeric:
        n = len({json.dumps(environment_of(env), sort_keys=True) for env in records.values()})
        warnings.append(f"the study's jobs ran in {n} environments, so their numbers need not be bit-identical "
                        f"to a rerun: " + "; ".join(f"{k}: {_text(varying[k])}" for k in numeric))
    for kind, settings in per_stage.items():
        for k in JOB_FIELDS:
            if len(settings.get(k, {})) > 1:
                warnings.append(f"{kind} jobs ran with different {k}: {_text(settings[k])}")
    return {"jobs": len(jobs), "recorded": len(records), "environment": shared, "varying": varying,
            "per_stage": per_stage, "warnings": warnings}


def describe(summary: dict) -> str:
    """One line: the environment a study ran in."""
    env = {**summary["environment"]}
    device = (f"{env.get('gpu')} (CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')})" if env.get("device") == "cuda"
              else f"{env.get('cpu_model')} ({env.get('cpu_capability')})")
    versions = " ".join(f"{k} {env[k]}" for k in ("python", "torch", "transformers", "peft", "numpy") if env.get(k))
    more = f"; varying across jobs: {', '.join(summary['varying'])}" if summary["varying"] else ""
    return f"environment of {summary['recorded']} jobs: {versions}; {device}; forgetlab {env.get('forgetlab')} " \
           f"source {env.get('forgetlab_source', 'varying')}{more}"
