"""The metrics' declared contract (forgetlab.metrics.uses) and the evaluation plan built on it
(forgetlab.eval.plan): each metric declares the tables and the per-sample columns it reads, and an
evaluation runs only the passes that its configured metrics read."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from forgetlab.config import stage_params
from forgetlab.eval import relearn, scoring
from forgetlab.eval.plan import OPTIONAL_PASSES, inputs_of, metrics_to_run, needs_target, passes_for
from forgetlab.eval.tables import TARGET_COLUMNS
from forgetlab.metrics import KEYS, METRICS, TABLES, EvalInputError, compute_metrics, uses, uses_of
from forgetlab.recipes import evaluate as recipe
from tests.helpers import smoke_config

SMOKE_METRICS = smoke_config()["evaluate"]["metrics"]


def test_every_registered_metric_declares_tables_and_columns_of_the_scoring_table():
    scoring_table = {*scoring.COLUMNS, *relearn.COLUMNS, *TARGET_COLUMNS.values()}
    for name in METRICS.names():
        contract = uses_of(name)
        assert "model" in contract.tables and set(contract.tables) <= set(TABLES), name
        assert contract.columns and set(contract.columns) <= scoring_table - set(KEYS), name
    # what is declared, is what the oracle/target inputs follow from
    assert inputs_of("forget_quality") == ["oracle"] and inputs_of("mia_reference") == ["oracle"]
    assert inputs_of("relearn_recovery") == ["oracle", "target"] and inputs_of("mia_gradnorm") == []
    assert needs_target(["mia_loss", "relearn_recovery"]) and not needs_target(SMOKE_METRICS)


def test_a_contract_names_known_tables_and_some_columns():
    with pytest.raises(ValueError, match="among model, oracle, reference, target"):
        uses(tables=("model", "teacher"), columns=("prob",))
    with pytest.raises(ValueError, match="include 'model'"):
        uses(tables=("oracle",), columns=("prob",))
    with pytest.raises(ValueError, match="declares the per-sample columns"):
        uses(tables=("model",))


def test_metrics_reading_the_oracle_or_reference_say_so_when_it_is_missing():
    table = pd.DataFrame({"split": ["forget"], "id": ["f0"]})
    for name in METRICS.names():
        if {"oracle", "reference"} & set(uses_of(name).tables):
            with pytest.raises(EvalInputError, match=f"'{name}' needs the oracle's per-sample table"):
                compute_metrics([name], table, None)


def test_passes_follow_from_the_declared_columns():
    assert passes_for(["mia_loss", "forget_quality"]) == []  # the likelihood pass alone
    assert passes_for(["mia_zlib", "mia_min_k_plus_plus", "privleak", "mia_reference", "exact_memorization",
                       "forget_truth_ratio", "forget_prob", "world_facts_option_prob"]) == []
    assert passes_for(["mia_gradnorm"]) == ["gradnorm"]
    assert passes_for(["form_robustness"]) == ["forms"]
    assert passes_for(["knowmem"]) == passes_for(["verbmem"]) == passes_for(["retain_rouge"]) == ["generation"]
    assert passes_for(["model_utility"]) == ["generation"]  # its ROUGE-L terms
    # the relearning attack, and the generation that the target's and the oracle's rouge_l_recall need
    assert passes_for(["relearn_recovery"]) == ["generation", "relearn"]
    assert passes_for(SMOKE_METRICS) == ["generation", "gradnorm", "forms"]
    assert set(OPTIONAL_PASSES) == {"generation", "gradnorm", "forms", "relearn"}


def test_missing_inputs_are_named_before_scoring_and_skipped_for_the_pretrained_model():
    names = ["mia_reference", "mia_loss"]
    assert metrics_to_run(names, "pretrained", set()) == ["mia_loss"]
    with pytest.raises(EvalInputError, match=r"'mia_reference' needs the oracle's per-sample table \(--oracle DIR"):
        metrics_to_run(names, "unlearned", {"target"})


def test_score_model_times_only_the_passes_it_runs(model, tok):
    rows = [{"id": "q0", "question": "Who?", "answer": "Nobody at all.", "paraphrased_answer": "No one.",
             "perturbed_answer": ["Everyone.", "Somebody."]}]
    timings = {}
    cheap = scoring.score_model(model, tok, {"forget": rows, "holdout": rows}, max_new_tokens=2, passes=[],
                                timings=timings)
    assert set(timings) == {"logprob"}
    assert cheap["grad_norm"].isna().all() and cheap["rouge_l_recall"].isna().all()
    assert (cheap["generated"] == "").all() and cheap["verbmem_generated"].isna().all()
    timings = {}
    scoring.score_model(model, tok, {"forget": rows, "holdout": rows}, max_new_tokens=2, passes=["gradnorm"],
                        timings=timings)
    assert set(timings) == {"logprob", "gradnorm"}
    with pytest.raises(ValueError, match="unknown scoring pass"):
        scoring.score_model(model, tok, {"forget": rows}, passes=["relearn"])


class Spy:
    """Records the calls of a pass function and runs it."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


# the function behind each optional pass, where the evaluation calls it
PASS_FUNCTIONS = {"generation": (scoring, "greedy_continuations"), "gradnorm": (scoring, "grad_norms"),
                  "forms": (scoring, "score_forms"), "relearn": (recipe, "relearn_columns")}


def evaluate_oracle(metrics: list[str], smoke_data, tiny_model_dir, out) -> tuple[pd.DataFrame, dict, dict]:
    """The evaluate recipe on the tiny model as the oracle (its own oracle): its table, its metrics
    and how often each pass function was called."""
    config = smoke_config()
    config["evaluate"]["metrics"] = metrics
    config["evaluate"]["relearn"] = {"steps": 1, "batch_size": 4}
    params = stage_params(config, "evaluate", model="oracle", regularizer="none", seed=0, split="forget10")
    with pytest.MonkeyPatch.context() as mp:
        spies = {}
        for name, (module, function) in PASS_FUNCTIONS.items():
            spies[name] = Spy(getattr(module, function))
            mp.setattr(module, function, spies[name])
        recipe.run(params, tiny_model_dir, smoke_data, out)
    metrics_json = json.loads((out / "metrics.json").read_text())["metrics"]
    return pd.read_parquet(out / "samples.parquet"), metrics_json, {name: spy.calls for name, spy in spies.items()}


def test_an_evaluation_runs_only_the_passes_its_metrics_read(smoke_data, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cheap, cheap_metrics, cheap_calls = evaluate_oracle(["mia_loss", "forget_quality"], smoke_data, tiny_model_dir,
                                                        tmp_path / "cheap")
    full, full_metrics, full_calls = evaluate_oracle([*SMOKE_METRICS, "relearn_recovery"], smoke_data,
                                                     tiny_model_dir, tmp_path / "full")
    assert cheap_calls == {"generation": 0, "gradnorm": 0, "forms": 0, "relearn": 0}
    assert all(full_calls.values()), full_calls  # the spies see the passes when they run
    # the same values for what the cheap evaluation computes, its other columns empty
    assert cheap_metrics == {k: full_metrics[k] for k in ("mia_loss", "forget_quality")}
    assert list(cheap.columns) == scoring.COLUMNS  # the table's schema is stable; no relearn columns
    optional = {c for p in ("generation", "gradnorm", "forms") for c in OPTIONAL_PASSES[p]}
    computed = [c for c in scoring.COLUMNS if c not in optional]
    pd.testing.assert_frame_equal(cheap[computed], full[computed], check_exact=True)
    assert (cheap["generated"] == "").all() and full.loc[full["split"] == "forget", "generated"].ne("").any()
    for column in optional - {"generated"}:
        assert cheap[column].isna().all(), column
    assert {"relearn_prob", "relearn_subset"} <= set(full.columns)
