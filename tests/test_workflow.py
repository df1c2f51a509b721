"""End to end: the whole DAG through Snakemake on config/smoke.yaml, read back from the outputs,
from MLflow, and from a DVC round trip into a fresh clone, where `forgetlab verify` reruns jobs."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from forgetlab import environment, memory
from forgetlab.config import entry_components, sequential_runs
from forgetlab.recipes.report import ID_COLUMNS as REPORT_IDS
from tests.helpers import REPO, cli_env, commit_all, copy_workflow, sh, smoke_config, stop_fork_servers

pytestmark = pytest.mark.e2e

CONFIG = "config/smoke.yaml"
ID_COLUMNS = ["study", "stage", "model", "regularizer", "method", "split", "seed", "sequential_step"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A git + DVC checkout of the workflow with the smoke study run in it."""
    work = tmp_path_factory.mktemp("e2e") / "work"
    work.mkdir()
    # the Makefile and pyproject.toml (its mtime kept, so that `make` sees this venv as installed)
    # let the test run the documented `make` commands as written, with this interpreter's venv
    copy_workflow(work, "config", "Makefile", "pyproject.toml")
    remote = work.parent / "dvc-remote"
    commit_all(work)
    sh("dvc", "remote", "modify", "--local", "local", "url", remote, cwd=work)
    run = sh("make", "run", f"CONFIG={CONFIG}", "CORES=2", *MAKE_VENV, cwd=work)  # README: make run
    return {"work": work, "remote": remote, "log": run.stdout + run.stderr}


# the venv this test runs in, for the Makefile (whose install step it already satisfies)
MAKE_VENV = (f"VENV={Path(sys.executable).parent.parent}",)


@pytest.fixture(scope="module")
def pulled(study, tmp_path_factory):
    """The finished study pushed with DVC, committed, and restored by `forgetlab pull` in a fresh clone."""
    work = study["work"]
    assert (work / "results" / "smoke.dvc").exists() and (work / "data" / "smoke.dvc").exists()
    # docs/running.md's round trip, as written: make push, git add + commit, then make pull in a clone
    sh("make", "push", "STUDY=smoke", *MAKE_VENV, cwd=work)
    sh("git", "add", "data/smoke.dvc", "results/smoke.dvc", cwd=work)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke study", cwd=work)

    clone = tmp_path_factory.mktemp("pulled") / "clone"
    sh("git", "clone", "-q", work, clone, cwd=clone.parent)
    assert not (clone / "results" / "smoke" / "summary.parquet").exists()
    sh("dvc", "remote", "modify", "--local", "local", "url", study["remote"], cwd=clone)
    for item in (".venv",):  # a clone has no venv; the Makefile is pointed at this one
        assert not (clone / item).exists()
    shutil.copy2(REPO / "pyproject.toml", clone / "pyproject.toml")  # the clone's own copy, mtime kept
    sh("make", "pull", "STUDY=smoke", f"CONFIG={CONFIG}", *MAKE_VENV, cwd=clone)
    return clone


def n_sequential_steps(config):
    seq = sequential_runs(config)
    return len(seq["regularizers"]) * len(config["seeds"]) * len(seq["splits"]) * len(seq["methods"]) * seq["chunks"]


def n_models(config):
    grid = len(config["regularizers"]) * len(config["seeds"]) * len(config["splits"])
    # pretrained per split; target, oracle, methods; every step of the sequential runs
    return len(config["splits"]) + grid * (2 + len(config["methods"])) + n_sequential_steps(config)


def test_summary_has_one_row_per_model_and_a_column_per_metric(study):
    config = smoke_config()
    res = study["work"] / "results" / "smoke"
    table = pd.read_parquet(res / "summary.parquet")
    assert len(table) == n_models(config)
    assert set(ID_COLUMNS) <= set(table.columns)
    for metric in ("forget_quality", "model_utility", "forget_prob", "retain_rouge", "forget_truth_ratio"):
        assert metric in table.columns
    assert table.groupby(ID_COLUMNS, dropna=False).size().max() == 1
    assert sorted(table["model"].unique()) == ["oracle", "pretrained", "sequential", "target", "unlearned"]
    assert set(table.loc[table.model == "unlearned", "method"]) == set(config["methods"])
    assert (table.loc[table.model == "oracle", "forget_quality"] == 1.0).all()
    # the unlearning trajectory becomes steps_to_threshold (censored, never NaN) for every unlearned model
    unlearned = table[table.model == "unlearned"]
    assert unlearned["threshold_reached"].isin([0.0, 1.0]).all()
    assert (unlearned["steps_to_threshold"] >= 0).all()
    assert table.loc[~table.model.isin(["unlearned", "sequential"]), "steps_to_threshold"].isna().all()
    # and the matched comparison: reached (1) with its metrics, or not (0) with NaN
    reached = unlearned["matched_reached"] == 1.0
    assert unlearned["matched_reached"].isin([0.0, 1.0]).all()
    assert unlearned.loc[reached, "matched_forget_quality"].between(0, 1).all()
    assert unlearned.loc[~reached, "matched_forget_quality"].isna().all()
    assert unlearned["collapsed"].isin([0.0, 1.0]).all() and table.loc[table.model == "oracle", "collapsed"].isna().all()
    assert (res / "findings.md").read_text().startswith("# Findings of study smoke")
    csv = pd.read_csv(res / "summary.csv")
    assert len(csv) == len(table) and list(csv.columns) == list(table.columns)
    assert (res / "forget_quality_vs_utility.png").stat().st_size > 10_000
    # per-sample values kept next to the aggregates, one row per QA of each evaluation split
    samples = pd.read_parquet(res / "eval" / "none" / "seed0" / "forget10" / "npo" / "samples.parquet")
    forget_rows = sum(1 for _ in open(study["work"] / "data" / "smoke" / "qa" / "forget10.jsonl"))
    assert (samples["split"] == "forget").sum() == forget_rows
    assert {"truth_ratio", "prob", "rouge_l_recall", "generated"} <= set(samples.columns)


def test_mlflow_runs_match_the_summary(study):
    work = study["work"]
    client = MlflowClient(f"sqlite:///{work / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert all(r.info.status == "FINISHED" for r in runs)
    head = sh("git", "rev-parse", "HEAD", cwd=work).stdout.strip()
    assert {r.data.tags["git_commit"] for r in runs} == {head}
    stages = pd.Series([r.data.tags["stage"] for r in runs]).value_counts().to_dict()
    config = smoke_config()
    n_grid = len(config["regularizers"]) * len(config["seeds"])
    # a target and an oracle per entry; an entry with a soup makes k ingredients of each plus 2 soups
    soup_k = [entry["soup"]["k"] for entry in config["regularizers"].values() if isinstance(entry, dict)]
    n_finetune = (2 * (len(config["regularizers"]) - len(soup_k)) + sum(2 * k + 2 for k in soup_k)) * len(config["seeds"])
    assert soup_k, "the smoke study exercises the soup fan-in"
    n_unlearn = n_grid * len(config["methods"]) + n_sequential_steps(config)
    assert stages == {"prepare_data": 1, "pretrain": 1, "finetune": n_finetune, "unlearn": n_unlearn,
                      "evaluate": n_models(config), "report": 1}
    soups = [r for r in runs if "fan_in" in r.data.tags]
    assert len(soups) == 2 * len(soup_k) and all(r.data.metrics["soup_ingredients"] == soup_k[0] for r in soups)
    ingredients = [r for r in runs if "ingredient" in r.data.tags]
    assert sorted(int(r.data.tags["ingredient"]) for r in ingredients) == sorted(list(range(soup_k[0])) * 2)

    table = pd.read_parquet(work / "results" / "smoke" / "summary.parquet")
    evals = [r for r in runs if r.data.tags["stage"] == "evaluate"]
    for run in evals:
        t = run.data.tags
        row = table[(table.model == t["model"]) & (table.split == t["split"])
                    & (table.regularizer.fillna("") == t.get("regularizer", ""))
                    & (table.method.fillna("") == t.get("method", ""))
                    & (table.sequential_step.astype("string").fillna("") == t.get("sequential_step", ""))]
        assert len(row) == 1, t
        row = row.iloc[0]
        assert run.data.metrics, t
        for name, value in run.data.metrics.items():
            if name in memory.METRICS:  # the job's peak memory: in MLflow, not in the summary
                continue
            assert value == pytest.approx(row[name], rel=1e-9), (t, name)
        nan_metrics = [c for c in table.columns if c not in REPORT_IDS and math.isnan(row[c])]
        assert not set(nan_metrics) & set(run.data.metrics)
        if t.get("regularizer"):  # the regularizer's name and params, in MLflow and in the summary
            spec = entry_components(smoke_config(), t["regularizer"])
            assert json.loads(run.data.params["regularizers"]) == spec
            assert json.loads(row["regularizer_params"]) == spec

    for run in (r for r in runs if r.data.tags["stage"] in ("pretrain", "finetune", "unlearn") and "fan_in" not in r.data.tags):
        steps = int(run.data.metrics.get("train_steps") or run.data.metrics.get("unlearn_steps") or run.data.metrics["pretrain_steps"])
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in history] == list(range(steps))
        assert len(client.get_metric_history(run.info.run_id, "lr")) == steps
        assert len(client.get_metric_history(run.info.run_id, "grad_norm")) == steps
        assert float(run.data.params["train.lr"]) == config[run.data.tags["stage"]]["lr"]
        assert run.data.tags["artifact_path"].startswith("results/smoke/")
        if run.data.tags["stage"] == "unlearn":  # the trajectory: the start, every eval_every steps, the end
            every = config["unlearn"]["eval_every"]
            traj = [m.step for m in client.get_metric_history(run.info.run_id, "traj_forget_prob")]
            assert traj == sorted({0, steps, *range(every, steps + 1, every)})

    report = next(r for r in runs if r.data.tags["stage"] == "report")
    names = {a.path for a in client.list_artifacts(report.info.run_id)}
    assert {"summary.parquet", "summary.csv", "forget_quality_vs_utility.png"} <= names


def test_sequential_steps_chain_and_are_rows_of_the_summary(study):
    """Each sequential run: k steps in the summary; step j started from step j-1's model (step 1
    from the target), kept the target as its reference, unlearned one chunk; and the figure."""
    config = smoke_config()
    seq = sequential_runs(config)
    assert seq["methods"], "the smoke study exercises sequential unlearning"
    k = seq["chunks"]
    work, res = study["work"], study["work"] / "results" / "smoke"
    table = pd.read_parquet(res / "summary.parquet")
    steps = table[table.model == "sequential"]
    assert len(steps) == n_sequential_steps(config)
    assert table.loc[table.model != "sequential", ["sequential_step", "sequential_chunks"]].isna().all().all()
    for reg in seq["regularizers"]:
        for seed in config["seeds"]:
            for split in seq["splits"]:
                for method in seq["methods"]:
                    run = steps[(steps.regularizer == reg) & (steps.seed == seed) & (steps.split == split) & (steps.method == method)]
                    assert run["sequential_step"].tolist() == list(range(1, k + 1))
                    assert (run["sequential_chunks"] == k).all() and run["forget_quality"].notna().all()
                    target = f"results/smoke/finetune/{reg}/seed{seed}/target/model"
                    base = f"results/smoke/unlearn/{reg}/seed{seed}/{split}/sequential/{method}"
                    unlearned = 0
                    for j in range(1, k + 1):
                        assert run.iloc[j - 1]["model_path"] == f"{base}/step{j}/model"
                        stage = json.loads((work / base / f"step{j}" / "model" / "forgetlab_stage.json").read_text())
                        assert stage["start_model"] == (target if j == 1 else f"{base}/step{j - 1}/model")
                        assert stage["reference_model"] == target
                        assert (stage["sequential_step"], stage["sequential_chunks"]) == (j, k)
                        unlearned += stage["forget_examples"]
                    assert unlearned == sum(1 for _ in open(work / "data" / "smoke" / "qa" / f"{split}.jsonl"))

    client = MlflowClient(f"sqlite:///{work / 'results' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id], max_results=1000)
    tagged = Counter((r.data.tags["stage"], r.data.tags["sequential_step"]) for r in runs if "sequential_step" in r.data.tags)
    per_step = n_sequential_steps(config) // k
    assert tagged == {(stage, str(j)): per_step for stage in ("unlearn", "evaluate") for j in range(1, k + 1)}
    assert all(r.data.tags["model"] == "sequential" for r in runs if "sequential_step" in r.data.tags)
    report = next(r for r in runs if r.data.tags["stage"] == "report")
    assert "sequential_unlearning.png" in {a.path for a in client.list_artifacts(report.info.run_id)}
    assert (res / "sequential_unlearning.png").stat().st_size > 10_000


def test_second_invocation_has_nothing_to_do(study):
    proc = sh("snakemake", "-n", "--cores", "2", "--configfile", CONFIG, cwd=study["work"])
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_a_changed_method_setting_reruns_that_methods_jobs_only(study, tmp_path):
    """The rerun trigger (each job's resolved params): in a copy of the finished study, a new gamma
    for grad_diff plans its unlearning and evaluation in each of the 3 grid cells (3 regularizers x
    1 seed x 1 split), then the report, `track` and `all`; no other job."""
    work = tmp_path / "work"
    shutil.copytree(study["work"], work, symlinks=True)  # copy2 keeps the mtimes Snakemake compares
    config = smoke_config()
    config["methods"]["grad_diff"]["gamma"] = 2.0
    (work / "changed.yaml").write_text(yaml.safe_dump(config, sort_keys=False))  # key order kept: params compare as text
    plan = sh("snakemake", "-n", "--cores", "2", "--configfile", "changed.yaml", cwd=work).stdout
    stats = dict(re.findall(r"^(\w+)\s+(\d+)$", plan.split("Job stats:")[1].split("Reasons:")[0], re.MULTILINE))
    assert stats == {"unlearn": "3", "evaluate": "3", "report": "1", "track": "1", "all": "1", "total": "9"}, plan[-3000:]
    unlearned = re.findall(r"^\s*rule unlearn:\n(?:\s+\w+: .*\n)*?\s+wildcards: (.*)\n", plan, re.MULTILINE)
    assert sorted(unlearned) == [f"reg={r}, seed=0, split=forget10, method=grad_diff" for r in ("dropout", "none", "soup_zloss")]
    # the unlearning jobs for their params; their evaluations (whose params changed too) for their new inputs
    assert plan.count("Params have changed since last execution") == 3


def test_every_job_records_its_environment_and_the_report_sums_them_up(study):
    """env.* tags on every MLflow run, the same record in each job's job.json, one environment."""
    work, config = study["work"], smoke_config()
    client = MlflowClient(f"sqlite:///{work / 'results' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id], max_results=1000)
    sources = set()
    for run in runs:
        record = environment.read_job(work / run.data.tags["artifact_path"])
        sources.add(record["environment"]["forgetlab_source"])
        assert record["mlflow_run_id"] == run.info.run_id and record["command"][0] == "forgetlab"
        assert environment.tags(record["environment"]) == {k: v for k, v in run.data.tags.items() if k.startswith("env.")}
        stage = run.data.tags["stage"]
        if stage in config["threads"] and "fan_in" not in run.data.tags:  # a soup averages: no threads setting
            assert record["environment"]["threads"] == config["threads"][stage]
    summary = json.loads((work / "results" / "smoke" / "environment.json").read_text())
    assert summary["jobs"] == summary["recorded"] == len(runs)
    # one environment; only the code's digest may vary, when the working tree is edited under the test
    varying = [k for k in summary["varying"] if k not in environment.INFO_FIELDS]
    assert varying == (["forgetlab_source"] if len(sources) > 1 else [])
    assert len(summary["warnings"]) == len(varying)
    assert summary["environment"]["torch"] == environment.collect()["torch"]


def verify(clone, tmp_path, *args, forkserver: str | None = None):
    """`forgetlab verify smoke` in the clone, FORGETLAB_FORKSERVER unset (verify's default) or set to
    `forkserver`; its fork servers, if any, live in tmp_path/servers. Returns their pids too."""
    out, servers = tmp_path / "verify.json", tmp_path / "servers"
    env = cli_env(FORGETLAB_FORKSERVER_DIR=str(servers))
    env.pop("FORGETLAB_FORKSERVER", None)
    if forkserver is not None:
        env["FORGETLAB_FORKSERVER"] = forkserver
    cmd = ["forgetlab", "verify", "smoke", "--scratch", str(tmp_path / "scratch"), "--json", str(out), *map(str, args)]
    try:
        proc = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True)
    finally:
        pids = stop_fork_servers(servers)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout, pids


def test_verify_in_a_fresh_clone_reports_identical(pulled, tmp_path):
    """Rerun one job of each stage from the pulled study's inputs: bit-identical outputs, the reruns
    served by one fork server (as the Snakefile's jobs are), started by the first of them."""
    result, text, servers = verify(pulled, tmp_path)
    jobs = environment.upstream(["results/smoke"], root=pulled)
    assert {j["stage"] for j in result["jobs"]} == {job["command"][1] for job in jobs.values()}
    assert [j["verdict"] for j in result["jobs"]] == ["identical"] * len(result["jobs"]), text
    assert result["verdict"] == "identical" and set(result["environment_fields"]) <= {"forgetlab_source"}  # see above
    assert "verdict: identical" in text
    assert len(servers) == 1, f"reruns served by {len(servers)} fork servers"


def test_verify_with_another_thread_count_names_the_field(pulled, tmp_path):
    recorded = environment.read_job(pulled / "results" / "smoke" / "pretrain" / "model")["environment"]["threads"]
    # FORGETLAB_FORKSERVER=0: the rerun in a fresh process, no server
    result, text, servers = verify(pulled, tmp_path, "--threads", recorded + 1, "--stage", "pretrain", forkserver="0")
    assert servers == [] and not (tmp_path / "servers").exists()
    assert "threads" in result["environment_fields"], text
    assert f"threads {recorded} -> {recorded + 1}" in text
    # whether another thread count changes the bits depends on the machine's kernels (the tiny smoke
    # model's matmuls may not be split at all): the verdict must follow the rerun's own differences
    (job,) = result["jobs"]
    if job["differences"]:
        assert job["verdict"] in ("equivalent", "different"), text
    else:
        assert job["verdict"] == "identical" and "threads" in job["reason"], text


def test_dvc_round_trip_restores_the_finished_study(study, pulled):
    work, clone = study["work"], pulled
    restored = pd.read_parquet(clone / "results" / "smoke" / "summary.parquet")
    pd.testing.assert_frame_equal(restored, pd.read_parquet(work / "results" / "smoke" / "summary.parquet"))
    plan = sh("snakemake", "-n", "--cores", "2", "--configfile", CONFIG, cwd=clone)
    assert "Nothing to be done" in plan.stdout + plan.stderr

    # the report rebuilds from the restored evaluations, with no training job
    model_file = clone / "results" / "smoke" / "unlearn" / "none" / "seed0" / "forget10" / "npo" / "model" / "model.safetensors"
    before = model_file.stat().st_mtime_ns
    rebuilt = sh("snakemake", "--cores", "2", "--configfile", CONFIG, "--forcerun", "report", cwd=clone)
    jobs = rebuilt.stdout + rebuilt.stderr
    assert "rule report:" in jobs or "localrule report:" in jobs
    for rule in ("pretrain", "finetune", "soup", "unlearn", "evaluate"):
        assert f"rule {rule}:" not in jobs
    assert model_file.stat().st_mtime_ns == before


def test_html_report_has_the_summary_and_the_plot(study, tmp_path):
    report = tmp_path / "report.html"
    sh("snakemake", "--report", report, "--configfile", CONFIG, cwd=study["work"])
    html = report.read_text(errors="replace")
    assert "summary.csv" in html and "forget_quality_vs_utility.png" in html and "sequential_unlearning.png" in html
