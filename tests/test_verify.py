"""forgetlab verify's comparisons and verdicts, and the environment records, on hand-made inputs.
The end-to-end check (a study pulled into a fresh clone, rerun and compared) is in test_workflow.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from forgetlab import environment
from forgetlab.verify import (
    TEXT_ROWS,
    TOLERANCES,
    compare_outputs,
    compare_tables,
    compare_tensors,
    compare_values,
    judge,
    rerun_command,
    sample,
)

pytestmark = pytest.mark.e2e

W_ATOL = TOLERANCES["weights"][0]
T_ATOL, T_RTOL = TOLERANCES["tables"]
M_ATOL, M_RTOL = TOLERANCES["metrics"]


def weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(4, 3, generator=g), "b.bias": torch.randn(5, generator=g)}


def table() -> pd.DataFrame:
    return pd.DataFrame({"id": ["q0", "q1", "q2"], "prob": [0.25, 0.5, 0.75], "nll": [1.0, np.nan, 3.0],
                         "generated": ["an answer", "another", "a third"],
                         "token_logp": [np.array([-1.0, -2.0]), np.array([-0.5]), np.array([-3.0, -1.0, -2.0])]})


def test_identical_tensors_have_no_difference():
    assert compare_tensors(weights(), weights(), "m.safetensors") == []


def test_tensor_differences_within_and_beyond_the_weight_tolerance():
    small, large = weights(), weights()
    small["a.weight"][1, 2] += W_ATOL / 10
    large["b.bias"][0] += W_ATOL * 10
    (within,) = compare_tensors(weights(), small, "m.safetensors")
    assert within.within and within.item == "tensor a.weight" and within.value == pytest.approx(W_ATOL / 10, rel=1e-2)  # float32 rounding
    (beyond,) = compare_tensors(weights(), large, "m.safetensors")
    assert not beyond.within and beyond.item == "tensor b.bias"
    reshaped = {**weights(), "b.bias": torch.zeros(6)}
    assert not compare_tensors(weights(), reshaped, "m")[0].within
    missing = {"a.weight": weights()["a.weight"]}
    assert compare_tensors(weights(), missing, "m")[0].value == math.inf


def test_table_differences_per_column():
    assert compare_tables(table(), table(), "s.parquet") == []
    near = table()
    near.loc[0, "prob"] += T_ATOL / 10
    near.at[2, "token_logp"] = near.at[2, "token_logp"] + T_ATOL / 10
    diffs = {d.item: d for d in compare_tables(table(), near, "s.parquet")}
    assert set(diffs) == {"column prob", "column token_logp"} and all(d.within for d in diffs.values())
    far = table()
    far.loc[1, "nll"] = 2.0  # a number where the stored table has NaN
    far.loc[2, "prob"] += T_ATOL * 10 + T_RTOL
    diffs = {d.item: d for d in compare_tables(table(), far, "s.parquet")}
    assert not diffs["column nll"].within and diffs["column nll"].value == math.inf
    assert not diffs["column prob"].within
    text = table()
    text.loc[0, "generated"] = "a different answer"
    (diff,) = compare_tables(table(), text, "s.parquet")
    assert diff.value == pytest.approx(1 / len(text)) and diff.within == (1 / len(text) <= TEXT_ROWS)
    assert not compare_tables(table(), table().iloc[:2], "s.parquet")[0].within


def test_json_values_compare_numbers_within_tolerance_and_ignore_thread_counts():
    stored = {"metrics": {"forget_quality": 0.5, "model_utility": 0.25}, "model_path": "m", "threads": 1}
    assert compare_values(stored, {**stored, "threads": stored["threads"] + 1}, "metrics.json") == []
    near = {**stored, "metrics": {"forget_quality": 0.5 + M_ATOL / 10, "model_utility": 0.25}}
    (diff,) = compare_values(stored, near, "metrics.json")
    assert diff.within and diff.item == "metrics.forget_quality"
    far = {**stored, "metrics": {"forget_quality": 0.5, "model_utility": 0.25 + 10 * (M_ATOL + M_RTOL)}}
    assert not compare_values(stored, far, "metrics.json")[0].within
    assert not compare_values(stored, {**stored, "model_path": "other"}, "metrics.json")[0].within


def test_outputs_compare_file_by_file(tmp_path):
    from safetensors.torch import save_file

    stored, rerun = tmp_path / "stored", tmp_path / "rerun"
    for d, w in ((stored, weights()), (rerun, weights())):
        d.mkdir()
        save_file(w, d / "model.safetensors")
        (d / "config.json").write_text(json.dumps({"hidden": 4}))
        (d / environment.JOB_FILE).write_text(json.dumps({"differs": str(d)}))  # environment: compared elsewhere
    assert compare_outputs(stored, rerun) == []
    w = weights()
    w["a.weight"] += W_ATOL / 10
    save_file(w, rerun / "model.safetensors")
    (stored / "extra.txt").write_text("only stored")
    diffs = compare_outputs(stored, rerun)
    assert {(d.file, d.within) for d in diffs} == {("extra.txt", False), ("model.safetensors", True)}


ENV = {"torch": "2.0", "cpu_model": "cpu A", "threads": 1, "host": "a", "git_commit": "x", "device": "cpu",
       "deterministic_algorithms": True}


def test_verdicts():
    within = compare_values({"m": 1.0}, {"m": 1.0 + M_ATOL / 10}, "f")
    beyond = compare_values({"m": 1.0}, {"m": 2.0}, "f")
    same = environment.differences(ENV, {**ENV, "host": "b", "git_commit": "y"})  # informational fields only
    threads = environment.differences(ENV, {**ENV, "threads": ENV["threads"] + 1})
    assert judge([], same, ENV)[0] == "identical"
    verdict, reason = judge(within, threads, ENV)
    assert verdict == "equivalent" and "threads" in reason
    assert judge(within, same, ENV) == ("different", "within tolerance, but not bit-identical in the same environment")
    verdict, reason = judge(beyond, threads, ENV)
    assert verdict == "different" and "beyond tolerance" in reason and "threads" in reason
    assert judge([], {}, ENV, failed="the rerun failed")[0] == "different"
    gpu = {**ENV, "device": "cuda", "deterministic_algorithms": False}
    assert judge(within, {}, gpu)[0] == "equivalent"


def job(kind: str, out: str, env: dict, **extra) -> dict:
    return {"format": environment.FORMAT, "command": ["forgetlab", kind, "--out", out, "--threads", str(env["threads"])],
            "out": out, "environment": env, "inputs": {}, "cwd": "/study", **extra}


def test_study_environment_warns_when_jobs_ran_in_several_environments():
    one = {"a": job("pretrain", "a", ENV), "b": job("finetune", "b", {**ENV, "host": "b"})}
    summary = environment.study_environment(one)
    assert summary["warnings"] == [] and summary["environment"]["cpu_model"] == ENV["cpu_model"]
    assert summary["varying"] == {"host": {"a": 1, "b": 1}}
    two = {**one, "c": job("finetune", "c", {**ENV, "cpu_model": "cpu B", "threads": ENV["threads"] + 1})}
    warnings = environment.study_environment(two)["warnings"]
    assert len(warnings) == 2 and "2 environments" in warnings[0] and "cpu_model" in warnings[0]
    assert warnings[1].startswith("finetune jobs ran with different threads")


def test_rerun_command_redirects_the_output_and_sets_threads(tmp_path):
    record = job("evaluate", "results/s/eval/x", ENV, cwd=str(tmp_path))
    record["command"] += ["--model-dir", str(tmp_path / "results/s/model")]
    args = rerun_command(record, tmp_path / "scratch", ENV["threads"] + 1)[1:]
    assert args[args.index("--out") + 1] == str(tmp_path / "scratch")
    assert args[args.index("--threads") + 1] == str(ENV["threads"] + 1)
    assert args[args.index("--model-dir") + 1] == "results/s/model"  # recorded absolute paths, mapped into this tree
    report = job("report", "results/s", ENV)
    report["command"] = ["forgetlab", "report", "m.json", "--out", "results/s"]
    assert "--threads" not in rerun_command(report, tmp_path, 2)  # the report has no --threads option


def test_sample_takes_one_job_of_each_stage_then_more():
    jobs = {f"{kind}{i}": job(kind, f"{kind}{i}", ENV) for kind in ("pretrain", "finetune", "evaluate") for i in range(4)}
    jobs["by-hand"] = {**job("evaluate", "x", ENV), "command": None}  # not rerunnable
    chosen = sample(jobs, None, seed=0)
    assert sorted(jobs[k]["command"][1] for k in chosen) == ["evaluate", "finetune", "pretrain"]
    assert sample(jobs, 5, seed=0)[:3] == chosen and len(sample(jobs, 5, seed=0)) == 5
    assert sample(jobs, 5, seed=0) == sample(jobs, 5, seed=0)
    assert {jobs[k]["command"][1] for k in sample(jobs, None, 0, stages=["finetune"])} == {"finetune"}
    with pytest.raises(ValueError, match="no recorded job of stage soup"):
        sample(jobs, None, 0, stages=["soup"])


def test_the_record_names_the_package_versions_device_threads_and_determinism():
    torch.set_num_threads(1)
    env = environment.collect({"precision": "fp32"}, git_commit="abc")
    assert env["torch"] == torch.__version__ and env["numpy"] == np.__version__ and env["git_commit"] == "abc"
    assert env["threads"] == 1 and env["precision"] == "fp32" and env["compute_dtype"] == "float32"
    assert env["deterministic_algorithms"] == torch.are_deterministic_algorithms_enabled()
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and env["cpu_model"]
    assert env["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert all(environment.tags(env)[f"env.{k}"] == str(v) for k, v in env.items())
