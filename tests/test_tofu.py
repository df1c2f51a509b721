"""The TOFU source (forgetlab.data.tofu) on fixture files in TOFU's published layout: conversion,
the checks that name the file and field, the config checks of a tofu study, and config/tofu.yaml."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess

import pytest
import yaml

from forgetlab.config import ConfigError, check_config, stage_params, validate_schema
from forgetlab.data import prepare_data
from forgetlab.data.tofu import TofuDataError
from forgetlab.model import load_tokenizer
from forgetlab.recipes import read_jsonl
from forgetlab.recipes.evaluate import eval_splits
from tests.fixtures_tofu import tiny_checkpoint, tofu_files, tofu_study, write_tofu
from tests.helpers import REPO, cli_env, smoke_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tofu_ckpt") / "model")


@pytest.fixture(scope="module")
def tofu_dir(tmp_path_factory):
    return write_tofu(tmp_path_factory.mktemp("tofu") / "files")


def convert(root, checkpoint, out):
    return prepare_data({"source": "tofu", "path": str(root), "seed": 0, "tokenizer_from": str(checkpoint)}, out)


@pytest.fixture(scope="module")
def converted(tofu_dir, checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("tofu_out") / "data"
    return out, convert(tofu_dir, checkpoint, out)


def test_conversion_writes_the_layout_with_tofus_rows(converted, tofu_dir):
    out, manifest = converted
    files = tofu_files()
    qa = {p.stem: read_jsonl(p) for p in (out / "qa").glob("*.jsonl")}
    assert set(qa) == {"forget01", "forget05", "forget10", "retain99", "retain95", "retain90", "full", "holdout",
                       "holdout01", "holdout05", "holdout10", "world_facts", "real_authors", "retain_eval"}
    # forget rows: forgetXX's question/answer with forgetXX_perturbed's fields, in file order
    for split in ("forget01", "forget05", "forget10"):
        assert [{k: r[k] for k in files[f"{split}_perturbed"][0]} for r in qa[split]] == files[f"{split}_perturbed"]
    assert [(r["question"], r["answer"]) for r in qa["retain90"]] == [(r["question"], r["answer"]) for r in files["retain90"]]
    assert [r["question"] for r in qa["full"]] == [r["question"] for r in files["retain90"] + files["forget10"]]
    assert [r["perturbed_answer"] for r in qa["real_authors"]] == [r["perturbed_answer"] for r in files["real_authors_perturbed"]]
    assert [r["paraphrased_answer"] for r in qa["retain_eval"]] == [r["paraphrased_answer"] for r in files["retain_perturbed"]]
    assert qa["holdout"] == qa["holdout10"] and len(qa["holdout01"]) == 1
    # what TOFU does not publish is None, never made up; the same row has the same id in every split
    assert all(r["entity_id"] is None and r["attribute"] is None for rows in qa.values() for r in rows)
    ids = {(r["question"], r["answer"]): r["id"] for r in qa["full"]}
    assert all(ids[(r["question"], r["answer"])] == r["id"] for s in ("forget01", "retain95", "retain_eval") for r in qa[s])
    assert len(set(ids.values())) == len(ids)
    assert (out / "corpus.jsonl").read_text() == ""
    assert manifest["rows"]["qa/forget10.jsonl"] == 4 and manifest["rows"]["qa/retain90.jsonl"] == 36


def test_manifest_hashes_every_file_read_and_written(converted, tofu_dir):
    out, manifest = converted
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert manifest["inputs_sha256"] == {p.name: digest(p) for p in tofu_dir.iterdir() if p.stem != "full"}
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert set(manifest["sha256"]) == written
    assert all(manifest["sha256"][p] == digest(out / p) for p in written)
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_tokenizer_is_the_checkpoints(converted, checkpoint):
    out, _ = converted
    ours, theirs = load_tokenizer(out / "tokenizer"), load_tokenizer(checkpoint)
    assert ours.get_vocab() == theirs.get_vocab() and ours.chat_template == theirs.chat_template


def test_parquet_files_convert_to_the_same_rows(tofu_dir, checkpoint, converted, tmp_path):
    parquet = write_tofu(tmp_path / "parquet", fmt="parquet")
    convert(parquet, checkpoint, tmp_path / "out")
    for name in ("forget05", "retain_eval", "world_facts"):
        assert read_jsonl(tmp_path / "out" / "qa" / f"{name}.jsonl") == read_jsonl(converted[0] / "qa" / f"{name}.jsonl")


def broken(edit):
    files = copy.deepcopy(tofu_files())
    edit(files)
    return files


@pytest.mark.parametrize("edit, words", [
    (lambda f: f.pop("retain95"), ["retain95.json", "not found"]),
    (lambda f: f["forget05_perturbed"][1].pop("paraphrased_answer"), ["forget05_perturbed.json", "'paraphrased_answer'"]),
    (lambda f: f["world_facts_perturbed"][0].update(perturbed_answer="Tarsk"), ["world_facts_perturbed.json", "'perturbed_answer'"]),
    (lambda f: f["retain90"][3].pop("question"), ["retain90.json", "'question'"]),
    (lambda f: f.update(holdout05=[]), ["holdout05.json", "empty"]),
    # forget10 must be 10% of forget10 + retain90: one row moved from retain90 to forget10
    (lambda f: (row := f["retain90"].pop(), f["forget10"].insert(0, row), f["forget10_perturbed"].insert(
        0, {**row, "paraphrased_answer": "So it is.", "perturbed_answer": ["Not so."]})), ["forget10.json", "10%"]),
    (lambda f: f["retain99"].append(f["forget01"][0]), ["forget01.json", "retain99.json", "disjoint"]),
    (lambda f: f["forget10_perturbed"].pop(), ["forget10_perturbed.json", "forget10.json"]),
    (lambda f: f["retain_perturbed"].append(f["forget10_perturbed"][0]), ["retain_perturbed.json", "retain90.json"]),
    (lambda f: f["holdout10"].pop(), ["holdout10.json", "forget10"]),
    # the pairs split different rows: forget05 and retain95 swap a row for a new one
    (lambda f: (f["retain95"].pop(0), f["retain95"].append({"question": "Who?", "answer": "Nobody."})),
     ["forget05.json", "retain95.json", "same rows"]),
])
def test_a_broken_file_is_an_error_naming_it(tmp_path, checkpoint, edit, words):
    root = write_tofu(tmp_path / "files", broken(edit))
    with pytest.raises(TofuDataError) as err:
        convert(root, checkpoint, tmp_path / "out")
    assert all(w in str(err.value) for w in words), str(err.value)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_line_that_is_not_json_names_the_file_and_line(tmp_path, checkpoint):
    root = write_tofu(tmp_path / "files")
    (root / "retain99.json").write_text((root / "retain99.json").read_text() + "[not json\n")
    with pytest.raises(TofuDataError, match=r"retain99.json: line 40"):
        convert(root, checkpoint, tmp_path / "out")


def study(tofu_dir, checkpoint, **overrides):
    return tofu_study(REPO, tofu_dir, checkpoint, **overrides)


def test_the_cluster_config_passes_check_config_with_local_paths(tofu_dir, checkpoint, tmp_path):
    path = tmp_path / "tofu.yaml"
    path.write_text(yaml.safe_dump(study(tofu_dir, checkpoint)))
    proc = subprocess.run(["forgetlab", "check-config", str(path)], capture_output=True, text=True, env=cli_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shipped = yaml.safe_load((REPO / "config" / "tofu.yaml").read_text())
    assert shipped["data"]["path"] == "/path/to/tofu" and shipped["model"]["prompt_format"] == "chat_template"
    assert set(shipped["splits"]) == {"forget01", "forget05", "forget10"}


def check(config):
    validate_schema(config)
    check_config(config)


def test_a_tofu_study_needs_init_from(tofu_dir, checkpoint):
    config = study(tofu_dir, checkpoint)
    config["model"].update(init_from=None, prompt_format="plain")
    for key in ("prompt_system", "chat_template_kwargs"):
        config["model"].pop(key)
    with pytest.raises(ConfigError, match=r"model\.init_from"):
        check(config)


def test_a_missing_data_path_is_named(tmp_path, checkpoint):
    with pytest.raises(ConfigError, match=r"config key data\.path: directory .*absent does not exist"):
        check(study(tmp_path / "absent", checkpoint))


@pytest.mark.parametrize("metric", ["form_robustness", "model_utility_para", "world_facts_truth_ratio_para",
                                    "real_authors_option_prob_para", "holdout_truth_ratio"])
def test_metrics_that_need_fields_tofu_lacks_are_refused(tofu_dir, checkpoint, metric):
    config = study(tofu_dir, checkpoint)
    config["evaluate"]["metrics"] = ["forget_quality", metric]
    with pytest.raises(ConfigError, match=r"evaluate\.metrics\[1\]"):
        check(config)


def test_holdout_truth_ratio_is_allowed_with_the_holdouts_perturbed_files(tmp_path, checkpoint):
    files = tofu_files()
    for name in ("holdout01", "holdout05", "holdout10"):
        files[f"{name}_perturbed"] = [{**r, "paraphrased_answer": r["answer"], "perturbed_answer": ["No."]}
                                      for r in files[name]]
    config = study(write_tofu(tmp_path / "files", files), checkpoint)
    config["evaluate"]["metrics"] = ["holdout_truth_ratio"]
    check(config)


def test_sequential_unlearning_is_refused_without_author_ids(tofu_dir, checkpoint):
    config = study(tofu_dir, checkpoint, sequential={"chunks": 2, "regularizers": ["none"], "methods": ["npo"]})
    with pytest.raises(ConfigError, match=r"config key sequential:"):
        check(config)


def test_a_world_training_stage_is_refused(tofu_dir, checkpoint):
    config = study(tofu_dir, checkpoint, stages={"general": {"data": "world"}, "qa": {"data": "authors"}},
                   paths={"world_first": ["general", "qa"]})
    with pytest.raises(ConfigError, match=r"config key stages\.general\.data"):
        check(config)


def test_tofu_params_name_the_eval_files_and_the_tokenizer(tofu_dir, checkpoint, converted):
    config = study(tofu_dir, checkpoint)
    params = stage_params(config, "evaluate", model="target", regularizer="none", seed=0, split="forget05")
    assert params["eval_files"] == {"retain": "retain_eval", "holdout": "holdout05"}
    assert stage_params(config, "prepare_data")["tokenizer_from"] == str(checkpoint)
    splits = eval_splits(params, converted[0])
    assert [r["question"] for r in splits["retain"]] == [r["question"] for r in tofu_files()["retain_perturbed"]]
    assert len(splits["holdout"]) == 2 and len(splits["forget"]) == 2
    # a synthetic study's params are as before
    smoke = smoke_config()
    assert "eval_files" not in stage_params(smoke, "evaluate", model="target", regularizer="none", seed=0, split="forget10")
    assert "tokenizer_from" not in stage_params(smoke, "prepare_data")
