"""The unlearning trajectory: cheap metrics every `eval_every` steps of an unlearning run.

Unlearning outcomes depend strongly on how long a method runs, so besides its final model each
run records, at step 0 (the target) and every `eval_every` optimizer steps (and the last step):

    forget_prob, retain_prob     mean length-normalised answer probability (as in evaluation)
    forget_truth_ratio           mean min(R, 1/R) on forget (TOFU; see forgetlab.metrics.truth_ratio)

from one likelihood pass (no generation) over the whole forget split and an equally large,
seeded subset of the retain split (answers only), on the model as the method would save it at that step (e.g.
task_vector's negated weights; see Method.as_saved). Each point goes to MLflow as a step metric (`traj_*`) and to
`trajectory.csv` beside the model. The evaluate stage turns it into `steps_to_threshold`: the
first recorded step where forget_prob falls below the oracle's.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import pandas as pd

from forgetlab.eval.scoring import score_split
from forgetlab.hooks import Hooks
from forgetlab.metrics import mean_or_nan
from forgetlab.metrics.truth_ratio import symmetric_score

COLUMNS = ["step", "forget_prob", "retain_prob", "forget_truth_ratio"]


class Trajectory(Hooks):
    def __init__(self, tokenizer, forget_rows: list[dict], retain_rows: list[dict], eval_every: int,
                 total_steps: int, log=None, batch_size: int = 64, as_saved=nullcontext):
        # retain needs only the answers' likelihood: paraphrases and perturbations are dropped
        retain_rows = [{k: v for k, v in r.items() if k not in ("paraphrased_answer", "perturbed_answer")}
                       for r in retain_rows]
        self.tokenizer, self.forget_rows, self.retain_rows = tokenizer, forget_rows, retain_rows
        self.as_saved = as_saved  # the method's view of the model as it would be saved now
        self.eval_every, self.total_steps, self.log, self.batch_size = eval_every, total_steps, log, batch_size
        self.points: list[dict] = []

    def setup(self, model, ctx):
        self.record(model, 0)
        return model

    def after_step(self, model, step: int, optimizer) -> None:
        done = step + 1
        if done % self.eval_every == 0 or done == self.total_steps:
            self.record(model, done)

    def record(self, model, step: int) -> dict:
        with self.as_saved(model) as saved:
            samples = pd.concat([
                score_split(saved, self.tokenizer, self.forget_rows, "forget", self.batch_size, generate=False),
                score_split(saved, self.tokenizer, self.retain_rows, "retain", self.batch_size, generate=False),
            ], ignore_index=True)
        point = {
            "step": step,
            "forget_prob": mean_or_nan(samples.loc[samples.split == "forget", "prob"]),
            "retain_prob": mean_or_nan(samples.loc[samples.split == "retain", "prob"]),
            "forget_truth_ratio": symmetric_score(samples, "forget"),
        }
        self.points.append(point)
        if self.log is not None:
            self.log(step, {f"traj_{k}": v for k, v in point.items() if k != "step"})
        return point

    def state_dict(self) -> dict:
        return {"points": [{k: int(v) if k == "step" else float(v) for k, v in p.items()} for p in self.points]}

    def load_state_dict(self, state: dict) -> None:
        self.points = [dict(p) for p in state["points"]]

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.points, columns=COLUMNS)


def steps_to_threshold(trajectory: pd.DataFrame, oracle_forget_prob: float) -> dict[str, float]:
    """The first recorded step whose forget_prob is below the oracle's.

    Returns {"steps_to_threshold": step, "threshold_reached": 1.0}; a run that never gets there is
    censored at its last recorded step with threshold_reached 0.0 (never NaN).
    """
    if len(trajectory) == 0 or math.isnan(oracle_forget_prob):
        raise ValueError("steps_to_threshold needs a non-empty trajectory and the oracle's forget_prob")
    below = trajectory[trajectory["forget_prob"] < oracle_forget_prob]
    if len(below):
        return {"steps_to_threshold": float(below["step"].iloc[0]), "threshold_reached": 1.0}
    return {"steps_to_threshold": float(trajectory["step"].iloc[-1]), "threshold_reached": 0.0}
