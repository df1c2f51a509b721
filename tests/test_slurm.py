"""The smoke study on a SLURM cluster through profiles/slurm: every job goes through sbatch.

A one-node SLURM cluster is started on this machine (tests/slurm_cluster.py; skipped, with the
reason, where SLURM cannot be installed or started). The workflow is copied into a fresh git
checkout, as in test_workflow.py, and `snakemake --profile profiles/slurm` runs the smoke study
(reduced to one unlearning method, slurm_smoke_config) with the partition, memory and runtime taken from a second config file's `resources:` section.
The test then reads every MLflow run back: each carries the id of the SLURM job it ran in, and
that id names a log under .snakemake/slurm_logs/.

The evaluations are grouped exactly as the profile groups them. The command line only tunes the
run for a 2-core machine, where each scheduling round trip costs more than a smoke job: the plugin
polls squeue 1 s after a job ends instead of 40 s, snakemake runs through tests/slurm_snakemake.py,
which caps the plugin's backoff between idle polls at 3 s (it adds 10 s per idle poll, and has no
option for it), and the other short jobs share sbatch jobs too: data, pretraining and the pretrained evaluation one, each
fine-tuning chain (a target and its unlearned models; an oracle; a soup and its ingredients) one,
report and track one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from forgetlab.config import ConfigError, validate_schema
from tests.helpers import REPO, cli_env, smoke_config
from tests.slurm_cluster import SlurmUnavailable, start_cluster

pytestmark = pytest.mark.slurm

CONFIG = "slurm-smoke.yaml"
RESOURCES = "slurm-test-resources.yaml"
SETUP_RULES = ["prepare_data", "pretrain", "evaluate_pretrained"]
TRAIN_RULES = ["finetune", "soup", "unlearn"]
TIMEOUT = 1200  # seconds for the whole study; a job stuck in the queue fails the test instead of hanging it


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.environ.get("FORGETLAB_SKIP_SLURM"):
        pytest.skip("FORGETLAB_SKIP_SLURM is set")
    try:
        cluster = start_cluster()
    except (SlurmUnavailable, OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"no SLURM cluster on this machine: {e}")
    yield cluster
    cluster.stop()


def sh(*cmd, cwd, timeout=120):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def checkout(work: Path) -> Path:
    """A git checkout of the workflow and its profiles, as test_workflow.py's `study` fixture makes."""
    work.mkdir(parents=True)
    for item in ("Snakefile", "workflow", "config", "profiles", ".dvc/config", ".dvcignore", ".gitignore"):
        dest = work / item
        dest.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (REPO / item).is_dir() else shutil.copy)(REPO / item, dest)
    sh("git", "init", "-q", cwd=work)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "add", ".", cwd=work)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "workflow", cwd=work)
    return work


def slurm_smoke_config() -> dict:
    """The smoke study with one unlearning method, a plain and a soup regularizer entry, and no
    sequential chain: every kind of job still goes through sbatch (a soup's fan-in included), in
    fewer scheduling round trips."""
    config = smoke_config()
    first = next(iter(config["methods"]))
    config["methods"] = {first: config["methods"][first]}
    config["regularizers"] = {k: v for k, v in config["regularizers"].items() if k == "none" or isinstance(v, dict)}
    config.pop("sequential", None)
    return config


def slurm_logs(work: Path) -> dict[str, Path]:
    """SLURM job id -> its log, as the executor plugin writes them (kept by the profile)."""
    return {p.stem.split("_")[0]: p for p in (work / ".snakemake" / "slurm_logs").rglob("*.log")}


def failure_report(work: Path, proc: subprocess.CompletedProcess) -> str:
    logs = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-1500:]}" for p in slurm_logs(work).values()
                     if "rror" in p.read_text(errors="replace"))
    return f"snakemake failed (rc {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}\n{logs}"


@pytest.fixture(scope="module")
def slurm_study(slurm_cluster, tmp_path_factory):
    work = checkout(tmp_path_factory.mktemp("slurm") / "work")
    # partition, memory and runtime come from the study config's resources section (a second
    # config file, laid over the smoke study), never from the profile
    resources = {"default": {"slurm_partition": slurm_cluster.partition, "mem_mb": 1000, "runtime": 30}}
    (work / RESOURCES).write_text(yaml.safe_dump({"resources": resources}))
    (work / CONFIG).write_text(yaml.safe_dump(slurm_smoke_config()))
    cmd = [
        sys.executable, REPO / "tests" / "slurm_snakemake.py", "--profile", "profiles/slurm", "--configfile", CONFIG, RESOURCES,
        # test-machine tuning: poll squeue soon after each job, and fewer, longer sbatch jobs
        "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1",
        "--groups", *[f"{rule}=setup" for rule in SETUP_RULES], *[f"{rule}=train" for rule in TRAIN_RULES],
        "report=finish", "track=finish",
    ]
    start = time.monotonic()
    proc = subprocess.run([str(c) for c in cmd], cwd=work, env=cli_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        pytest.fail(failure_report(work, proc))
    print(f"smoke study on SLURM: {wall:.0f} s")
    return {"work": work, "log": proc.stdout + proc.stderr, "wall": wall, "cluster": slurm_cluster}


def test_every_job_ran_in_a_slurm_job_that_left_a_log(slurm_study):
    work = slurm_study["work"]
    client = MlflowClient(f"sqlite:///{work / 'results' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id], max_results=1000)
    assert {r.data.tags["stage"] for r in runs} == {"prepare_data", "pretrain", "finetune", "unlearn", "evaluate", "report"}
    assert all(r.info.status == "FINISHED" for r in runs)
    missing = [r.info.run_name for r in runs if not r.data.tags.get("slurm_job_id")]
    assert not missing, f"runs without a slurm_job_id tag (not run through sbatch): {missing}"
    ids = {r.data.tags["slurm_job_id"] for r in runs}
    logs = slurm_logs(work)
    assert ids <= set(logs), f"SLURM job ids with no log under .snakemake/slurm_logs: {sorted(ids - set(logs))}"
    for job_id in ids:  # each log is the jobstep's Snakemake run inside that SLURM job
        assert "snakemake" in logs[job_id].read_text(errors="replace").lower()

    # the evaluations of one regularizer/seed/split form a component of the rules' group "evaluate",
    # and the profile packs group-components.evaluate of them into each sbatch job
    config = slurm_smoke_config()
    per_job = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())["group-components"]["evaluate"]
    components = len(config["regularizers"]) * len(config["seeds"]) * len(config["splits"])
    grouped = [r for r in runs if r.data.tags["stage"] == "evaluate" and r.data.tags["model"] != "pretrained"]
    assert len(grouped) == components * (2 + len(config["methods"]))
    assert len({r.data.tags["slurm_job_id"] for r in grouped}) == -(-components // per_job)


def test_sbatch_got_the_partition_from_the_study_config_and_requeue_from_the_profile(slurm_study):
    work, cluster = slurm_study["work"], slurm_study["cluster"]
    client = MlflowClient(f"sqlite:///{work / 'results' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id], max_results=1000)
    inspected = 0
    for job_id in {r.data.tags["slurm_job_id"] for r in runs}:
        show = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30)
        if show.returncode != 0:  # purged already (MinJobAge); nothing left to inspect
            continue
        fields = dict(re.findall(r"(\w+)=(\S+)", show.stdout))
        assert fields["Partition"] == cluster.partition, show.stdout
        assert fields["Requeue"] == "1", show.stdout
        assert fields["JobState"] == "COMPLETED", show.stdout
        inspected += 1
    assert inspected, "slurmctld no longer knows any of the study's jobs"


def test_summary_has_one_row_per_model(slurm_study):
    config = slurm_smoke_config()
    table = pd.read_parquet(slurm_study["work"] / "results" / "smoke" / "summary.parquet")
    grid = len(config["regularizers"]) * len(config["seeds"]) * len(config["splits"])
    assert len(table) == len(config["splits"]) + grid * (2 + len(config["methods"]))  # pretrained; target, oracle, methods
    assert sorted(table["model"].unique()) == ["oracle", "pretrained", "target", "unlearned"]
    assert (slurm_study["work"] / "results" / "smoke.dvc").exists()


def test_nothing_left_to_do_after_the_cluster_run(slurm_study):
    plan = sh("snakemake", "-n", "--profile", "profiles/slurm", "--configfile", CONFIG, RESOURCES, cwd=slurm_study["work"])
    assert "Nothing to be done" in plan.stdout + plan.stderr


# --- without a cluster: the resources section and how the profile resolves it ------------------


@pytest.mark.parametrize(
    "resources, key",
    [
        ({"pretrian": {"mem_mb": 1000}}, "resources"),
        ({"finetune": {"mem": 1000}}, "resources.finetune"),
        ({"finetune": {"gpu": "1"}}, "resources.finetune.gpu"),
        ({"evaluate": {"runtime": 0}}, "resources.evaluate.runtime"),
        ({"evaluate": {"gres": "'gpu:1'"}}, "resources.evaluate.gres"),
    ],
)
def test_a_bad_resources_section_is_rejected_naming_the_key(resources, key):
    config = {**smoke_config(), "resources": resources}
    with pytest.raises(ConfigError, match=rf"^config key {re.escape(key)}: "):
        validate_schema(config)


def test_the_profile_takes_each_stage_s_resources_from_the_study_config(tmp_path):
    work = checkout(tmp_path / "work")
    (work / CONFIG).write_text(yaml.safe_dump(slurm_smoke_config()))
    resources = {
        "default": {"slurm_partition": "gpu", "qos": "normal"},
        "finetune": {"gpu": 1, "mem_mb": 32000, "runtime": 240},
        "evaluate": {"slurm_partition": "cpu", "mem_mb": 4000, "runtime": 15},
    }
    (work / RESOURCES).write_text(yaml.safe_dump({"resources": resources}))
    plan = sh("snakemake", "-n", "--profile", "profiles/slurm", "--configfile", CONFIG, RESOURCES, cwd=work).stdout
    jobs = re.findall(r"^\s*rule (\w+):\n(?:.*\n)*?\s*resources: (.*)$", plan, re.MULTILINE)
    seen = {}
    for rule, line in jobs:
        seen.setdefault(rule, dict(kv.split("=", 1) for kv in line.split(", ")))
    for rule in ("finetune",):
        assert {"gpu": "1", "mem_mb": "32000", "runtime": "240", "slurm_partition": "gpu", "qos": "normal"}.items() <= seen[rule].items()
    for rule in ("evaluate_pretrained", "evaluate"):
        assert {"mem_mb": "4000", "runtime": "15", "slurm_partition": "cpu", "qos": "normal"}.items() <= seen[rule].items()
    # stages the config leaves out fall back to the profile's default-resources
    assert {"mem_mb": "8000", "runtime": "120", "slurm_partition": "gpu"}.items() <= seen["pretrain"].items()
    assert "gpu" not in seen["pretrain"]
    # one component of evaluations per regularizer, seed and split; the profile packs them
    config = slurm_smoke_config()
    per_job = yaml.safe_load((work / "profiles" / "slurm" / "config.yaml").read_text())["group-components"]["evaluate"]
    components = len(config["regularizers"]) * len(config["seeds"]) * len(config["splits"])
    assert plan.count("Group job evaluate") == -(-components // per_job)


def test_the_launcher_caps_the_plugins_poll_backoff():
    import tests.slurm_snakemake as launcher

    executor = launcher.Executor.__new__(launcher.Executor)  # the property alone; no workflow needed
    executor.next_seconds_between_status_checks = 41  # the plugin's wait after four idle polls from 1 s
    assert executor.next_seconds_between_status_checks == launcher.CAP == 3
    executor.next_seconds_between_status_checks = 1  # after a finished job: back to the initial wait
    assert executor.next_seconds_between_status_checks == 1
