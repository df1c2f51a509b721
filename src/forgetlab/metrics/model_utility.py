"""TOFU model utility (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs", §2.5;
open-unlearning's ``model_utility``: ``hm_aggregate`` of nine pre-computed metrics).

    model_utility = hmean(prob_retain,        rougeL_retain, TR_retain,
                          option_prob_ra,     rougeL_ra,     TR_ra,
                          option_prob_wf,     rougeL_wf,     TR_wf)

over the retain, real_authors (ra) and world_facts (wf) splits, each term a mean over the split's
rows: prob = P(a|q)^(1/|a|) (retain_Q_A_Prob); option_prob = P(a|q)^(1/|a|) normalised over a and
the perturbed answers (ra/wf_Q_A_Prob_normalised, see option_prob); rougeL = ROUGE-L recall of the
greedy answer (*_Q_A_ROUGE); TR = mean(max(0, 1 - R)) with R the truth ratio (*_Truth_Ratio with
true_better, see truth_ratio: the paraphrase as the correct answer on retain, the answer on ra/wf).

``model_utility_para`` is forgetlab's variant for the synthetic world: the same nine terms, but the
ra/wf option probability and truth ratio take the paraphrase as the correct answer
(option_prob_para, truth_ratio_para), whose template the perturbed answers share (see option_prob).
The former six-term utility (no real_authors) is gone: the world now has that split.

``model_utility_lik`` is forgetlab's likelihood-only model utility: the harmonic mean of the six
terms that need no generation (prob, option_prob and TR of the three splits; no rougeL). The
unlearning trajectory records it at every point, on seeded subsets of the three splits
(`forgetlab.eval.trajectory`), so that the matched comparison has a model utility at the step where
forgetting reaches the oracle's (`matched_model_utility_lik`); evaluation reports it at the end of the
run too, so that the two can be compared with model_utility on the same models. Hand-worked: the
terms above without the rougeL ones (1/2, 1/2, 1, 1/4, 1/2, 1/2) give 6 / (2 + 2 + 1 + 4 + 2 + 2) = 6/13.

scipy's hmean, as open-unlearning; 0 if any term is 0 (scipy gives 0 too); a missing split or
column is an error naming it. Hand-worked: terms (1/2, 1/4, 1/2, 1, 1/2, 1/4, 1/2, 1, 1/2) give
9 / (2 + 4 + 2 + 1 + 2 + 4 + 2 + 1 + 2) = 9/20.
"""

from __future__ import annotations

from forgetlab.metrics import METRICS, require_values, uses
from forgetlab.metrics.truth_ratio import utility_score

UTILITY_SPLITS = ("retain", "real_authors", "world_facts")
# (split, column) of the nine terms; a truth-ratio column is aggregated as TOFU's true_better
UTILITY_TERMS = (("retain", "prob"), ("retain", "rouge_l_recall"), ("retain", "truth_ratio"),
                 ("real_authors", "option_prob"), ("real_authors", "rouge_l_recall"), ("real_authors", "truth_ratio"),
                 ("world_facts", "option_prob"), ("world_facts", "rouge_l_recall"), ("world_facts", "truth_ratio"))
# model_utility_lik: the six likelihood terms, without the three ROUGE ones (no generation needed)
LIKELIHOOD_TERMS = tuple(t for t in UTILITY_TERMS if t[1] != "rouge_l_recall")
PARA = {"option_prob": "option_prob_para", "truth_ratio": "truth_ratio_para"}
UTILITY_TERMS_PARA = tuple((s, PARA.get(c, c) if s != "retain" else c) for s, c in UTILITY_TERMS)
# a utility the report can test (config report.utility) -> its likelihood-only form at the matched step
MATCHED_UTILITY = {"model_utility": "matched_model_utility_lik",
                   "model_utility_value": "matched_model_utility_value_lik"}


def study_utility(mapping: dict, utility: str = "model_utility") -> dict:
    """`mapping` (metric -> anything) with TOFU's model_utility and its matched form renamed to the
    study's `utility` and that one's matched form, in their places; every other key as it is."""
    swap = {"model_utility": utility, MATCHED_UTILITY["model_utility"]: MATCHED_UTILITY[utility]}
    return {swap.get(k, k): v for k, v in mapping.items()}


def utility_terms(samples, terms=UTILITY_TERMS, metric: str = "model_utility") -> list[float]:
    out = []
    for split, column in terms:
        values = require_values(samples, split, column, metric)
        out.append(utility_score(samples, split, column) if column.startswith("truth_ratio") else float(values.mean()))
    return out


def harmonic_mean(terms: list[float]) -> float:
    if any(t <= 0 for t in terms):
        return 0.0
    from scipy.stats import hmean  # here, not at the top: unlearn jobs import this package too

    return float(hmean(terms))


@METRICS.register("model_utility")
@uses(columns=[c for _, c in UTILITY_TERMS])
def model_utility(samples, oracle=None, role="model") -> float:
    return harmonic_mean(utility_terms(samples))


@METRICS.register("model_utility_para")
@uses(columns=[c for _, c in UTILITY_TERMS_PARA])
def model_utility_para(samples, oracle=None, role="model") -> float:
    return harmonic_mean(utility_terms(samples, UTILITY_TERMS_PARA, "model_utility_para"))


@METRICS.register("model_utility_lik")
@uses(columns=[c for _, c in LIKELIHOOD_TERMS])
def model_utility_lik(samples, oracle=None, role="model") -> float:
    return harmonic_mean(utility_terms(samples, LIKELIHOOD_TERMS, "model_utility_lik"))
