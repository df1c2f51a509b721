"""Config fuzz: malformed study configs are each stopped at the door, by `forgetlab check-config`
and by `snakemake -n`, with one line that names the key, and no job starts.

Every case is the smoke config with one edit. The snakemake side runs Snakemake's own command
line (`snakemake.cli.main`, the function behind the `snakemake` script) for all cases in one
subprocess (tests/snakemake_many.py), so the fuzz costs one Snakemake start-up, not forty.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import yaml

from tests.helpers import REPO, cli_env, smoke_config

pytestmark = pytest.mark.e2e


def put(path: str, value):
    """An edit that sets a dotted key (creating nothing above it)."""
    def edit(config):
        *parents, last = path.split(".")
        node = config
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[last] = value
    return edit


def drop(path: str):
    def edit(config):
        *parents, last = path.split(".")
        node = config
        for p in parents:
            node = node[p]
        del node[last]
    return edit


def add(section: str, name: str, entry):
    return lambda c: c[section].update({name: entry})


NAN, INF = float("nan"), float("inf")

# (case id, edit, a substring of the one error line: the key it names)
CASES = [
    # wrong types
    ("seeds-not-list", put("seeds", 0), "seeds"),
    ("seed-float", put("seeds", [0.5]), "seeds.0"),
    ("lr-string", put("finetune.lr", "fast"), "finetune.lr"),
    ("epochs-bool", put("pretrain.epochs", True), "pretrain.epochs"),
    ("batch-float", put("unlearn.batch_size", 8.5), "unlearn.batch_size"),
    ("hidden-string", put("model.hidden_size", "big"), "model.hidden_size"),
    ("metrics-not-list", put("evaluate.metrics", "forget_quality"), "evaluate.metrics"),
    ("method-not-mapping", add("methods", "x", ["npo"]), "methods.x"),
    ("npo-beta-string", put("methods.npo.beta", "0.1"), "methods.npo.beta"),
    ("dropout-attention-string", put("regularizers.dropout.0.attention", "high"), "regularizers.dropout[0].attention"),
    # out of range
    ("lr-negative", put("pretrain.lr", -1.0), "pretrain.lr"),
    ("lr-zero", put("finetune.lr", 0), "finetune.lr"),
    ("warmup-above-1", put("finetune.warmup_ratio", 1.5), "finetune.warmup_ratio"),
    ("batch-zero", put("pretrain.batch_size", 0), "pretrain.batch_size"),
    ("seed-negative", put("seeds", [-1]), "seeds.0"),
    ("max-length-tiny", put("unlearn.max_length", 2), "unlearn.max_length"),
    ("eval-every-negative", put("unlearn.eval_every", -1), "unlearn.eval_every"),
    ("npo-beta-negative", put("methods.npo.beta", -1.0), "methods.npo"),
    ("grad-diff-alpha-negative", put("methods.grad_diff.alpha", -2.0), "methods.grad_diff"),
    ("dropout-residual-one", put("regularizers.dropout.0.residual", 1.0), "regularizers.dropout"),
    ("z-loss-negative", put("regularizers.soup_zloss.regularizers.0.coef", -1.0), "regularizers.soup_zloss"),
    ("soup-k-one", put("regularizers.soup_zloss.soup.k", 1), "regularizers.soup_zloss.soup"),
    ("soup-vary-unknown", put("regularizers.soup_zloss.soup.vary", "data"), "regularizers.soup_zloss.soup"),
    ("soup-unknown-key", put("regularizers.soup_zloss.soup.n", 2), "regularizers.soup_zloss"),
    ("vocab-tiny", put("data.tokenizer.vocab_size", 3), "data.tokenizer.vocab_size"),
    # non-finite numbers (a schema bound never rejects NaN)
    ("lr-nan", put("pretrain.lr", NAN), "pretrain.lr"),
    ("lr-inf", put("finetune.lr", INF), "finetune.lr"),
    ("npo-beta-nan", put("methods.npo.beta", NAN), "methods.npo.beta"),
    ("dropout-nan", put("regularizers.dropout.0.attention", NAN), "regularizers.dropout[0].attention"),
    ("weight-decay-minus-inf", put("unlearn.weight_decay", -INF), "unlearn.weight_decay"),
    # unknown names and keys
    ("unknown-top-key", put("lerning_rate", 1), "lerning_rate"),
    ("unknown-train-key", put("finetune.epoch", 3), "epoch"),
    ("unknown-regularizer", add("regularizers", "bad", [{"name": "dropuot"}]), "regularizers.bad[0].name"),
    ("unknown-method", add("methods", "x", {"name": "grad_descent"}), "methods.x.name"),
    ("unknown-method-param", put("methods.npo.temperature", 1.0), "methods.npo.temperature"),
    ("unknown-plugin", put("methods.npo.plugins", ["salun"]), "methods.npo.plugins[0]"),
    ("unknown-metric", put("evaluate.metrics", ["forget_quality", "accuracy"]), "evaluate.metrics[1]"),
    ("missing-section", drop("unlearn"), "unlearn"),
    # bad combinations
    ("empty-regularizer-entry", add("regularizers", "plain", []), "regularizers.plain"),
    ("two-loss-replacers", add("regularizers", "two", [{"name": "label_smoothing"}, {"name": "multi_sample_dropout"}]),
     "regularizers.two"),
    ("lora-and-sparsity", add("regularizers", "both", [{"name": "lora"}, {"name": "sparsity"}]), "regularizers.both"),
    ("reserved-method-name", add("methods", "oracle", {"name": "npo"}), "methods.oracle"),
    ("sequential-unknown-method", put("sequential.methods", ["simnpo"]), "sequential.methods[0]"),
    ("init-from-missing", put("model.init_from", "/nonexistent/ckpt"), "model.init_from"),
    # impossible splits
    ("split-unknown", put("splits", ["forget20"]), "splits.0"),
    ("split-empty", put("splits", []), "splits"),
    ("split-duplicate", put("splits", ["forget10", "forget10"]), "splits"),
    ("sequential-too-many-chunks", put("sequential.chunks", 50), "sequential.chunks"),
    # unsafe names (they become paths and shell words)
    ("study-dotdot", put("study", "../x"), "study"),
    ("study-shell", put("study", "a;b"), "study"),
    ("study-space", put("study", "My Study"), "study"),
    ("regularizer-entry-slash", add("regularizers", "a/b", [{"name": "none"}]), "regularizers"),
    ("method-entry-dollar", add("methods", "$(rm)", {"name": "npo"}), "methods"),
]


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    files = {}
    for case, edit, _ in CASES:
        config = copy.deepcopy(smoke_config())
        edit(config)
        files[case] = folder / f"{case}.yaml"
        files[case].write_text(yaml.safe_dump(config))  # .nan/.inf are written as YAML's own
    return files


def test_check_config_rejects_each_with_one_line_naming_the_key(bad_files):
    proc = subprocess.run(["forgetlab", "check-config", *map(str, bad_files.values())],
                          capture_output=True, text=True, env=cli_env())
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert proc.stdout.strip() == "", proc.stdout  # no file is "ok"
    assert len(lines) == len(CASES), proc.stderr  # one line each, no traceback
    for (case, _, key), line in zip(CASES, lines):
        assert line.startswith(f"error: {bad_files[case]}: config key "), line
        assert key in line, (case, line)


def test_snakemake_rejects_each_before_any_job(bad_files, tmp_path):
    work = tmp_path / "work"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "snakemake_many.py"), str(REPO / "Snakefile"), str(work),
                           *map(str, bad_files.values())], capture_output=True, text=True, env=cli_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    for case, _, key in CASES:
        result = results[str(bad_files[case])]
        assert result["exit"] not in (0, None), (case, result)
        message = result["exit"] if isinstance(result["exit"], str) else result["output"]
        assert message.count("\n") == 0 and message.startswith("error: config key "), (case, message)
        assert key in message, (case, message)
    assert not (work / "results").exists() and not (work / "data").exists()


def test_the_smoke_config_still_plans(tmp_path):
    """The fuzz's base is a valid config: every failure above comes from its one edit."""
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "snakemake_many.py"), str(REPO / "Snakefile"),
                           str(tmp_path), str(REPO / "config" / "smoke.yaml")], capture_output=True, text=True, env=cli_env())
    assert json.loads(proc.stdout)[str(REPO / "config" / "smoke.yaml")]["exit"] in (0, None)


SIGNED = {("method", "simnpo", "delta")}  # a margin: any finite number is meaningful


def numeric_fields(cls):
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_") and hints.get(f.name) in (int, float)]


def test_every_numeric_parameter_of_every_component_has_a_range():
    """Every int or float parameter of every registered regularizer, method and plug-in rejects a
    negative value and NaN when the config is checked (bar the few that are signed by nature)."""
    from forgetlab.config import ConfigError, check_config
    from forgetlab.regularizers import REGULARIZERS
    from forgetlab.unlearning import METHODS
    from forgetlab.unlearning.plugins import PLUGINS

    def entry(kind, name, params):
        config = copy.deepcopy(smoke_config())
        if kind == "regularizer":
            config["regularizers"]["x"] = [{"name": name, **params}]
        elif kind == "method":
            config["methods"]["x"] = {"name": name, **params}
        else:
            config["methods"]["x"] = {"name": "npo", "plugins": [{"name": name, **params}]}
        return config

    checked, accepted = 0, []
    for kind, registry in (("regularizer", REGULARIZERS), ("method", METHODS), ("plugin", PLUGINS)):
        for name in registry.names():
            for field in numeric_fields(registry.get(name)):
                if (kind, name, field) in SIGNED:
                    continue
                for value in (-1, -1.0, NAN):
                    try:
                        check_config(entry(kind, name, {field: value}))
                        accepted.append(f"{kind} {name}.{field} = {value}")
                    except ConfigError as e:
                        assert str(e).startswith(("config key methods.x", "config key regularizers.x")), str(e)
                checked += 1
    assert checked >= 60 and accepted == [], accepted
