"""Shared fixtures: the smoke world generated once, and a tiny random Llama saved as safetensors."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

from forgetlab.data import prepare_data
from forgetlab.model import load_tokenizer, new_llama, save_model

REPO = Path(__file__).resolve().parents[1]


def smoke_config() -> dict:
    return yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())


def cli_env(**extra) -> dict:
    """Environment for subprocesses: this interpreter's bin dir first on PATH (forgetlab, snakemake, dvc)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "smoke"
    prepare_data(smoke_config()["data"], out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(smoke_data, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    tokenizer = load_tokenizer(smoke_data / "tokenizer")
    model = new_llama(smoke_config()["model"], tokenizer)
    out = tmp_path_factory.mktemp("model") / "pretrained"
    save_model(model, tokenizer, out)
    return out
