"""TOFU model utility (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs").

    model_utility = hmean(prob_retain, rougeL_retain, TR_retain,
                          prob_world, rougeL_world, TR_world)

with prob = mean length-normalised P(a|q)^(1/|a|), rougeL = mean ROUGE-L recall of the greedy
answer, TR = mean(max(0, 1 - truth_ratio)), for the retain and world_facts splits. (TOFU also
uses a real-authors split and, for the non-retain splits, a probability normalised over the answer
options; here the plain length-normalised probability is used.) The harmonic mean is 0 if any
term is 0 and NaN if any is missing.
"""

from __future__ import annotations

import math

from scipy.stats import hmean

from forgetlab.metrics import METRICS, mean_or_nan, split_values
from forgetlab.metrics.truth_ratio import utility_score

UTILITY_SPLITS = ("retain", "world_facts")


def utility_terms(samples) -> list[float]:
    terms = []
    for split in UTILITY_SPLITS:
        terms.append(mean_or_nan(split_values(samples, split, "prob")))
        terms.append(mean_or_nan(split_values(samples, split, "rouge_l_recall")))
        terms.append(utility_score(samples, split))
    return terms


@METRICS.register("model_utility")
def model_utility(samples, oracle=None) -> float:
    terms = utility_terms(samples)
    if any(math.isnan(t) for t in terms):
        return math.nan
    if any(t <= 0 for t in terms):
        return 0.0
    return float(hmean(terms))
