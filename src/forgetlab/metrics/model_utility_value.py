"""``model_utility_value``: forgetlab's model utility on the value, for a world of templated answers.

TOFU's model utility (forgetlab.metrics.model_utility) is the harmonic mean of nine terms, three of
them truth ratios and two option probabilities, each a length-normalised probability of a whole
answer sentence. In the synthetic world the paraphrase and the perturbed answers share one template
and differ in a value of one or two of about twelve tokens, so those five terms stay near their
floor (truth-ratio terms 0.17-0.23, option probs 0.29 against a chance of 0.25 on the default
study's targets) and, being the smallest, decide the mean while barely following damage
(docs/metrics.md, "Model utility on the value"). This variant keeps the nine terms and replaces
those five by their value forms from the scoring table (forgetlab.eval.scoring):

    model_utility_value = hmean(prob_retain,            rougeL_retain, TR_value_retain,
                                option_prob_value_ra,   rougeL_ra,     TR_value_ra,
                                option_prob_value_wf,   rougeL_wf,     TR_value_wf)

TR_value = mean(max(0, 1 - R_value)), R_value the geometric mean over the perturbed answers of
P(â_i) / P(ã), each normalised over the tokens where the pair differs (``truth_ratio_value``);
option_prob_value = P(ã) / (P(ã) + Σ_i P(â_i)) on the same spans (``option_prob_value``). The
paraphrase is the correct answer on every split (as ``model_utility_para``; its template is the
perturbed answers'). Reference: TOFU (Maini et al. 2024) §2.5 and open-unlearning's
``hm_aggregate``; the deliberate difference is the normalisation over the differing span, not the
whole answer. Hand-worked: terms (1/2, 1/4, 1/2, 1, 1/2, 1/4, 1/2, 1, 1/2) give 9/20, as for
model_utility.

Why this carries TOFU's utility over rather than inventing one: TOFU's real-author and world-fact
answers and their perturbed options are bare values ("Paris", "Berlin"), so on TOFU's data those
probabilities are already taken over the value's tokens alone. On a world that answers in templated
sentences, this variant scores what TOFU's scores on its own data. It needs a paraphrase on every
split, which TOFU's files lack, so a TOFU study keeps ``model_utility``; a study picks the utility its
report tests with ``report.utility`` (forgetlab.recipes.report).

``model_utility_value_lik`` is its likelihood-only form, as ``model_utility_lik`` is TOFU's: the six
terms that need no generation (the three ROUGE ones left out). The unlearning trajectory records it at
every point (``utility_value_lik``), so that the matched comparison has this utility at the step where
forgetting reaches the oracle's (``matched_model_utility_value_lik``). Hand-worked: (1/2, 1/2, 1, 1/4,
1/2, 1/2) give 6/13, as for model_utility_lik.
"""

from __future__ import annotations

from forgetlab.metrics import METRICS, uses
from forgetlab.metrics.model_utility import harmonic_mean, utility_terms

UTILITY_TERMS_VALUE = (("retain", "prob"), ("retain", "rouge_l_recall"), ("retain", "truth_ratio_value"),
                       ("real_authors", "option_prob_value"), ("real_authors", "rouge_l_recall"),
                       ("real_authors", "truth_ratio_value"),
                       ("world_facts", "option_prob_value"), ("world_facts", "rouge_l_recall"),
                       ("world_facts", "truth_ratio_value"))
LIKELIHOOD_TERMS_VALUE = tuple(t for t in UTILITY_TERMS_VALUE if t[1] != "rouge_l_recall")


@METRICS.register("model_utility_value")
@uses(columns=[c for _, c in UTILITY_TERMS_VALUE])
def model_utility_value(samples, oracle=None, role="model") -> float:
    return harmonic_mean(utility_terms(samples, UTILITY_TERMS_VALUE, "model_utility_value"))


@METRICS.register("model_utility_value_lik")
@uses(columns=[c for _, c in LIKELIHOOD_TERMS_VALUE])
def model_utility_value_lik(samples, oracle=None, role="model") -> float:
    return harmonic_mean(utility_terms(samples, LIKELIHOOD_TERMS_VALUE, "model_utility_value_lik"))
