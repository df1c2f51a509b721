"""The unlearning trajectory: cheap metrics every `eval_every` steps of an unlearning run.

Unlearning outcomes depend strongly on how long a method runs, so besides its final model each
run records, at step 0 (the target) and every `eval_every` optimizer steps (and the last step):

    forget_prob, retain_prob     mean length-normalised answer probability (as in evaluation)
    forget_truth_ratio           mean min(R, 1/R) on forget (TOFU; see forgetlab.metrics.truth_ratio)
    retain_truth_ratio           mean max(0, 1 - R) on retain (TOFU's utility term, the metric's definition)
    forget_paraphrased_prob      mean paraphrased-answer probability on forget
    forget_perturbed_prob        mean perturbed-answers probability on forget (where the mass goes)
    utility_lik                  model_utility_lik: TOFU's model utility without its three ROUGE
                                 terms (forgetlab.metrics.model_utility), on the retain, real_authors
                                 and world_facts subsets; NaN when the data lacks a term (no
                                 real_authors or world_facts split; TOFU's retain split, which has
                                 no perturbed answers)
    utility_value_lik            model_utility_value_lik: the same six terms on the value's tokens
                                 (forgetlab.metrics.model_utility_value); NaN where the data has no
                                 value form (TOFU's rows, which have no paraphrase)

from one likelihood pass (no generation) over the whole forget split and seeded subsets of the
retain, real_authors and world_facts splits, on the model as the method would save it at that step (e.g.
task_vector's negated weights; see Method.as_saved). Each point goes to MLflow as a step metric
(`traj_*`) and to `trajectory.csv` beside the model; the per-sample forget truth ratios of every
point go to `trajectory_samples.parquet` (step, id, truth_ratio). The evaluate stage turns them
into `steps_to_threshold` (the first recorded step where forget_prob falls below the oracle's) and
the matched comparison (`matched_metrics`: the run's metrics where its forget_prob reaches the
oracle's, interpolated between the two recorded points around the crossing).
"""

from __future__ import annotations

import math
import sys
from contextlib import nullcontext

import pandas as pd

from forgetlab.eval.scoring import score_split
from forgetlab.hooks import Hooks
from forgetlab.metrics import EvalInputError, mean_or_nan
from forgetlab.metrics.model_utility import model_utility_lik
from forgetlab.metrics.model_utility_value import model_utility_value_lik
from forgetlab.metrics.truth_ratio import symmetric_score, utility_score

COLUMNS = ["step", "forget_prob", "retain_prob", "forget_truth_ratio", "retain_truth_ratio",
           "forget_paraphrased_prob", "forget_perturbed_prob", "utility_lik", "utility_value_lik"]
SAMPLE_COLUMNS = ["step", "id", "truth_ratio"]


def likelihood_utility(samples: pd.DataFrame, utility=model_utility_lik) -> float:
    """`utility` (model_utility_lik or model_utility_value_lik) of a point's samples; NaN where the
    data lacks a term (no real_authors or world_facts split, or, as TOFU's retain split, no
    perturbed answers for the truth ratio; no paraphrase for the value form)."""
    try:  # a missing split or column is an EvalInputError (forgetlab.metrics.require_values)
        return utility(samples)
    except EvalInputError:
        return math.nan


class Trajectory(Hooks):
    def __init__(self, tokenizer, forget_rows: list[dict], retain_rows: list[dict], eval_every: int,
                 total_steps: int, log=None, batch_size: int = 64, as_saved=nullcontext,
                 utility_rows: dict[str, list[dict]] | None = None):
        self.tokenizer, self.forget_rows, self.retain_rows = tokenizer, forget_rows, retain_rows
        self.utility_rows = utility_rows or {}  # {"real_authors": rows, "world_facts": rows}
        self.as_saved = as_saved  # the method's view of the model as it would be saved now
        self.eval_every, self.total_steps, self.log, self.batch_size = eval_every, total_steps, log, batch_size
        self.points: list[dict] = []
        self.truth_ratios: list[list[float]] = []  # per point: the forget rows' truth ratios, in row order
        self.encodings: dict = {}  # the rows' QA encodings, made at the first point and kept (score_split)

    def setup(self, model, ctx):
        self.record(model, 0)
        return model

    def after_step(self, model, step: int, optimizer) -> None:
        done = step + 1
        if done % self.eval_every == 0 or done == self.total_steps:
            self.record(model, done)

    def record(self, model, step: int) -> dict:
        # likelihoods only, the rows encoded once (score_split's encodings), no per-token statistics
        splits = [("forget", self.forget_rows), ("retain", self.retain_rows), *self.utility_rows.items()]
        with self.as_saved(model) as saved:
            samples = pd.concat([score_split(saved, self.tokenizer, rows, split, self.batch_size, generate=False,
                                             encodings=self.encodings, token_stats=False)
                                 for split, rows in splits], ignore_index=True)
        forget = samples[samples.split == "forget"]
        point = {
            "step": step,
            "forget_prob": mean_or_nan(forget["prob"]),
            "retain_prob": mean_or_nan(samples.loc[samples.split == "retain", "prob"]),
            "forget_truth_ratio": symmetric_score(samples, "forget"),
            "retain_truth_ratio": utility_score(samples, "retain"),
            "forget_paraphrased_prob": mean_or_nan(forget["paraphrased_prob"]),
            "forget_perturbed_prob": mean_or_nan(forget["perturbed_prob"]),
            "utility_lik": likelihood_utility(samples),
            "utility_value_lik": likelihood_utility(samples, model_utility_value_lik),
        }
        self.points.append(point)
        self.truth_ratios.append([float(v) for v in forget["truth_ratio"]])
        if self.log is not None:
            self.log(step, {f"traj_{k}": v for k, v in point.items() if k != "step"})
        return point

    def state_dict(self) -> dict:
        return {"points": [{k: int(v) if k == "step" else float(v) for k, v in p.items()} for p in self.points],
                "truth_ratios": [list(t) for t in self.truth_ratios]}

    def load_state_dict(self, state: dict) -> None:
        self.points = [dict(p) for p in state["points"]]
        self.truth_ratios = [list(t) for t in state["truth_ratios"]]

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.points, columns=COLUMNS)

    def sample_table(self) -> pd.DataFrame:
        """One row per (recorded step, forget row): its truth ratio (what forget quality is made of)."""
        ids = [r.get("id", i) for i, r in enumerate(self.forget_rows)]
        rows = [(p["step"], i, tr) for p, ratios in zip(self.points, self.truth_ratios) for i, tr in zip(ids, ratios)]
        return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


def steps_to_threshold(trajectory: pd.DataFrame, oracle_forget_prob: float) -> dict[str, float]:
    """The first recorded step whose forget_prob is below the oracle's.

    Returns {"steps_to_threshold": step, "threshold_reached": 1.0}; a run that never gets there is
    censored at its last recorded step with threshold_reached 0.0 (never NaN).
    """
    if len(trajectory) == 0 or math.isnan(oracle_forget_prob):
        raise ValueError("steps_to_threshold needs a non-empty trajectory and the oracle's forget_prob")
    found = crossing(trajectory, oracle_forget_prob)
    if found is not None:
        return {"steps_to_threshold": float(trajectory["step"].iloc[found[1]]), "threshold_reached": 1.0}
    return {"steps_to_threshold": float(trajectory["step"].iloc[-1]), "threshold_reached": 0.0}


# the matched comparison's columns: metrics.json keys (NaN when the run never reaches the oracle)
MATCHED = ["matched_step", "matched_forget_quality", "matched_forget_truth_ratio", "matched_retain_prob",
           "matched_retain_truth_ratio", "matched_utility_retain_lik", "matched_model_utility_lik",
           "matched_model_utility_value_lik", "matched_forget_paraphrased_prob", "matched_forget_perturbed_prob"]


def point_forget_quality(samples: pd.DataFrame, step: int, oracle: pd.DataFrame) -> float:
    """TOFU's forget quality (forgetlab.metrics.forget_quality) of the recorded point `step`."""
    from forgetlab.metrics.forget_quality import forget_quality  # scipy, imported when needed

    at = samples[samples["step"] == step]
    if len(at) == 0:
        raise ValueError(f"trajectory samples have no rows of step {step}")
    return forget_quality(at.assign(split="forget"), oracle)


def crossing(trajectory: pd.DataFrame, oracle_forget_prob: float) -> tuple[int, int, float] | None:
    """(j, i, t): the recorded points j <= i around the first passage of forget_prob below the
    oracle's (i the first point below, j the one before it) and the fraction t in [0, 1) of the way
    from j to i at which the straight line between them meets the oracle's level; (0, 0, 0.0) when
    the run starts below it; None when it never gets there (steps_to_threshold's convention)."""
    f = trajectory["forget_prob"].to_numpy(dtype=float)
    below = [k for k, v in enumerate(f) if v < oracle_forget_prob]
    if not below:
        return None
    i = below[0]
    if i == 0:
        return 0, 0, 0.0
    j = i - 1
    return j, i, float((f[j] - oracle_forget_prob) / (f[j] - f[i]))


def matched_metrics(trajectory: pd.DataFrame, samples: pd.DataFrame, oracle_forget_prob: float,
                    oracle: pd.DataFrame) -> dict[str, float]:
    """The run's metrics at equal forgetting: where its forget_prob first reaches the oracle's.

    Between the bracketing points j and i (`crossing`), every recorded column is interpolated
    linearly at t; forget quality is computed at both points (KS of the point's per-sample forget
    truth ratios against the oracle's) and interpolated on the log10 scale; the likelihood part of
    the retain side of TOFU's model utility, `matched_utility_retain_lik`, is the harmonic mean of
    the interpolated retain_prob and retain_truth_ratio (2 of utility's 9 terms: a named proxy,
    not model_utility); `matched_model_utility_lik` is the interpolated `utility_lik`, the six
    likelihood terms of model utility (NaN for a trajectory without it), and
    `matched_model_utility_value_lik` the interpolated `utility_value_lik`. `matched_reached` is 1.0,
    or 0.0 with every other key NaN."""
    if len(trajectory) == 0 or math.isnan(oracle_forget_prob):
        raise ValueError("matched_metrics needs a non-empty trajectory and the oracle's forget_prob")
    found = crossing(trajectory, oracle_forget_prob)
    if found is None:
        return {"matched_reached": 0.0, **{k: math.nan for k in MATCHED}}
    j, i, t = found
    a, b = trajectory.iloc[j], trajectory.iloc[i]

    def at(column: str) -> float:
        return float(a[column]) if t == 0 else float((1 - t) * a[column] + t * b[column])

    fq = point_forget_quality(samples, int(a["step"]), oracle)
    if t > 0:
        fq_b = point_forget_quality(samples, int(b["step"]), oracle)
        log_a, log_b = (math.log10(max(v, sys.float_info.min)) for v in (fq, fq_b))
        fq = 10 ** ((1 - t) * log_a + t * log_b)
    retain = [at("retain_prob"), at("retain_truth_ratio")]
    utility = 0.0 if min(retain) <= 0 else 2 / (1 / retain[0] + 1 / retain[1])
    return {"matched_reached": 1.0, "matched_step": at("step"), "matched_forget_quality": fq,
            "matched_forget_truth_ratio": at("forget_truth_ratio"), "matched_retain_prob": retain[0],
            "matched_retain_truth_ratio": retain[1], "matched_utility_retain_lik": utility,
            "matched_model_utility_lik": at("utility_lik") if "utility_lik" in trajectory else math.nan,
            "matched_model_utility_value_lik": (at("utility_value_lik") if "utility_value_lik" in trajectory
                                                else math.nan),
            "matched_forget_paraphrased_prob": at("forget_paraphrased_prob"),
            "matched_forget_perturbed_prob": at("forget_perturbed_prob")}
