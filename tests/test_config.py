"""Bad configs are rejected before any job runs, and the error names the key."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from forgetlab.config import (
    ConfigError,
    check_config,
    entry_components,
    entry_soup,
    validate_schema,
)
from forgetlab.model import check_checkpoint
from tests.helpers import REPO, cli_env, smoke_config


def check(config):
    validate_schema(config)
    check_config(config)


def mutated(edit):
    config = copy.deepcopy(smoke_config())
    edit(config)
    return config


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c.update(lerning_rate=1), "lerning_rate"),
        (lambda c: c["finetune"].update(lr="fast"), "finetune.lr"),
        (lambda c: c["finetune"].update(epoch=3), "epoch"),
        (lambda c: c.update(splits=["forget20"]), "splits.0"),
        (lambda c: c.update(study="My Study"), "study"),
        (lambda c: c["regularizers"].update(bad=[{"name": "dropuot"}]), "regularizers.bad[0].name"),
        (lambda c: c["regularizers"]["dropout"][0].update(attention="high"), "regularizers.dropout[0].attention"),
        (lambda c: c["regularizers"]["dropout"][0].update(p=0.1), "regularizers.dropout[0].p"),
        (lambda c: c["methods"].update(x={"name": "grad_descent"}), "methods.x.name"),
        (lambda c: c["methods"]["npo"].update(beta="0.1"), "methods.npo.beta"),
        (lambda c: c["methods"].update(oracle={"name": "npo"}), "methods.oracle"),
        (lambda c: c["evaluate"].update(metrics=["forget_quality", "accuracy"]), "evaluate.metrics[1]"),
        (lambda c: c["model"].update(init_from="/nonexistent/ckpt"), "model.init_from"),
        (lambda c: c["regularizers"].update(hot=[{"name": "dropout", "residual": 1.0}]), "regularizers.hot: dropout.residual"),
        (lambda c: c["regularizers"].update(lo=[{"name": "lora", "rank": 0}]), "regularizers.lo: lora.rank"),
        (lambda c: c["regularizers"].update(sp=[{"name": "sparsity", "target": 1.0}]), "regularizers.sp: sparsity.target"),
        (lambda c: c["regularizers"].update(both=[{"name": "lora"}, {"name": "sparsity"}]), "regularizers.both: lora and sparsity"),
        (lambda c: c["regularizers"].update(two=[{"name": "label_smoothing"}, {"name": "multi_sample_dropout"}]),
         "regularizers.two: label_smoothing and multi_sample_dropout both replace the loss"),
        (lambda c: c["finetune"].update(eval_every=5), "finetune"),  # the trajectory is an unlearning setting
        (lambda c: c["unlearn"].update(eval_every=-1), "unlearn.eval_every"),
        (lambda c: c["methods"]["npo"].update(plugins=["salun"]), "methods.npo.plugins[0].name: unknown unlearning plug-in 'salun'"),
        (lambda c: c["methods"]["npo"].update(plugins=[{"name": "Saliency"}]), "methods.npo.plugins.0"),
        (lambda c: c.update(report={"utility": "model_utility_para"}), "report.utility"),  # not a tested utility
        (lambda c: c.update(report={"utility": "model_utility_value"}) or c["evaluate"].update(metrics=["forget_quality"]),
         "report.utility: 'model_utility_value' is not one of evaluate.metrics"),
    ],
)
def test_bad_config_names_the_key(edit, key):
    with pytest.raises(ConfigError) as err:
        check(mutated(edit))
    assert key in str(err.value)


@pytest.mark.parametrize("name", ["config.yaml", "smoke.yaml", "catalogue.yaml", "paper.yaml", "paths_smoke.yaml"])
def test_shipped_configs_are_valid(name):
    check(yaml.safe_load((REPO / "config" / name).read_text()))


def test_the_paper_study_runs_on_the_default_study_s_world_model_and_paths():
    """config/paper.yaml says it is the default study's world, model and training paths, grown in its grid:
    a change to the default's must be made to the paper study's too (it drifted once: stop 37)."""
    default, paper = (yaml.safe_load((REPO / "config" / name).read_text()) for name in ("config.yaml", "paper.yaml"))
    for key in ("data", "model", "pretrain", "stages", "paths", "report"):
        assert paper[key] == default[key], key


def test_catalogue_names_every_registered_regularizer():
    from forgetlab.regularizers import REGULARIZERS

    catalogue = yaml.safe_load((REPO / "config" / "catalogue.yaml").read_text())
    used = {c["name"] for entry in catalogue["regularizers"] for c in entry_components(catalogue, entry)}
    assert used == set(REGULARIZERS.names())
    assert any(entry_soup(catalogue, entry) for entry in catalogue["regularizers"]), "the soup option is shown too"


def test_catalogue_names_every_registered_method_and_plugin():
    from forgetlab.unlearning import METHODS
    from forgetlab.unlearning.plugins import PLUGINS

    catalogue = yaml.safe_load((REPO / "config" / "catalogue.yaml").read_text())
    assert {m["name"] for m in catalogue["methods"].values()} == set(METHODS.names())
    used = {p if isinstance(p, str) else p["name"] for m in catalogue["methods"].values() for p in m.get("plugins", [])}
    assert used == set(PLUGINS.names())


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        check_checkpoint(tmp_path / "nope")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="only safetensors"):
        check_checkpoint(tmp_path / "pickled")


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c["finetune"].update(lr="fast"), "config key finetune.lr: 'fast' is not of type 'number'"),
        (lambda c: c["regularizers"].update(bad=[{"name": "dropuot"}]), "regularizers.bad[0].name"),
    ],
)
def test_snakemake_rejects_bad_config_before_any_job(edit, key, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(mutated(edit)))
    proc = subprocess.run(
        ["snakemake", "-n", "--cores", "1", "--configfile", str(bad), "--directory", str(tmp_path), "-s", str(REPO / "Snakefile")],
        capture_output=True, text=True, env=cli_env(), cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert key in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_cli_check_config_exit_code(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(mutated(lambda c: c.update(splits=["forget20"]))))
    proc = subprocess.run(["forgetlab", "check-config", str(bad)], capture_output=True, text=True, env=cli_env())
    assert proc.returncode == 2 and "splits.0" in proc.stderr


CHECK_TWICE = """
import sys, yaml
from forgetlab.config import check_or_exit
check_or_exit(yaml.safe_load(open(sys.argv[1])), sys.argv[2])
print("torch" in sys.modules, "jsonschema" in sys.modules)
"""


def test_a_checked_config_is_not_checked_again_and_planning_skips_torch(tmp_path):
    """The schema and the registries (torch, every component built) run once per config and package
    state; a stamp then lets planning a finished study skip both. A changed config is checked afresh."""
    def run(config):
        proc = subprocess.run([sys.executable, "-c", CHECK_TWICE, str(config), str(tmp_path / "stamps")],
                              capture_output=True, text=True, env=cli_env())
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    good = REPO / "config" / "smoke.yaml"
    assert run(good) == "True True" and len(list((tmp_path / "stamps").iterdir())) == 1
    assert run(good) == "False False"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(mutated(lambda c: c["methods"]["npo"].update(plugins=["salun"]))))
    proc = subprocess.run([sys.executable, "-c", CHECK_TWICE, str(bad), str(tmp_path / "stamps")],
                          capture_output=True, text=True, env=cli_env())
    assert proc.returncode != 0 and "methods.npo.plugins[0]" in proc.stderr
    assert len(list((tmp_path / "stamps").iterdir())) == 1  # a failed check leaves no stamp
