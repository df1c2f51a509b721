"""The real_authors split reaches the evaluation and is scored exactly like world_facts (TOFU's
model utility reads both: Maini et al. 2024)."""

from __future__ import annotations

import math
import random

import pandas as pd
import pytest

from forgetlab.config import stage_params
from forgetlab.recipes import evaluate as recipe
from forgetlab.recipes import read_jsonl
from tests.helpers import smoke_config

SPLITS = ["forget", "retain", "holdout", "world_facts", "real_authors"]
# what TOFU's model utility reads from real_authors (and world_facts), per sample
UTILITY_COLUMNS = ["prob", "option_prob", "rouge_l_recall", "truth_ratio"]


def params(max_samples: int | None = None, metrics: list[str] | None = None) -> dict:
    config = smoke_config()
    if max_samples is not None:
        config["evaluate"]["max_samples"] = max_samples
    if metrics is not None:
        config["evaluate"]["metrics"] = metrics
    return stage_params(config, "evaluate", model="pretrained", split="forget10")


def test_eval_splits_has_real_authors_capped_like_the_others(smoke_data):
    rows = read_jsonl(smoke_data / "qa" / "real_authors.jsonl")
    splits = recipe.eval_splits(params(), smoke_data)
    assert list(splits) == SPLITS
    assert splits["real_authors"] == rows  # 12 rows, under the smoke study's cap of 40
    capped = recipe.eval_splits(params(max_samples=5), smoke_data)
    assert capped["real_authors"] == random.Random(0).sample(rows, 5)  # the data seed's subset
    assert len(capped["world_facts"]) == 5 and len(capped["forget"]) == len(splits["forget"])  # forget is never capped


def test_missing_real_authors_file_is_a_clear_error(smoke_data, tmp_path):
    (tmp_path / "qa").mkdir()
    for split in ("forget10", "retain90", "holdout", "world_facts"):
        (tmp_path / "qa" / f"{split}.jsonl").write_bytes((smoke_data / "qa" / f"{split}.jsonl").read_bytes())
    with pytest.raises(recipe.EvalInputError, match="real_authors.jsonl not found"):
        recipe.eval_splits(params(), tmp_path)


def test_real_authors_rows_are_scored_like_world_facts(smoke_data, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    recipe.run(params(metrics=["model_utility"]), tiny_model_dir, smoke_data, tmp_path / "eval")
    samples = pd.read_parquet(tmp_path / "eval" / "samples.parquet")
    assert list(dict.fromkeys(samples["split"])) == SPLITS
    real, facts = samples[samples["split"] == "real_authors"], samples[samples["split"] == "world_facts"]
    assert real["id"].tolist() == [r["id"] for r in read_jsonl(smoke_data / "qa" / "real_authors.jsonl")]
    for column in UTILITY_COLUMNS:
        assert real[column].map(lambda v: isinstance(v, float) and math.isfinite(v)).all(), column
    assert ((real["option_prob"] > 0) & (real["option_prob"] < 1)).all()
    # the same columns are filled, and the same left empty (no GradNorm, verbmem or forms), as world_facts
    assert {c: bool(real[c].notna().all()) for c in samples} == {c: bool(facts[c].notna().all()) for c in samples}
    assert {c: bool(real[c].isna().all()) for c in samples} == {c: bool(facts[c].isna().all()) for c in samples}
