"""The A/A control's option: a regularizer entry's `data_order_seed` reshuffles the fine-tunes'
training data and changes nothing else; the resolver passes it to the finetune jobs (and only
to those of that entry); the report's params name the entries that are A/A controls of `none`;
a dry run plans the extra fine-tunes with the option resolved from the study's snapshot."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from forgetlab.config import ConfigError, aa_controls, parse_coordinates, stage_params, validate_schema
from forgetlab.recipes import finetune
from tests.helpers import REPO, assert_same_weights, cli_env, smoke_config, weights


def with_aa(config: dict, entry: str = "none_aa", components=None, seed: int = 1) -> dict:
    config["regularizers"][entry] = {"regularizers": components or [{"name": "none"}], "data_order_seed": seed}
    return config


def test_the_option_is_validated_by_the_schema():
    validate_schema(with_aa(smoke_config()))
    for bad, message in ((0, "less than the minimum of 1"), ("1", "is not valid"), (1.5, "is not valid")):
        with pytest.raises(ConfigError, match=rf"regularizers\.none_aa"):
            validate_schema(with_aa(smoke_config(), seed=bad))


def test_the_resolver_passes_the_option_to_that_entrys_finetunes_only():
    config = with_aa(smoke_config())
    for role, extra in (("target", {}), ("oracle", {"split": "forget10"})):
        aa = stage_params(config, "finetune", regularizer="none_aa", seed=2, role=role, **extra)
        plain = stage_params(config, "finetune", regularizer="none", seed=2, role=role, **extra)
        assert aa["data_order_seed"] == 1 and "data_order_seed" not in plain
        assert {k: v for k, v in aa.items() if k not in ("regularizer", "data_order_seed")} == \
            {k: v for k, v in plain.items() if k != "regularizer"}
    # the unlearning and evaluation of the entry are those of any other (they start from its target)
    assert "data_order_seed" not in stage_params(config, "unlearn", regularizer="none_aa", seed=0, split="forget10",
                                                 method="npo")
    # without the option the params are as before: nothing new in any stage
    assert "aa_controls" not in stage_params(smoke_config(), "report")


def test_the_aa_controls_are_the_entries_equal_to_none_but_for_the_data_order():
    config = with_aa(smoke_config())
    with_aa(config, "dropout_reordered", [{"name": "dropout", "attention": 0.1, "residual": 0.1}])
    assert aa_controls(config) == ["none_aa"]  # the reordered dropout is compared as a regularizer
    assert stage_params(config, "report")["aa_controls"] == ["none_aa"]
    assert aa_controls(smoke_config()) == []


def test_the_loader_seed_changes_only_with_the_option():
    assert finetune.loader_seed(3, {}) == 3
    derived = finetune.loader_seed(3, {"data_order_seed": 1})
    assert derived == finetune.loader_seed(3, {"data_order_seed": 1}) != 3  # deterministic, and another seed
    assert derived != finetune.loader_seed(4, {"data_order_seed": 1}) != finetune.loader_seed(3, {"data_order_seed": 2})


def test_the_option_changes_the_data_order_and_nothing_else(smoke_data, tiny_model_dir, tmp_path, monkeypatch):
    """dropout (its masks drawn from the job's seed) with and without a data_order_seed: different
    weights; with the loader's seed put back, the same weights bit for bit."""
    monkeypatch.chdir(tmp_path)
    components = [{"name": "dropout", "attention": 0.1, "residual": 0.1}]
    config = with_aa(smoke_config(), "dropout_reordered", components)

    def params(entry):
        p = stage_params(config, "finetune", regularizer=entry, seed=0, role="target")
        return {**p, "train": {**p["train"], "max_steps": 3}}

    finetune.run(params("dropout"), tiny_model_dir, smoke_data, tmp_path / "plain")
    finetune.run(params("dropout_reordered"), tiny_model_dir, smoke_data, tmp_path / "reordered")
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "reordered")
    assert any(not (a[k] == b[k]).all() for k in a)
    monkeypatch.setattr(finetune, "loader_seed", lambda seed, params: seed)
    finetune.run(params("dropout_reordered"), tiny_model_dir, smoke_data, tmp_path / "seed_put_back")
    assert_same_weights(tmp_path / "plain", tmp_path / "seed_put_back")


@pytest.mark.e2e
def test_a_dry_run_plans_the_aa_finetunes_with_the_option(tmp_path):
    config = with_aa(smoke_config())
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(["snakemake", "-n", "-p", "--cores", "1", "--configfile", str(path), "--directory",
                           str(tmp_path), "-s", str(REPO / "Snakefile")], capture_output=True, text=True,
                          env=cli_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    commands = re.findall(r"^\s*(?:Shell command: )?(?:exec )?(forgetlab finetune .*)$", proc.stdout, re.MULTILINE)
    aa = [c for c in commands if "--at regularizer=none_aa " in c]
    # a target and an oracle per seed and split, like any entry
    assert len(aa) == len(config["seeds"]) * (1 + len(config["splits"]))
    for command in aa + [c for c in commands if "--at regularizer=none " in c]:
        snapshot = tmp_path / re.search(r"--config (\S+)", command).group(1)
        coords = parse_coordinates(re.findall(r"--at (\S+)", command))
        params = stage_params(yaml.safe_load(snapshot.read_text()), "finetune", **coords)
        assert params.get("data_order_seed") == (1 if coords["regularizer"] == "none_aa" else None)
    assert re.search(r"forgetlab report .*none_aa/seed0/forget10/npo/metrics\.json", proc.stdout)
