"""Training paths through Snakemake on config/paths_smoke.yaml: the DAG it plans (a dry run) and
the whole study run end to end, read back from its tables, its figure and MLflow."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.helpers import REPO, cli_env, dry_run

pytestmark = pytest.mark.e2e

RES = "results/paths_smoke"
TARGETS = {"authors_world": "stages/authors/world/target", "world_authors": "stages/world/authors/target"}
ORACLES = {"authors_world": "stages/authors/world/forget10/oracle", "world_authors": "stages/world/authors/forget10/oracle"}
CROSS = ("path_spread.csv", "path_tests.csv", "cross_oracle.csv", "path_trajectories.csv", "path_trajectories.png")


def paths_config() -> dict:
    return yaml.safe_load((REPO / "config" / "paths_smoke.yaml").read_text())


def finetuned(seed, model):
    return f"{RES}/finetune/none/seed{seed}/{model}/model"


def test_the_dag_shares_prefixes_and_starts_every_method_from_its_paths_target(tmp_path):
    jobs = dry_run(paths_config(), tmp_path)
    stage_jobs = [j for j in jobs if j["rule"] == "finetune"]
    outputs = Counter(j["output"][0] for j in stage_jobs)
    # each stage model once: shared prefixes (and the oracle's chain before its authors stage) planned once
    starts = {"stages/authors/target": None, "stages/authors/forget10/oracle": None,
              "stages/authors/world/target": "stages/authors/target",
              "stages/authors/world/forget10/oracle": "stages/authors/forget10/oracle",
              "stages/world/target": None, "stages/world/authors/target": "stages/world/target",
              "stages/world/authors/forget10/oracle": "stages/world/target"}
    assert outputs == Counter({finetuned(s, m): 1 for s in (0, 1) for m in starts})
    for job in stage_jobs:
        seed, model = job["wildcards"]["seed"], job["wildcards"]["tuned"]
        start = starts[model]
        assert job["input"][0] == (f"{RES}/pretrain/model" if start is None else finetuned(seed, start))
    unlearn = [j for j in jobs if j["rule"] == "unlearn"]
    assert len(unlearn) == 2 * 2 * 2  # paths x seeds x methods
    for job in unlearn:
        w = job["wildcards"]
        assert job["input"][0] == finetuned(w["seed"], TARGETS[w["path"]])
        assert job["output"] == [f"{RES}/unlearn/none/seed{w['seed']}/{w['path']}/forget10/{w['method']}/model"]
    evals = [j for j in jobs if j["rule"] == "evaluate"]
    assert Counter(j["wildcards"]["path"] for j in evals) == {"authors_world": 8, "world_authors": 8}
    for job in evals:
        w = job["wildcards"]
        cell = f"{RES}/eval/none/seed{w['seed']}/{w['path']}/forget10"
        model = {"target": finetuned(w["seed"], TARGETS[w["path"]]), "oracle": finetuned(w["seed"], ORACLES[w["path"]])}
        assert job["input"][0] == model.get(w["model"], f"{RES}/unlearn/none/seed{w['seed']}/{w['path']}/forget10/{w['model']}/model")
        if w["model"] != "oracle":  # scored against its own path's oracle
            assert f"{cell}/oracle/samples.parquet" in job["input"]
    report = next(j for j in jobs if j["rule"] == "report")
    assert {f"{RES}/{name}" for name in CROSS} <= set(report["output"])
    commands = next(j for j in jobs if j["rule"] == "shell")["commands"]
    assert sum("forgetlab unlearn" in c and "--at path=" in c for c in commands) == len(unlearn)
    assert sum("forgetlab finetune" in c and "--at stages=" in c for c in commands) == len(stage_jobs)


def test_an_entry_on_one_path_plans_that_paths_jobs_only(tmp_path):
    config = paths_config()
    config["regularizers"]["none_aa"] = {"regularizers": [{"name": "none"}], "data_order_seed": 1, "paths": ["authors_world"]}
    jobs = dry_run(config, tmp_path)
    tuned = {j["wildcards"]["tuned"] for j in jobs if j["rule"] == "finetune" and j["wildcards"]["reg"] == "none_aa"}
    assert tuned == {"stages/authors/target", "stages/authors/forget10/oracle", TARGETS["authors_world"],
                     ORACLES["authors_world"]}  # authors_world's chain, no world-first stage
    for rule, per_seed in (("unlearn", 2), ("evaluate", 4)):  # methods; target, oracle and the methods
        cells = Counter(j["wildcards"]["path"] for j in jobs if j["rule"] == rule and j["wildcards"]["reg"] == "none_aa")
        assert cells == {"authors_world": 2 * per_seed}
        assert Counter(j["wildcards"]["path"] for j in jobs if j["rule"] == rule and j["wildcards"]["reg"] == "none") \
            == {"authors_world": 2 * per_seed, "world_authors": 2 * per_seed}
    report = next(j for j in jobs if j["rule"] == "report")
    assert f"{RES}/eval/none_aa/seed0/authors_world/forget10/npo/metrics.json" in report["input"]
    assert not [f for f in report["input"] if "none_aa" in f and "world_authors" in f]


def test_one_path_plans_no_cross_path_output(tmp_path):
    config = paths_config()
    config["paths"] = {"authors_world": ["authors", "world"]}
    report = next(j for j in dry_run(config, tmp_path) if j["rule"] == "report")
    assert not {f"{RES}/{name}" for name in CROSS} & set(report["output"])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    work = tmp_path_factory.mktemp("paths") / "work"
    work.mkdir()
    for item in ("Snakefile", "workflow", "config"):
        (shutil.copytree if (REPO / item).is_dir() else shutil.copy2)(REPO / item, work / item)
    proc = subprocess.run(["snakemake", "report", "--cores", "2", "--configfile", "config/paths_smoke.yaml"],
                          cwd=work, env=cli_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work / RES


def test_the_summary_has_a_row_per_model_of_each_path(study):
    summary = pd.read_csv(study / "summary.csv")
    assert list(summary.columns[:8]) == ["study", "stage", "model", "regularizer", "method", "split", "seed", "path"]
    models = summary[summary["model"] != "pretrained"]
    assert Counter(models["path"]) == {"authors_world": 8, "world_authors": 8}  # seeds x (target, oracle, 2 methods)
    assert summary.loc[summary["model"] == "pretrained", "path"].isna().all()
    # every unlearned model started from its own path's target and was scored against its own oracle
    for row in models[models["model"] == "unlearned"].itertuples():
        assert row.model_path == f"{RES}/unlearn/none/seed{int(row.seed)}/{row.path}/forget10/{row.method}/model"
    assert (models.loc[models["model"] == "oracle", "forget_quality"] == 1.0).all()


def test_the_cross_path_tables(study):
    summary = pd.read_csv(study / "summary.csv")
    spread = pd.read_csv(study / "path_spread.csv")
    # no relearn_recovery here; the study's utility (report.utility: model_utility_value) in TOFU's place
    assert set(spread["metric"]) == {"forget_quality", "model_utility_value", "steps_to_threshold"}
    assert (spread["n_paths"] == 2).all() and (spread["spread"] >= 0).all()
    assert set(spread["method"]) == {"grad_ascent", "npo", "target"}
    tests = pd.read_csv(study / "path_tests.csv")
    assert set(tests["path"]) == {"world_authors"} and set(tests["reference_path"]) == {"authors_world"}
    assert (tests["n_model_pairs"] == 4).all() and (tests["n_pairs"] == 2).all()  # 2 methods x 2 seeds; the seed is the unit
    assert "model_utility_value" in set(tests["metric"]) and "model_utility" not in set(tests["metric"])
    assert "world_authors vs authors_world (all regularizers): model utility on the value after unlearning" in (
        study / "findings.md").read_text()
    cross = pd.read_csv(study / "cross_oracle.csv")
    assert len(cross) == 2 * 2 * 3 * 2  # seeds x model paths x (target, 2 methods) x oracle paths
    own = cross[cross["own_oracle"]].merge(
        summary.assign(method=summary["method"].fillna(summary["model"])), on=["method", "seed", "path"], suffixes=("", "_summary"))
    assert len(own) == 12 and own["forget_quality"].tolist() == pytest.approx(own["forget_quality_summary"].tolist())
    mass = pd.read_csv(study / "path_trajectories.csv")
    assert set(mass["path"]) == {"authors_world", "world_authors"} and (mass["n_seeds"] == 2).all()
    assert (study / "path_trajectories.png").stat().st_size > 10_000


def test_mlflow_runs_carry_the_path(study):
    client = MlflowClient(f"sqlite:///{study.parent / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("paths_smoke").experiment_id], max_results=1000)
    unlearn = [r for r in runs if r.data.tags["stage"] == "unlearn"]
    assert Counter(r.data.tags["path"] for r in unlearn) == {"authors_world": 4, "world_authors": 4}
    assert all(r.data.params["path"] == r.data.tags["path"] for r in unlearn)
    stages = Counter(r.data.tags["stages"] for r in runs if r.data.tags["stage"] == "finetune")
    assert stages == {"authors": 4, "authors,world": 4, "world": 2, "world,authors": 4}
    # each stage job trained with the seed drawn from (seed, its prefix), logged with its data-order seed
    from forgetlab.recipes.finetune import stage_seed
    for run in (r for r in runs if r.data.tags["stage"] == "finetune"):
        seed = stage_seed(int(run.data.params["seed"]), {"stages": run.data.tags["stages"]})
        assert run.data.metrics["train_seed"] == seed == run.data.metrics["loader_seed"], run.data.tags
