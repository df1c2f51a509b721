"""The unlearning trajectory: cheap metrics every eval_every steps, in MLflow and trajectory.csv,
and steps_to_threshold against the oracle."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from forgetlab.config import stage_params
from forgetlab.eval.scoring import score_split
from forgetlab.eval.trajectory import steps_to_threshold
from forgetlab.model import load_model, load_tokenizer
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
    assert list(traj.columns) == ["step", "forget_prob", "retain_prob", "forget_truth_ratio"]


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
