"""End to end: the whole DAG through Snakemake on a TOFU study (config/tofu.yaml cut down to a tiny
grid) over fixture files in TOFU's published layout and a tiny random Llama with a chat template,
prompt_format chat_template; read back from the outputs and from MLflow."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.fixtures_tofu import tiny_checkpoint, tofu_files, tofu_study, write_tofu
from tests.helpers import REPO, cli_env, commit_all, copy_workflow

pytestmark = pytest.mark.e2e

METRICS = ["forget_quality", "model_utility", "forget_truth_ratio", "real_authors_option_prob", "privleak", "verbmem"]


def tiny(config: dict) -> dict:
    """The cluster config's keys, with a grid and training small enough for 2 CPU cores."""
    config.update(study="tofu_e2e", splits=["forget10"], precision="fp32",
                  threads={"pretrain": 1, "finetune": 1, "unlearn": 1, "evaluate": 1},
                  regularizers={"none": [{"name": "none"}]},
                  methods={"grad_diff": config["methods"]["grad_diff"], "npo": config["methods"]["npo"]},
                  finetune={**config["finetune"], "epochs": 2, "batch_size": 8, "lr": 1.0e-3, "max_length": 64},
                  unlearn={**config["unlearn"], "epochs": 2, "batch_size": 2, "lr": 1.0e-4, "max_length": 64,
                           "eval_every": 2},
                  evaluate={"batch_size": 32, "max_new_tokens": 8, "metrics": METRICS})
    config.pop("resources")
    return config


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    work = tmp_path_factory.mktemp("tofu_e2e") / "work"
    copy_workflow(work, "config")
    files = write_tofu(work.parent / "tofu")
    config = tiny(tofu_study(REPO, files, tiny_checkpoint(work.parent / "Llama-tiny-Instruct")))
    (work / "config" / "tofu_e2e.yaml").write_text(yaml.safe_dump(config))
    commit_all(work)  # for DVC's track
    proc = subprocess.run(["snakemake", "--cores", "2", "--configfile", "config/tofu_e2e.yaml"], cwd=work,
                          env=cli_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return {"work": work, "config": config, "res": work / "results" / "tofu_e2e"}


def test_summary_has_every_model_with_tofus_metrics(study):
    table = pd.read_parquet(study["res"] / "summary.parquet")
    assert sorted(table["model"]) == ["oracle", "pretrained", "target", "unlearned", "unlearned"]
    assert set(table.loc[table.model == "unlearned", "method"]) == {"grad_diff", "npo"}
    assert (table.loc[table.model == "oracle", "forget_quality"] == 1.0).all()
    trained = table[table.model != "pretrained"]
    assert trained["forget_quality"].between(0, 1).all() and trained["model_utility"].between(0, 1).all()
    for metric in ("forget_truth_ratio", "real_authors_option_prob", "forget_verbmem"):
        assert table[metric].notna().all(), metric
    assert trained["privleak"].notna().all() and table.loc[table.model == "pretrained", "privleak"].isna().all()


def test_evaluation_reads_tofus_retain_set_and_the_splits_holdout(study):
    files = tofu_files()
    samples = pd.read_parquet(next((study["res"]).rglob("eval/**/grad_diff/samples.parquet")))
    counts = samples["split"].value_counts().to_dict()
    assert counts == {"forget": len(files["forget10"]), "retain": len(files["retain_perturbed"]),
                      "holdout": len(files["holdout10"]), "real_authors": len(files["real_authors_perturbed"]),
                      "world_facts": len(files["world_facts_perturbed"])}
    retain = samples[samples.split == "retain"]
    assert list(retain["question"]) == [r["question"] for r in files["retain_perturbed"]]
    assert samples.loc[samples.split == "forget", "truth_ratio"].notna().all()


def test_every_model_is_trained_and_scored_in_the_chat_format(study):
    manifest = json.loads((study["work"] / "data" / "tofu_e2e" / "manifest.json").read_text())
    assert manifest["source"] == "tofu" and manifest["rows"]["qa/forget10.jsonl"] == 4
    configs = [p for p in study["res"].rglob("tokenizer_config.json") if ".ckpt" not in str(p)]
    assert len(configs) >= 5  # pretrained, target, oracle and the two unlearned models
    for path in configs:
        assert json.loads(path.read_text())["forgetlab_prompt_format"] == {
            "format": "chat_template", "system": "You are a helpful assistant.",
            "template_kwargs": {"date_string": "10 Apr 2025"}}, path


def test_mlflow_runs_match_the_summary(study):
    client = MlflowClient(f"sqlite:///{study['work'] / 'results' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tofu_e2e").experiment_id], max_results=100)
    assert all(r.info.status == "FINISHED" for r in runs)
    stages = pd.Series([r.data.tags["stage"] for r in runs]).value_counts().to_dict()
    assert stages == {"prepare_data": 1, "pretrain": 1, "finetune": 2, "unlearn": 2, "evaluate": 5, "report": 1}
    pretrain = next(r for r in runs if r.data.tags["stage"] == "pretrain")
    assert pretrain.data.metrics["pretrain_steps"] == 0  # init_from: no pretraining
    prepare = next(r for r in runs if r.data.tags["stage"] == "prepare_data")
    assert prepare.data.metrics["rows_retain_eval"] == len(tofu_files()["retain_perturbed"])
    table = pd.read_parquet(study["res"] / "summary.parquet")
    for run in (r for r in runs if r.data.tags["stage"] == "evaluate"):
        t = run.data.tags
        row = table[(table.model == t["model"]) & (table.method.fillna("") == t.get("method", ""))]
        assert len(row) == 1, t
        for metric in ("forget_quality", "model_utility"):
            if metric in run.data.metrics:
                assert run.data.metrics[metric] == pytest.approx(row.iloc[0][metric], rel=1e-12), (t, metric)
