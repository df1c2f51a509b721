"""Every stage runs by hand, outside Snakemake, from the study config and grid coordinates."""

from __future__ import annotations

import subprocess

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from tests.helpers import REPO, cli_env, smoke_config

pytestmark = pytest.mark.e2e


def forgetlab(*args, cwd):
    proc = subprocess.run(["forgetlab", *map(str, args)], cwd=cwd, env=cli_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_stages_by_hand(tmp_path, tiny_model_dir):
    config = REPO / "config" / "smoke.yaml"
    forgetlab("prepare-data", "--config", config, "--out", "data/smoke", cwd=tmp_path)
    assert sum(1 for _ in open(tmp_path / "data/smoke/qa/retain90.jsonl")) > 0

    forgetlab("finetune", "--config", config, "--pretrained", tiny_model_dir, "--data", "data/smoke",
              "--at", "regularizer=dropout", "--at", "seed=0", "--at", "role=oracle", "--at", "split=forget10", "--out", "oracle",
              cwd=tmp_path)
    assert (tmp_path / "oracle" / "model.safetensors").exists()

    forgetlab("evaluate", "--config", config, "--model-dir", tiny_model_dir, "--data", "data/smoke", "--at", "model=pretrained",
              "--at", "split=forget10", "--out", "pretrained-eval", cwd=tmp_path)
    forgetlab("evaluate", "--config", config, "--model-dir", "oracle", "--data", "data/smoke", "--at", "model=oracle",
              "--at", "regularizer=dropout", "--at", "seed=0", "--at", "split=forget10", "--out", "oracle-eval", cwd=tmp_path)
    assert (tmp_path / "oracle-eval" / "samples.parquet").exists()

    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    finetune = next(r for r in runs if r.data.tags["stage"] == "finetune")
    assert finetune.data.tags["role"] == "oracle" and finetune.data.params["retain_split"] == "retain90"
    assert int(finetune.data.metrics["train_examples"]) == sum(1 for _ in open(tmp_path / "data/smoke/qa/retain90.jsonl"))
    evaluate = next(r for r in runs if r.data.tags["stage"] == "evaluate" and r.data.tags["model"] == "oracle")
    assert evaluate.data.metrics["forget_quality"] == 1.0  # an oracle is its own reference
    assert evaluate.data.metrics["mia_reference"] == 0.5  # the oracle is its own reference model: no signal


def test_init_from_skips_pretraining_and_keeps_the_checkpoint(tmp_path, tiny_model_dir, smoke_data):
    config = smoke_config()
    config["model"]["init_from"] = str(tiny_model_dir)
    path = tmp_path / "init.yaml"
    path.write_text(yaml.safe_dump(config))
    forgetlab("pretrain", "--config", path, "--data", smoke_data, "--out", "pretrained", cwd=tmp_path)
    original, copied = load_file(tiny_model_dir / "model.safetensors"), load_file(tmp_path / "pretrained" / "model.safetensors")
    assert original.keys() == copied.keys() and all(torch.equal(original[k], copied[k]) for k in original)


def test_missing_init_from_fails_with_the_path(tmp_path, smoke_data):
    config = smoke_config()
    config["model"]["init_from"] = str(tmp_path / "no-such-checkpoint")
    path = tmp_path / "init.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(["forgetlab", "pretrain", "--config", str(path), "--data", str(smoke_data), "--out", "p"],
                          cwd=tmp_path, env=cli_env(), capture_output=True, text=True)
    assert proc.returncode != 0
    assert str(tmp_path / "no-such-checkpoint") in proc.stderr
    assert not (tmp_path / "p").exists()
