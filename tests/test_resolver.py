"""The one resolver: a job's parameters from the study config and its grid coordinates, the same
for a rule (its rerun trigger) and for `forgetlab <stage> --config FILE --at NAME=VALUE`."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from forgetlab.config import ConfigError, parse_coordinates, snapshot, stage_params
from tests.helpers import cli_env, smoke_config


def test_coordinates_are_parsed_with_their_types():
    assert parse_coordinates(["regularizer=none", "seed=3", "split=forget10", "sequential_step=2"]) == {
        "regularizer": "none", "seed": 3, "split": "forget10", "sequential_step": 2}


@pytest.mark.parametrize("pairs, message", [
    (["regularizer"], "expected NAME=VALUE"),
    (["colour=red"], "expected NAME=VALUE with NAME one of"),
    (["seed=zero"], "seed must be an integer"),
])
def test_a_bad_coordinate_is_named(pairs, message):
    with pytest.raises(ConfigError, match=message):
        parse_coordinates(pairs)


@pytest.mark.parametrize("stage, coords, message", [
    ("finetune", {"regularizer": "dropuot", "seed": 0, "role": "target"}, "no such regularizer"),
    ("unlearn", {"regularizer": "none", "seed": 0, "split": "forget10", "method": "npx"}, "no such method"),
    ("finetune", {"regularizer": "none", "seed": 0, "role": "teacher"}, "role is one of target, oracle"),
    ("finetune", {"regularizer": "none", "seed": 0, "role": "oracle"}, "needs --at split=..."),
    ("unlearn", {"regularizer": "none", "seed": 0, "split": "forget10"}, "needs --at method=..."),
])
def test_a_coordinate_the_study_lacks_is_named(stage, coords, message):
    with pytest.raises(ConfigError, match=message):
        stage_params(smoke_config(), stage, **coords)


def test_the_model_coordinate_follows_the_stage():
    config = smoke_config()
    assert stage_params(config, "finetune", regularizer="none", seed=0, role="oracle", split="forget10")["model"] == "oracle"
    assert stage_params(config, "unlearn", regularizer="none", seed=0, split="forget10", method="npo")["model"] == "unlearned"


def test_a_soup_entry_resolves_its_components_and_its_option():
    params = stage_params(smoke_config(), "finetune", regularizer="soup_zloss", seed=0, role="target", ingredient=1)
    assert params["regularizers"] == [{"name": "z_loss", "coef": 1.0e-3}] and params["soup"] == {"k": 2}
    assert "soup" not in stage_params(smoke_config(), "finetune", regularizer="none", seed=0, role="target")


def test_a_snapshot_is_written_once_per_content(tmp_path):
    config = smoke_config()
    first = snapshot(config, tmp_path)
    assert yaml.safe_load(first.read_text()) == config and snapshot(config, tmp_path) == first
    config["unlearn"]["lr"] = 5e-4
    second = snapshot(config, tmp_path)
    assert second != first and yaml.safe_load(first.read_text())["unlearn"]["lr"] != 5e-4  # the old one is kept


@pytest.mark.e2e
def test_the_cli_names_a_bad_coordinate_in_one_line(tmp_path):
    path = snapshot(smoke_config(), tmp_path)
    proc = subprocess.run(["forgetlab", "unlearn", "--config", str(path), "--at", "regularizer=none", "--at", "seed=0",
                           "--at", "split=forget10", "--at", "method=npx", "--target", str(tmp_path), "--data", str(tmp_path),
                           "--out", str(tmp_path / "out")], env=cli_env(), capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --at method=npx: the study has no such method (known: grad_ascent, grad_diff, npo)"]
    assert not (tmp_path / "out").exists()
