"""Sequential unlearning (MUSE sustainability) and forget-size scaling: the author chunks, the
config checks, one step of the recipe, and the DAG the workflow plans for them (dry runs)."""

from __future__ import annotations

import copy
import json
from collections import Counter

import pytest
from mlflow.tracking import MlflowClient

from forgetlab.config import (
    ConfigError,
    check_config,
    parse_coordinates,
    sequential_runs,
    stage_params,
    validate_schema,
)
from forgetlab.recipes import read_jsonl, unlearn
from forgetlab.sequential import author_chunks, forget_chunk
from tests.helpers import dry_run, smoke_config


def authored_rows(n_authors: int, facts: int = 3) -> list[dict]:
    return [{"id": f"a{a:02d}_{f}", "entity_id": f"a{a:02d}"} for a in range(n_authors) for f in range(facts)]


# --- the chunks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_authors, chunks", [(2, 2), (7, 3), (10, 4), (12, 12)])
def test_chunks_partition_the_authors_evenly(n_authors, chunks):
    rows = authored_rows(n_authors)
    parts = author_chunks(rows, chunks, seed=0)
    assert len(parts) == chunks
    flat = [a for part in parts for a in part]
    assert sorted(flat) == sorted({r["entity_id"] for r in rows}) and len(flat) == len(set(flat))  # covering, disjoint
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    # the rows of the steps: whole authors, disjoint, together the split, each in the split's order
    steps = [forget_chunk(rows, j, chunks, seed=0) for j in range(1, chunks + 1)]
    for step, part in zip(steps, parts):
        assert {r["entity_id"] for r in step} == set(part)
        assert step == [r for r in rows if r["entity_id"] in set(part)]
    assert sorted(r["id"] for step in steps for r in step) == sorted(r["id"] for r in rows)


def test_chunks_are_deterministic_and_seeded():
    rows = authored_rows(12)
    assert author_chunks(rows, 3, seed=0) == author_chunks(list(reversed(rows)), 3, seed=0)  # row order does not matter
    orders = {tuple(a for part in author_chunks(rows, 3, seed=s) for a in part) for s in range(5)}
    assert len(orders) > 1  # the data seed shuffles the authors


def test_chunks_of_the_smoke_split(smoke_data):
    rows = read_jsonl(smoke_data / "qa" / "forget10.jsonl")
    first, second = (forget_chunk(rows, j, 2, seed=0) for j in (1, 2))
    assert len({r["entity_id"] for r in first}) == len({r["entity_id"] for r in second}) == 1
    assert len(first) + len(second) == len(rows)


def test_bad_chunks_and_steps_are_errors():
    rows = authored_rows(2)
    with pytest.raises(ValueError, match="3 chunks but the forget split has only 2 author"):
        author_chunks(rows, 3, seed=0)
    for step in (0, 3):
        with pytest.raises(ValueError, match=f"step {step} is not in 1..2"):
            forget_chunk(rows, step, 2, seed=0)


# --- the config ----------------------------------------------------------------------------------


def with_sequential(section, **edits) -> dict:
    config = copy.deepcopy(smoke_config())
    config["sequential"] = section
    for key, value in edits.items():
        config[key] = value
    return config


def check(config):
    validate_schema(config)
    check_config(config)


@pytest.mark.parametrize(
    "section, key",
    [
        ({"chunks": 2, "regularizers": ["none"], "methods": ["npo_typo"]}, "config key sequential.methods[0]: 'npo_typo'"),
        ({"chunks": 2, "regularizers": ["none", "dropuot"], "methods": ["npo"]}, "config key sequential.regularizers[1]: 'dropuot'"),
        ({"chunks": 2, "regularizers": ["none"], "methods": ["npo"], "splits": ["forget05"]}, "config key sequential.splits[0]"),
        ({"chunks": 3, "regularizers": ["none"], "methods": ["npo"]}, "config key sequential.chunks: 3 chunks, but split forget10"),
        ({"chunks": 1, "regularizers": ["none"], "methods": ["npo"]}, "config key sequential.chunks: 1 is less than"),
        ({"chunks": 2, "regularizers": ["none"], "methods": "npo"}, "config key sequential.methods"),
        ({"chunks": 2, "methods": ["npo"]}, "'regularizers' is a dependency of 'methods'"),
        ({"chunks": 2, "regularizers": ["none"], "methods": ["npo"], "steps": 2}, "config key sequential: Additional"),
    ],
)
def test_a_bad_sequential_section_names_the_key(section, key):
    with pytest.raises(ConfigError) as err:
        check(with_sequential(section))
    assert key in str(err.value)


def test_sequential_is_a_reserved_method_name():
    config = with_sequential(None)
    config["methods"]["sequential"] = {"name": "npo"}
    with pytest.raises(ConfigError, match="config key methods.sequential: 'sequential' is reserved"):
        check(config)


def test_the_sequential_grid():
    assert sequential_runs(with_sequential(None))["methods"] == []
    assert sequential_runs(with_sequential({}))["methods"] == []
    config = with_sequential({"chunks": 2, "regularizers": ["none"], "methods": ["npo"]}, splits=["forget05", "forget10"])
    config["data"]["authors"]["n"] = 40  # forget05: 2 authors
    check(config)
    assert sequential_runs(config) == {"chunks": 2, "regularizers": ["none"], "methods": ["npo"], "splits": ["forget05", "forget10"]}


def test_stage_params_of_a_step_and_unchanged_params_of_the_others():
    config = smoke_config()
    plain = stage_params(config, "unlearn", model="unlearned", regularizer="none", seed=0, split="forget10", method="npo")
    assert "seed_data" not in plain and "sequential_step" not in plain  # the other jobs' params are as they were
    step = stage_params(config, "unlearn", model="sequential", regularizer="none", seed=0, split="forget10", method="npo",
                        sequential_step=2, sequential_chunks=2)
    assert step == {**plain, "model": "sequential", "sequential_step": 2, "sequential_chunks": 2,
                    "seed_data": config["data"]["seed"]}


def test_the_cli_names_a_step_by_its_coordinates():
    coords = parse_coordinates(["regularizer=none", "seed=0", "split=forget10", "method=npo", "model=sequential",
                                "sequential_step=2", "sequential_chunks=3"])
    params = stage_params(with_sequential({"chunks": 3, "regularizers": ["none"], "methods": ["npo"]}), "unlearn", **coords)
    assert (params["model"], params["sequential_step"], params["sequential_chunks"]) == ("sequential", 2, 3)


# --- one step through the recipe -----------------------------------------------------------------


def test_a_step_unlearns_its_chunk_from_the_previous_model_with_the_target_as_reference(
        smoke_data, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = smoke_config()
    seen = []
    real = unlearn.forget_examples
    monkeypatch.setattr(unlearn, "forget_examples", lambda tok, rows, *a: seen.append(rows) or real(tok, rows, *a))
    for step in (1, 2):
        params = stage_params(config, "unlearn", model="sequential", regularizer="none", seed=0, split="forget10",
                              method="npo", sequential_step=step, sequential_chunks=2)
        params["train"] = {**params["train"], "max_steps": 2, "eval_every": 0}
        start = tiny_model_dir if step == 1 else tmp_path / "step1"
        unlearn.run(params, start, smoke_data, tmp_path / f"step{step}", reference=tiny_model_dir)
        record = json.loads((tmp_path / f"step{step}" / "forgetlab_stage.json").read_text())
        assert record["start_model"] == str(start) and record["reference_model"] == str(tiny_model_dir)
        assert record["forget_examples"] == len(seen[-1])
    rows = read_jsonl(smoke_data / "qa" / "forget10.jsonl")
    assert seen == [forget_chunk(rows, j, 2, config["data"]["seed"]) for j in (1, 2)]

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    tags = sorted((r.data.tags["sequential_step"], r.data.tags["sequential_chunks"], r.data.tags["model"]) for r in runs)
    assert tags == [("1", "2", "sequential"), ("2", "2", "sequential")]
    assert sorted(r.data.params["sequential_step"] for r in runs) == ["1", "2"]


# --- the DAG (dry runs) --------------------------------------------------------------------------


def options(command: str) -> set[str]:
    return {token for token in command.split() if token.startswith("--")}


def test_the_dag_chains_each_step_to_the_previous_one(tmp_path):
    config = with_sequential({"chunks": 3, "regularizers": ["none", "soup_zloss"], "methods": ["npo", "grad_ascent"]},
                             seeds=[0, 1])
    config["data"]["authors"]["n"] = 30  # forget10: 3 authors, one a chunk
    jobs = dry_run(config, tmp_path)
    res = "results/smoke"
    steps = [j for j in jobs if j["rule"] == "unlearn_sequential"]
    runs = {(reg, seed, method) for reg in ("none", "soup_zloss") for seed in ("0", "1") for method in ("npo", "grad_ascent")}
    assert Counter((j["wildcards"]["reg"], j["wildcards"]["seed"], j["wildcards"]["method"]) for j in steps) == {r: 3 for r in runs}
    for job in steps:
        w = job["wildcards"]
        base = f"{res}/unlearn/{w['reg']}/seed{w['seed']}/forget10/sequential/{w['method']}"
        target = f"{res}/finetune/{w['reg']}/seed{w['seed']}/target/model"
        step = int(w["step"])
        assert job["output"] == [f"{base}/step{step}/model"]
        start = target if step == 1 else f"{base}/step{step - 1}/model"
        assert job["input"][:2] == [start, target]  # from the previous step; the target is the reference
    evals = [j for j in jobs if j["rule"] == "evaluate_sequential"]
    assert len(evals) == len(steps)
    for job in evals:
        w = job["wildcards"]
        assert job["input"][0] == f"{res}/unlearn/{w['reg']}/seed{w['seed']}/forget10/sequential/{w['method']}/step{w['step']}/model"
        assert f"{res}/eval/{w['reg']}/seed{w['seed']}/forget10/oracle/samples.parquet" in job["input"]
        assert job["output"][0] == f"{res}/eval/{w['reg']}/seed{w['seed']}/forget10/sequential/{w['method']}/step{w['step']}/metrics.json"
    # a step is evaluated with the inputs and options of an ordinary unlearned model
    plain = next(j for j in jobs if j["rule"] == "evaluate" and j["wildcards"]["reg"] == "none"
                 and j["wildcards"]["seed"] == "0" and j["wildcards"]["model"] == "npo")
    step = next(j for j in evals if j["wildcards"]["reg"] == "none" and j["wildcards"]["seed"] == "0"
                and j["wildcards"]["method"] == "npo" and j["wildcards"]["step"] == "3")
    assert plain["input"][1:] == step["input"][1:]
    commands = next(j for j in jobs if j["rule"] == "shell")["commands"]
    plain_cmd = next(c for c in commands if f"--out {res}/eval/none/seed0/forget10/npo " in c)
    step_cmd = next(c for c in commands if f"--out {res}/eval/none/seed0/forget10/sequential/npo/step3 " in c)
    assert options(plain_cmd) == options(step_cmd)
    report = next(j for j in jobs if j["rule"] == "report")
    assert {j["output"][0] for j in evals} <= set(report["input"])
    assert f"{res}/sequential_unlearning.png" in report["output"]
    # the ordinary unlearning jobs are as without the section
    assert sum(j["rule"] == "unlearn" for j in jobs) == len(config["regularizers"]) * 2 * len(config["methods"])


def test_no_sequential_section_plans_no_sequential_job(tmp_path):
    config = with_sequential(None)
    del config["sequential"]
    rules = {j["rule"] for j in dry_run(config, tmp_path)}
    assert "report" in rules and not rules & {"unlearn_sequential", "evaluate_sequential"}


def test_forget_size_scaling_is_one_switch(tmp_path):
    """splits: [forget01, forget05, forget10] plans the whole grid for each forget size (MUSE's
    scalability); the targets are shared, the oracles and everything after them are per split."""
    splits = ["forget01", "forget05", "forget10"]
    config = with_sequential({"chunks": 2, "regularizers": ["none"], "methods": ["npo"], "splits": ["forget10"]}, splits=splits)
    jobs = dry_run(config, tmp_path)
    regs, methods, seeds = config["regularizers"], config["methods"], config["seeds"]
    plain = [r for r in regs if not isinstance(regs[r], dict)]  # the others are soups
    # a grid cell's split: its `split` wildcard, or a fine-tune's `tuned` (target, <split>/oracle)
    per_split = Counter((j["rule"], j["wildcards"].get("split", j["wildcards"].get("tuned"))) for j in jobs if j["rule"] != "shell")
    for split in splits:
        assert per_split["evaluate_pretrained", split] == 1
        assert per_split["finetune", f"{split}/oracle"] == len(plain) * len(seeds)
        assert per_split["soup", f"{split}/oracle"] == (len(regs) - len(plain)) * len(seeds)
        assert per_split["unlearn", split] == len(regs) * len(seeds) * len(methods)
        # the oracle, the target and each unlearned model of every regularizer and seed
        assert per_split["evaluate", split] == len(regs) * len(seeds) * (2 + len(methods))
        assert per_split["unlearn_sequential", split] == (2 if split == "forget10" else 0)
    assert per_split["finetune", "target"] == len(plain) * len(seeds)  # shared by the splits
    unlearned = {j["output"][0] for j in jobs if j["rule"] == "unlearn"}
    assert unlearned == {f"results/smoke/unlearn/{r}/seed{s}/{sp}/{m}/model"
                         for r in regs for s in seeds for sp in splits for m in methods}
