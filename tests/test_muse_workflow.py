"""End to end on MUSE: the whole DAG through Snakemake on a muse fixture study (generated news
documents in MUSE's layout, a tiny random Llama as model.init_from), trained and unlearned on raw
text and scored with the MUSE metrics on MUSE's own files; read back from the outputs and MLflow.
Also: config/muse_news.yaml, the cluster study, passes `forgetlab check-config` with its paths
pointed at the fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from forgetlab.model import load_tokenizer
from forgetlab.qa import encode_text_chunks
from forgetlab.recipes import read_jsonl
from tests.helpers import REPO, commit_all, copy_workflow, sh
from tests.muse_fixtures import build, study_config, write_config

pytestmark = pytest.mark.e2e

METRICS = ["forget_knowmem", "retain_knowmem", "forget_verbmem", "privleak", "privleak_min_k_plus_plus"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A git + DVC checkout of the workflow with the muse fixture study run in it."""
    root = tmp_path_factory.mktemp("muse-e2e")
    data_path, init_from = build(root / "fixtures")
    work = root / "work"
    work.mkdir()
    copy_workflow(work)
    config = study_config(data_path, init_from)
    config["unlearn"]["lr"] = 1.0e-3
    (work / "config").mkdir()
    write_config(work / "config" / "muse.yaml", config)
    commit_all(work)
    sh("dvc", "remote", "modify", "--local", "local", "url", root / "dvc-remote", cwd=work)
    sh("snakemake", "--cores", "2", "--configfile", "config/muse.yaml", cwd=work)
    return {"work": work, "config": config, "res": work / "results" / config["study"],
            "data": work / "data" / config["study"], "init_from": init_from}


def samples(study, model: str, reg: str = "none") -> pd.DataFrame:
    where = "pretrained/forget" if model == "pretrained" else f"{reg}/seed0/forget/{model}"
    return pd.read_parquet(study["res"] / "eval" / where / "samples.parquet")


def mean_nll(table: pd.DataFrame, split: str) -> float:
    return float(table.loc[table.split == split, "answer_nll"].mean())


def test_the_summary_has_the_muse_metrics_of_every_model(study):
    summary = pd.read_csv(study["res"] / "summary.csv")
    config = study["config"]
    n_regs, n_methods = len(config["regularizers"]), len(config["methods"])
    assert len(summary) == 1 + n_regs * (2 + n_methods)  # pretrained, and per entry target, oracle, methods
    assert set(summary["split"]) == {"forget"}
    trained = summary[summary.model != "pretrained"]
    assert trained[METRICS].notna().all().all()
    assert (trained[METRICS[:3]] >= 0).all().all() and (trained[METRICS[:3]] <= 1).all().all()
    assert (summary.loc[summary.model == "oracle", "privleak"] == 0).all()  # the reference of privleak
    assert (summary.loc[summary.model == "target", "privleak"] < 0).all()  # its forget texts stand out


def test_training_and_unlearning_ran_on_the_raw_text(study):
    pretrained, target, oracle = samples(study, "pretrained"), samples(study, "target"), samples(study, "oracle")
    # the target trained on the forget documents, the oracle did not: its likelihood of them is lower
    assert mean_nll(target, "privleak_forget") < mean_nll(oracle, "privleak_forget") < mean_nll(pretrained, "privleak_forget")
    assert mean_nll(target, "privleak_forget") < mean_nll(target, "privleak_holdout")
    for method in study["config"]["methods"]:  # unlearning raised the forget documents' NLL
        assert mean_nll(samples(study, method), "privleak_forget") > mean_nll(target, "privleak_forget")
    verbmem = target[target.split == "verbmem_forget"]
    assert list(verbmem["verbmem_continuation"]) == [r["gt"] for r in read_jsonl(study["data"] / "verbmem" / "forget.jsonl")]


def chunks(study, parts, max_length: int) -> int:
    tok = load_tokenizer(study["init_from"])
    return sum(len(encode_text_chunks(tok, r["text"], max_length))
               for p in parts for r in read_jsonl(study["data"] / "text" / f"{p}.jsonl"))


def test_mlflow_runs(study):
    client = MlflowClient(f"sqlite:///{study['work'] / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(study["config"]["study"])
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert all(r.info.status == "FINISHED" for r in runs)
    config = study["config"]
    n_regs, n_methods = len(config["regularizers"]), len(config["methods"])
    stages = pd.Series([r.data.tags["stage"] for r in runs]).value_counts().to_dict()
    assert stages == {"prepare_data": 1, "pretrain": 1, "finetune": 2 * n_regs, "unlearn": n_regs * n_methods,
                      "evaluate": 1 + n_regs * (2 + n_methods), "report": 1}
    max_length = config["finetune"]["max_length"]
    examples = {"target": chunks(study, ["forget", "retain1", "retain2"], max_length),
                "oracle": chunks(study, ["retain1", "retain2"], max_length)}
    for run in (r for r in runs if r.data.tags["stage"] == "finetune"):
        assert run.data.metrics["train_examples"] == examples[run.data.tags["model"]]
    summary = pd.read_parquet(study["res"] / "summary.parquet")
    for run in (r for r in runs if r.data.tags["stage"] == "evaluate"):
        t = run.data.tags
        row = summary[(summary.model == t["model"]) & (summary.regularizer.fillna("") == t.get("regularizer", ""))
                      & (summary.method.fillna("") == t.get("method", ""))]
        assert len(row) == 1, t
        for name, value in run.data.metrics.items():
            if name in METRICS:
                assert row.iloc[0][name] == pytest.approx(value), (t, name)
    manifest = json.loads((study["data"] / "manifest.json").read_text())
    assert manifest["source"] == "muse" and "raw/forget.jsonl" in manifest["inputs"]


def test_the_cluster_study_passes_check_config(tmp_path):
    data_path, init_from = build(tmp_path / "fixtures")
    text = (REPO / "config" / "muse_news.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["data"]["path"] == "/path/to/muse-news"
    config["data"]["path"], config["model"]["init_from"] = str(data_path), str(init_from)
    path = write_config(tmp_path / "muse_news.yaml", config)
    proc = sh("forgetlab", "check-config", path, cwd=tmp_path)
    assert proc.stdout.strip() == f"{path}: ok"
    unchanged = sh("forgetlab", "check-config", REPO / "config" / "muse_news.yaml", cwd=tmp_path, check=False)
    assert unchanged.returncode == 2 and "model.init_from" in unchanged.stderr  # the placeholders are not real
