"""TOFU aggregated truth-ratio scores (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning").

Per sample R = mean_i P(â_i|q)^(1/|â_i|) / P(ã|q)^(1/|ã|) (â perturbed, ã paraphrased answers):
the paper's definition, an arithmetic mean over the perturbed answers. TOFU's released code
averages the perturbed NLLs instead (a geometric mean of the probabilities); kept here is the
paper's form, and the per-sample table has paraphrased_nll and perturbed_nll for the other.

* ``forget_truth_ratio``  = mean(min(R, 1/R)) on forget ("closer to 1 is better": a model that
  knows nothing about the forget set is indifferent between paraphrase and perturbations).
* ``holdout_truth_ratio`` = mean(min(R, 1/R)) on holdout (same distribution as forget but never
  trained on, so it is scored like forget and gives the reference level for it).
* ``retain_truth_ratio``, ``world_facts_truth_ratio`` = mean(max(0, 1 - R)) (TOFU's utility form:
  higher when the model prefers the correct paraphrase over the perturbations).

The helpers return NaN for a missing split (the unlearning trajectory uses them); the registered
metrics raise an error naming the split instead.
"""

from __future__ import annotations

import numpy as np

from forgetlab.metrics import METRICS, mean_or_nan, require_values, split_values


def symmetric_score(samples, split: str) -> float:
    """mean(min(R, 1/R)) over ``split``."""
    r = split_values(samples, split, "truth_ratio").to_numpy()
    return mean_or_nan(np.minimum(r, 1.0 / r))


def utility_score(samples, split: str) -> float:
    """mean(max(0, 1 - R)) over ``split``."""
    r = split_values(samples, split, "truth_ratio").to_numpy()
    return mean_or_nan(np.maximum(0.0, 1.0 - r))


def checked(samples, split: str, metric: str, score) -> float:
    require_values(samples, split, "truth_ratio", metric)
    return score(samples, split)


@METRICS.register("forget_truth_ratio")
def forget_truth_ratio(samples, oracle=None) -> float:
    return checked(samples, "forget", "forget_truth_ratio", symmetric_score)


@METRICS.register("holdout_truth_ratio")
def holdout_truth_ratio(samples, oracle=None) -> float:
    return checked(samples, "holdout", "holdout_truth_ratio", symmetric_score)


@METRICS.register("retain_truth_ratio")
def retain_truth_ratio(samples, oracle=None) -> float:
    return checked(samples, "retain", "retain_truth_ratio", utility_score)


@METRICS.register("world_facts_truth_ratio")
def world_facts_truth_ratio(samples, oracle=None) -> float:
    return checked(samples, "world_facts", "world_facts_truth_ratio", utility_score)
