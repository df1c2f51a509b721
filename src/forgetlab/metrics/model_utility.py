"""TOFU model utility (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs", §2.5).

    model_utility = hmean(prob_retain,        rougeL_retain, TR_retain,
                          option_prob_world,  rougeL_world,  TR_world)

with prob = mean length-normalised P(a|q)^(1/|a|) on retain; option_prob = the world-facts answer
probability normalised over the answer options (as TOFU does for its non-retain utility sets; see
option_prob); rougeL = mean ROUGE-L recall of the greedy answer; TR = mean(max(0, 1 - R)) with R
the truth ratio. TOFU's third utility set, real authors, has no counterpart in the synthetic world,
so the harmonic mean has six terms instead of nine. It is 0 if any term is 0; a missing split or
column is an error naming it.

Hand-worked: terms 0.5, 0.25, 0.5, 1.0, 0.5, 0.25 give 6 / (2 + 4 + 2 + 1 + 2 + 4) = 0.4.
"""

from __future__ import annotations


from forgetlab.metrics import METRICS, require_values
from forgetlab.metrics.truth_ratio import utility_score

UTILITY_TERMS = (("retain", "prob"), ("retain", "rouge_l_recall"), ("retain", "truth_ratio"),
                 ("world_facts", "option_prob"), ("world_facts", "rouge_l_recall"), ("world_facts", "truth_ratio"))


def utility_terms(samples) -> list[float]:
    terms = []
    for split, column in UTILITY_TERMS:
        values = require_values(samples, split, column, "model_utility")
        terms.append(utility_score(samples, split) if column == "truth_ratio" else float(values.mean()))
    return terms


@METRICS.register("model_utility")
def model_utility(samples, oracle=None) -> float:
    terms = utility_terms(samples)
    if any(t <= 0 for t in terms):
        return 0.0
    from scipy.stats import hmean  # here, not at the top: unlearn jobs import this package too

    return float(hmean(terms))
