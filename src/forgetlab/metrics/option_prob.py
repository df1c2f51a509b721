"""TOFU answer probability over the options (Maini et al. 2024, "TOFU", §2.5 "Probability";
open-unlearning's ``probability_w_options``, ra/wf_Q_A_Prob_normalised).

For the real-authors and world-facts sets TOFU normalises the answer's probability over the
answer options, each option's probability length-normalised (P(x|q)^(1/|x|), eos included):

    option_prob = P(a|q)^(1/|a|) / (P(a|q)^(1/|a|) + Σ_i P(â_i|q)^(1/|â_i|))     (per-sample column)

with a the answer itself, as open-unlearning (``correct`` = ra/wf_Q_A_Prob). Metrics:

* ``world_facts_option_prob``, ``real_authors_option_prob``: mean option_prob over the split;
* ``world_facts_option_prob_para``, ``real_authors_option_prob_para``: the same with the paraphrase
  ã as the correct option (column ``option_prob_para``), forgetlab's variant: the synthetic world
  renders the perturbed answers â_i with the paraphrase's template, so the options ã, â_i differ
  in the fact only, as TOFU's short options do; against a the model's preference for a's template
  over the paraphrase's enters too.

* ``world_facts_option_accuracy``, ``real_authors_option_accuracy``: the multiple-choice accuracy
  over the same options ã, â_i (column ``option_correct_para``: 1 if ã's probability is strictly
  the largest), forgetlab's addition; chance is 1/(k+1), 0.25 with the world's 3 perturbations.

open-unlearning adds 1e-10 to the denominator; left out (it only matters for probabilities ~1e-10).
Hand-worked: probabilities 0.6 (a) and 0.1, 0.2, 0.1 (â) give 0.6 / 1.0 = 0.6; with ã at 0.15 the
option is not correct (0.15 < 0.2), and at 0.3 it is.
"""

from __future__ import annotations

from forgetlab.metrics import METRICS, require_values, uses


def _register(split: str, column: str, name: str) -> None:
    @METRICS.register(name)
    @uses(columns=(column,))
    def metric(samples, oracle=None, role="model") -> float:
        return float(require_values(samples, split, column, name).mean())

    metric.__name__ = name
    metric.__doc__ = f"Mean {column} on the {split} split (an error if absent)."


for _split in ("world_facts", "real_authors"):
    _register(_split, "option_prob", f"{_split}_option_prob")
    _register(_split, "option_prob_para", f"{_split}_option_prob_para")
    _register(_split, "option_correct_para", f"{_split}_option_accuracy")
