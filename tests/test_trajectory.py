"""The unlearning trajectory: cheap metrics every eval_every steps, in MLflow and trajectory.csv,
and steps_to_threshold against the oracle."""

from __future__ import annotations

import math
import random

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from forgetlab.config import stage_params
from forgetlab.eval import passes
from forgetlab.eval.scoring import score_split
from forgetlab.eval.trajectory import matched_metrics, steps_to_threshold
from forgetlab.metrics import METRICS
from forgetlab.model import load_model, load_tokenizer
from forgetlab.qa import encode_qa
from forgetlab.recipes import read_jsonl
from forgetlab.recipes import unlearn as unlearn_recipe
from forgetlab.train import NonFiniteLossError
from forgetlab.unlearning.grad_ascent import GradAscent
from tests.helpers import smoke_config


def test_steps_to_threshold_is_the_first_step_below_the_oracle():
    traj = pd.DataFrame({"step": [0, 5, 10, 12], "forget_prob": [0.9, 0.3, 0.05, 0.01]})
    assert steps_to_threshold(traj, 0.1) == {"steps_to_threshold": 10.0, "threshold_reached": 1.0}
    # equal is not below: the oracle's level must be passed
    assert steps_to_threshold(traj, 0.05)["steps_to_threshold"] == 12.0


def test_steps_to_threshold_never_reached_is_censored_not_nan():
    traj = pd.DataFrame({"step": [0, 5, 7], "forget_prob": [0.9, 0.8, 0.7]})
    assert steps_to_threshold(traj, 0.1) == {"steps_to_threshold": 7.0, "threshold_reached": 0.0}
    with pytest.raises(ValueError, match="non-empty"):
        steps_to_threshold(traj.iloc[:0], 0.1)


def unlearn_params(method: str, **train):
    config = smoke_config()
    config["unlearn"].update(train)
    params = stage_params(config, "unlearn", model="unlearned", regularizer="none", seed=0,
                          split="forget10", method=method)
    return params


@pytest.fixture()
def mlflow_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.mark.parametrize("method", ["npo", "task_vector"])  # task_vector: points describe the negated model
def test_trajectory_is_recorded_every_eval_every_steps(method, tiny_model_dir, smoke_data, tmp_path, mlflow_uri):
    config = smoke_config()
    config["methods"]["task_vector"] = {"name": "task_vector", "alpha": 1.0}
    config["unlearn"].update(max_steps=5, eval_every=2, lr=1e-2)
    params = stage_params(config, "unlearn", model="unlearned", regularizer="none", seed=0,
                          split="forget10", method=method)
    out = tmp_path / method
    unlearn_recipe.run(params, tiny_model_dir, smoke_data, out)
    traj = pd.read_csv(out / "trajectory.csv")
    assert traj["step"].tolist() == [0, 2, 4, 5]  # the start, every 2 steps, and the last step

    # step 0 is the target itself, scored exactly as the evaluate stage scores it
    forget = read_jsonl(smoke_data / "qa" / "forget10.jsonl")
    target = score_split(load_model(tiny_model_dir), load_tokenizer(tiny_model_dir), forget, "forget")
    assert traj["forget_prob"].iloc[0] == pytest.approx(target["prob"].mean(), rel=1e-6)
    # and the last point is the saved model (for task_vector: the negated weights, not the fine-tuned ones)
    final = score_split(load_model(out), load_tokenizer(out), forget, "forget", generate=False)
    assert traj["forget_prob"].iloc[-1] == pytest.approx(final["prob"].mean(), rel=1e-5)

    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])[0]
    history = client.get_metric_history(run.info.run_id, "traj_forget_prob")
    assert [m.step for m in history] == [0, 2, 4, 5]
    assert [m.value for m in history] == pytest.approx(traj["forget_prob"].tolist())
    assert len(client.get_metric_history(run.info.run_id, "traj_forget_truth_ratio")) == 4
    assert list(traj.columns) == ["step", "forget_prob", "retain_prob", "forget_truth_ratio", "retain_truth_ratio",
                                  "forget_paraphrased_prob", "forget_perturbed_prob", "utility_lik", "utility_value_lik"]
    # where the probability mass goes: the paraphrase's and the perturbed answers' probability, as evaluated
    assert traj["forget_paraphrased_prob"].iloc[0] == pytest.approx(target["paraphrased_prob"].mean(), rel=1e-6)
    assert traj["forget_perturbed_prob"].iloc[0] == pytest.approx(target["perturbed_prob"].mean(), rel=1e-6)
    # the per-sample forget truth ratios of every point, those of step 0 the target's
    samples = pd.read_parquet(out / "trajectory_samples.parquet")
    assert list(samples.columns) == ["step", "id", "truth_ratio"] and len(samples) == 4 * len(forget)
    first = samples[samples.step == 0]
    assert first["id"].tolist() == target["id"].tolist()
    assert first["truth_ratio"].to_numpy() == pytest.approx(target["truth_ratio"].to_numpy(), rel=1e-5)
    last = samples[samples.step == 5]["truth_ratio"]
    assert last.to_numpy() == pytest.approx(final["truth_ratio"].to_numpy(), rel=1e-4)


def test_trajectory_rows_sets_the_subsets_each_point_scores(tiny_model_dir, smoke_data, tmp_path, mlflow_uri):
    out = tmp_path / "ga"
    params = unlearn_params("grad_ascent", max_steps=1, eval_every=1, trajectory_rows=6)
    unlearn_recipe.run(params, tiny_model_dir, smoke_data, out)
    # step 0: the target's mean answer probability on the 6 retain rows drawn by random.Random(seed)
    model, tokenizer = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    retain = read_jsonl(smoke_data / "qa" / f"{params['retain_split']}.jsonl")
    subset = random.Random(params["seed"]).sample(retain, 6)
    target = score_split(model, tokenizer, subset, "retain", generate=False)
    traj = pd.read_csv(out / "trajectory.csv")
    assert traj["retain_prob"].iloc[0] == pytest.approx(target["prob"].mean(), rel=1e-6)
    # and utility_lik: the likelihood-only model utility on the 6-row subsets of retain, real_authors, world_facts
    others = [score_split(model, tokenizer, random.Random(params["seed"]).sample(
        read_jsonl(smoke_data / "qa" / f"{split}.jsonl"), 6), split, generate=False)
        for split in ("real_authors", "world_facts")]
    utility = METRICS.get("model_utility_lik")(pd.concat([target, *others], ignore_index=True))
    assert traj["utility_lik"].iloc[0] == pytest.approx(utility, rel=1e-6) and 0 < utility < 1
    # and utility_value_lik: the same six terms on the value's tokens (model_utility_value_lik), on the same subsets
    value = METRICS.get("model_utility_value_lik")(pd.concat([target, *others], ignore_index=True))
    assert traj["utility_value_lik"].iloc[0] == pytest.approx(value, rel=1e-6) and 0 < value < 1 and value != utility
    assert len(retain) > 6 and target["prob"].mean() != pytest.approx(
        score_split(load_model(tiny_model_dir), load_tokenizer(tiny_model_dir), retain[:6], "retain",
                    generate=False)["prob"].mean(), rel=1e-6)


def test_no_trajectory_when_eval_every_is_zero(tiny_model_dir, smoke_data, tmp_path, mlflow_uri):
    out = tmp_path / "ga"
    unlearn_recipe.run(unlearn_params("grad_ascent", max_steps=2, eval_every=0), tiny_model_dir, smoke_data, out)
    assert (out / "model.safetensors").exists() and not (out / "trajectory.csv").exists()


def test_a_diverging_method_stops_naming_the_method_and_step(tiny_model_dir, smoke_data, tmp_path, mlflow_uri,
                                                             monkeypatch):
    calls = []
    real = GradAscent.loss

    def loss(self, model, batch):
        calls.append(1)
        value, parts = real(self, model, batch)
        return (value * float("nan") if len(calls) == 3 else value), parts

    monkeypatch.setattr(GradAscent, "loss", loss)
    out = tmp_path / "ga"
    with pytest.raises(NonFiniteLossError, match=r"unlearn grad_ascent \(grad_ascent\).*nan at step 2"):
        unlearn_recipe.run(unlearn_params("grad_ascent", max_steps=5), tiny_model_dir, smoke_data, out)
    assert not out.exists()


# --- the matched comparison: the run's metrics where its forget_prob reaches the oracle's -----------
ORACLE_TR = [0.1, 0.2, 0.3, 0.4]


def matched_inputs():
    """Points at steps 0, 10, 20; forget_prob passes the oracle's 0.4 a third of the way from 10 to 20
    (0.5 - 0.4 = (0.5 - 0.2) / 3). Step 10's truth ratios are the oracle's (KS p = 1), step 20's all
    above them (D = 1 with 4 and 4 samples: exact p = 2 / C(8, 4) = 1/35)."""
    traj = pd.DataFrame({"step": [0, 10, 20], "forget_prob": [0.8, 0.5, 0.2], "retain_prob": [0.9, 0.6, 0.3],
                         "forget_truth_ratio": [0.9, 0.6, 0.3], "retain_truth_ratio": [0.5, 0.5, 0.2],
                         "forget_paraphrased_prob": [0.7, 0.4, 0.1], "forget_perturbed_prob": [0.1, 0.2, 0.5],
                         "utility_lik": [0.6, 0.45, 0.3], "utility_value_lik": [0.9, 0.75, 0.15]})
    ratios = {0: [0.5, 0.6, 0.7, 0.8], 10: ORACLE_TR, 20: [0.5, 0.6, 0.7, 0.8]}
    samples = pd.DataFrame([(step, i, r) for step, rs in ratios.items() for i, r in enumerate(rs)],
                           columns=["step", "id", "truth_ratio"])
    oracle = pd.DataFrame({"split": "forget", "id": range(4), "truth_ratio": ORACLE_TR})
    return traj, samples, oracle


def test_matched_metrics_interpolate_between_the_points_around_the_crossing():
    traj, samples, oracle = matched_inputs()
    m = matched_metrics(traj, samples, 0.4, oracle)
    assert m["matched_reached"] == 1.0 and m["matched_step"] == pytest.approx(10 + 10 / 3)
    assert m["matched_retain_prob"] == pytest.approx(0.5)  # 0.6 - 0.3 / 3
    assert m["matched_retain_truth_ratio"] == pytest.approx(0.4)  # 0.5 - 0.3 / 3
    assert m["matched_utility_retain_lik"] == pytest.approx(2 / (1 / 0.5 + 1 / 0.4))  # their harmonic mean
    assert m["matched_forget_truth_ratio"] == pytest.approx(0.5)
    assert m["matched_forget_paraphrased_prob"] == pytest.approx(0.3)
    assert m["matched_forget_perturbed_prob"] == pytest.approx(0.3)
    assert m["matched_model_utility_lik"] == pytest.approx(0.4)  # 0.45 - 0.15 / 3
    assert m["matched_model_utility_value_lik"] == pytest.approx(0.55)  # 0.75 - 0.6 / 3
    # an older trajectory without utility_lik and utility_value_lik: the keys are NaN, the rest unchanged
    old = matched_metrics(traj.drop(columns=["utility_lik", "utility_value_lik"]), samples, 0.4, oracle)
    assert math.isnan(old["matched_model_utility_lik"]) and math.isnan(old["matched_model_utility_value_lik"])
    assert old["matched_retain_prob"] == pytest.approx(0.5)
    # log10 forget quality: 2/3 * log10(1) + 1/3 * log10(1/35)
    assert m["matched_forget_quality"] == pytest.approx(35 ** (-1 / 3))


def test_matched_metrics_at_a_recorded_point_and_never_reached():
    traj, samples, oracle = matched_inputs()
    start = matched_metrics(traj, samples, 0.9, oracle)  # the target is already below: step 0 itself
    assert start["matched_step"] == 0 and start["matched_retain_prob"] == 0.9
    assert start["matched_forget_quality"] == pytest.approx(2 / 70)  # step 0's truth ratios: D = 1
    # step 10 is at the oracle's level, not below it: the crossing starts there (t = 0), step 10 itself
    exact = matched_metrics(traj, samples, 0.5, oracle)
    assert exact["matched_step"] == 10 and exact["matched_forget_quality"] == 1.0 and exact["matched_retain_prob"] == 0.6
    never = matched_metrics(traj, samples, 0.1, oracle)
    assert never["matched_reached"] == 0.0
    assert all(math.isnan(v) for k, v in never.items() if k != "matched_reached")
    with pytest.raises(ValueError, match="non-empty"):
        matched_metrics(traj.iloc[:0], samples, 0.4, oracle)


def test_utility_lik_is_nan_where_the_data_lacks_a_term():
    from forgetlab.eval.trajectory import likelihood_utility

    row = {"prob": 0.5, "option_prob": 0.5, "truth_ratio": 0.5}
    full = pd.DataFrame([{"split": s, **row} for s in ("retain", "real_authors", "world_facts")])
    # every term 0.5 (the truth ratio terms: 1 - 0.5) -> their harmonic mean 0.5
    assert likelihood_utility(full) == pytest.approx(0.5)
    assert math.isnan(likelihood_utility(full[full.split != "world_facts"]))  # no world_facts split
    no_tr = full.assign(truth_ratio=[math.nan, 0.5, 0.5])  # TOFU's retain split: no perturbed answers
    assert math.isnan(likelihood_utility(no_tr))
    from forgetlab.metrics.model_utility_value import model_utility_value_lik

    # the value form: NaN without its columns (TOFU's rows have no paraphrase, so no value span)
    assert math.isnan(likelihood_utility(full, model_utility_value_lik))
    value = full.assign(option_prob_value=[math.nan, 0.25, 0.25], truth_ratio_value=[0.75, 0.75, 0.75])
    # terms: retain prob 0.5, TR 0.25 | ra 0.25, 0.25 | wf 0.25, 0.25 -> 6 / (2 + 4 * 5) = 6/22
    assert likelihood_utility(value, model_utility_value_lik) == pytest.approx(6 / 22)


def test_memoised_encodings_score_the_same_and_encode_each_answer_once(tiny_model_dir, smoke_data, monkeypatch):
    from forgetlab.eval import scoring

    model, tokenizer = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    rows = read_jsonl(smoke_data / "qa" / "forget10.jsonl")[:6]
    fresh = score_split(model, tokenizer, rows, "forget", 8, generate=False)
    calls = []
    monkeypatch.setattr(scoring, "encode_qa", lambda tok, q, a: calls.append((q, a)) or encode_qa(tok, q, a))
    encodings: dict = {}
    first = score_split(model, tokenizer, rows, "forget", 8, generate=False, encodings=encodings)
    again = score_split(model, tokenizer, rows, "forget", 8, generate=False, encodings=encodings)
    pd.testing.assert_frame_equal(first, fresh)
    pd.testing.assert_frame_equal(again, fresh)
    # each row: its answer, paraphrase and perturbed answers, encoded at the first call only
    answers = {(r["question"], a) for r in rows for a in [r["answer"], r["paraphrased_answer"], *r["perturbed_answer"]]}
    assert sorted(calls) == sorted(answers) and set(encodings) == answers


@pytest.mark.parametrize("packed", [True, False])
def test_without_token_stats_only_the_per_token_statistics_are_left_out(packed, tiny_model_dir, smoke_data,
                                                                         monkeypatch):
    if not packed:  # a model whose attention takes no 4D mask (e.g. flash attention): scored one by one
        monkeypatch.setattr(passes, "PACKED_ATTENTION", ())
    model, tokenizer = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    rows = read_jsonl(smoke_data / "qa" / "forget10.jsonl")[:6]
    full = score_split(model, tokenizer, rows, "forget", 8, generate=False)
    lean = score_split(model, tokenizer, rows, "forget", 8, generate=False, token_stats=False)
    skipped = ["answer_token_match", "answer_token_mu", "answer_token_sigma"]
    pd.testing.assert_frame_equal(lean.drop(columns=skipped), full.drop(columns=skipped))
    for col in skipped:
        assert all(len(a) == len(b) and all(math.isnan(x) for x in a) for a, b in zip(lean[col], full[col])), col
    assert full["answer_token_mu"].map(lambda v: all(math.isfinite(x) for x in v)).all()
