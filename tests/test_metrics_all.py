"""Every registered metric on the smoke data, the per-sample table as the only input, and the
evaluate recipe's checks of its inputs (missing oracle/target tables, empty splits)."""

from __future__ import annotations

import json
import math
import subprocess

import pandas as pd
import pytest
import torch

from forgetlab.config import stage_params
from forgetlab.eval.plan import metrics_to_run
from forgetlab.eval.relearn import RelearnConfig, attach_relearn, relearn_columns
from forgetlab.eval.scoring import score_model
from forgetlab.eval.tables import attach_target, read_table
from forgetlab.metrics import KEYS, METRICS, EvalInputError, compute_metrics, uses_of
from forgetlab.model import load_model, load_tokenizer
from forgetlab.recipes.evaluate import eval_splits
from tests.helpers import REPO, cli_env, smoke_config

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def params():
    return stage_params(smoke_config(), "evaluate", model="target", regularizer="none", seed=0, split="forget10")


@pytest.fixture(scope="module")
def samples(smoke_data, tiny_model_dir, params):
    torch.set_num_threads(1)
    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    splits = eval_splits(params, smoke_data)
    table = score_model(model, tok, splits, batch_size=64, max_new_tokens=4)
    # the relearning attack's columns, as the evaluate recipe adds them for relearn_recovery
    relearned = relearn_columns(model, tok, splits["forget"], RelearnConfig(steps=2), 0, batch_size=64, max_new_tokens=4)
    return attach_relearn(table, relearned)


def test_every_registered_metric_runs_on_the_smoke_data(samples):
    got = compute_metrics(None, samples, role="oracle")  # the table as the oracle's own
    assert all(math.isfinite(v) for v in got.values())
    for key in ["forget_quality", "model_utility", "mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus",
                "mia_gradnorm", "mia_reference", "extraction_strength", "exact_memorization", "forget_knowmem",
                "retain_knowmem", "forget_verbmem", "privleak", "privleak_min_k_plus_plus", "world_facts_option_prob",
                "real_authors_option_prob", "real_authors_truth_ratio", "model_utility_para"]:
        assert key in got
    assert got["forget_quality"] == 1.0 and got["privleak"] == 0.0  # the oracle against itself
    assert got["mia_reference"] == 0.5  # its own reference: every score 0
    assert got["relearn_recovery"] == 0.0 and got["relearn_recovery_rouge"] == 0.0
    for key in ["mia_loss", "mia_min_k", "mia_gradnorm", "extraction_strength", "exact_memorization"]:
        assert 0.0 <= got[key] <= 1.0
    assert set(samples.loc[samples.grad_norm.notna(), "split"]) == {"forget", "holdout"}
    assert set(samples.loc[samples.verbmem_generated.notna(), "split"]) == {"forget"}


def test_each_metric_reads_only_its_declared_tables_and_columns(samples):
    """On the table cut down to a metric's declared columns (and without the oracle's table unless
    it declares one) the metric gives what it gives on the whole table."""
    samples = attach_target(samples, samples, "its own table")  # the target columns, as the target has them
    for name in METRICS.names():
        contract = uses_of(name)
        cut = samples[[*KEYS, *contract.columns]]
        with_oracle = bool({"oracle", "reference"} & set(contract.tables))
        got = compute_metrics([name], cut, role="oracle" if with_oracle else "model")
        assert got == compute_metrics([name], samples, role="oracle"), name


def test_the_parquet_alone_recomputes_every_metric(samples, tmp_path):
    samples.to_parquet(tmp_path / "samples.parquet", index=False)
    again = pd.read_parquet(tmp_path / "samples.parquet")
    assert compute_metrics(None, again, role="oracle") == pytest.approx(compute_metrics(None, samples, role="oracle"),
                                                                       abs=1e-12)


def test_pretrained_skips_what_needs_an_oracle_other_models_fail():
    names = ["forget_quality", "mia_loss", "mia_reference", "privleak", "relearn_recovery"]
    assert metrics_to_run(names, "pretrained", set()) == ["mia_loss"]
    assert metrics_to_run(names, "target", {"oracle", "target"}) == names
    with pytest.raises(EvalInputError, match=r"'forget_quality' needs the oracle.*samples\.parquet.*no --oracle"):
        metrics_to_run(names, "target", {"target"})
    with pytest.raises(EvalInputError, match=r"'mia_reference' needs the oracle.*no --oracle"):
        metrics_to_run(names[1:], "unlearned", {"target"})


def test_missing_table_names_the_file(tmp_path):
    with pytest.raises(EvalInputError, match=str(tmp_path / "oracle" / "samples.parquet")):
        read_table(tmp_path / "oracle", "oracle")


def test_the_reference_oracle_must_cover_forget_and_holdout(samples):
    partial = samples[samples["split"] != "holdout"]
    with pytest.raises(EvalInputError, match="mia_reference.*split 'holdout' has no rows in the oracle's"):
        compute_metrics(["mia_reference"], samples, partial)


def test_empty_split_file_and_empty_answer_name_the_file(smoke_data, params, tmp_path):
    data = tmp_path / "data"
    (data / "qa").mkdir(parents=True)
    for f in (smoke_data / "qa").iterdir():
        (data / "qa" / f.name).write_text(f.read_text())
    (data / "qa" / "holdout.jsonl").write_text("")
    with pytest.raises(EvalInputError, match=r"holdout\.jsonl is empty"):
        eval_splits(params, data)
    rows = [json.loads(line) for line in (smoke_data / "qa" / "holdout.jsonl").read_text().splitlines()]
    rows[1]["answer"] = ""
    (data / "qa" / "holdout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(EvalInputError, match=r"holdout\.jsonl: 1 row\(s\) with an empty answer"):
        eval_splits(params, data)


def test_cli_without_oracle_fails_in_one_line_naming_the_file(tmp_path, smoke_data, tiny_model_dir):
    proc = subprocess.run(
        ["forgetlab", "evaluate", "--config", str(REPO / "config" / "smoke.yaml"), "--model-dir", str(tiny_model_dir),
         "--data", str(smoke_data), "--at", "model=target", "--at", "regularizer=none", "--at", "seed=0",
         "--at", "split=forget10", "--out", str(tmp_path / "eval")],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True)
    assert proc.returncode == 2
    assert "error: metric 'forget_quality' needs the oracle's per-sample table" in proc.stderr
    assert "samples.parquet" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "eval").exists()
