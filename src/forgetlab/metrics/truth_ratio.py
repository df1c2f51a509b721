"""TOFU aggregated truth-ratio scores (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning";
open-unlearning's ``truth_ratio`` with its ``closer_to_1_better`` and ``true_better`` aggregators).

Per sample (column ``truth_ratio``, see `forgetlab.eval.scoring`), as TOFU's code and open-unlearning:

    R = exp(-(1/m) Σ_i NLL(â_i)) / exp(-NLL(c))       NLL = mean per-token NLL of the answer + eos

the geometric mean of the m perturbed answers' length-normalised probabilities over the "correct"
answer's. c is the paraphrased answer ã on forget, retain and holdout (open-unlearning's *_PARA_Prob
as ``correct``) and the answer a itself on real_authors and world_facts (ra/wf_Q_A_Prob). The TOFU
paper writes an arithmetic mean over the â_i; its code and open-unlearning take the geometric one,
which is used here (the paper's form is perturbed_prob / paraphrased_prob of the table).

* ``forget_truth_ratio``  = mean(min(R, 1/R)) on forget (closer_to_1_better: a model that knows
  nothing about the forget set is indifferent between the correct and the perturbed answers).
* ``holdout_truth_ratio`` = mean(min(R, 1/R)) on holdout (not in open-unlearning: same distribution
  as forget but never trained on, so scored like forget, the reference level for it).
* ``retain_truth_ratio``, ``world_facts_truth_ratio``, ``real_authors_truth_ratio``
  = mean(max(0, 1 - R)) (true_better: higher when the model prefers the correct answer).
* ``world_facts_truth_ratio_para``, ``real_authors_truth_ratio_para``: the same with the paraphrase
  as the correct answer (column ``truth_ratio_para``), forgetlab's variant. The synthetic world
  renders the perturbed answers with the paraphrase's template, so ã and the â_i differ in the fact
  only, while a is another sentence: R against a also measures a preference between templates.
  TOFU's world-facts and real-author options are short answers of one form, where the two coincide.

open-unlearning adds 1e-10 to the denominators of R and 1/R; that only matters for a probability
under ~1e-10 and is left out. The helpers return NaN for a missing split (the unlearning trajectory
uses them); the registered metrics raise an error naming the split instead.
Hand-worked: R = 0.5, 2, 1 -> min(R, 1/R) = 0.5, 0.5, 1 -> 2/3; R = 0.5, 1.5 -> max(0, 1-R) -> 0.25.
"""

from __future__ import annotations

import numpy as np

from forgetlab.metrics import METRICS, mean_or_nan, require_values, split_values, uses


def symmetric_score(samples, split: str, column: str = "truth_ratio") -> float:
    """mean(min(R, 1/R)) over ``split`` (closer_to_1_better)."""
    r = split_values(samples, split, column).to_numpy()
    return mean_or_nan(np.minimum(r, 1.0 / r))


def utility_score(samples, split: str, column: str = "truth_ratio") -> float:
    """mean(max(0, 1 - R)) over ``split`` (true_better)."""
    r = split_values(samples, split, column).to_numpy()
    return mean_or_nan(np.maximum(0.0, 1.0 - r))


def _register(name: str, split: str, score, column: str = "truth_ratio") -> None:
    @METRICS.register(name)
    @uses(columns=(column,))
    def metric(samples, oracle=None, role="model") -> float:
        require_values(samples, split, column, name)
        return score(samples, split, column)

    metric.__name__ = name
    metric.__doc__ = f"{score.__doc__.split(' over ')[0]} of {column} on {split} (an error if absent)."


for _split in ("forget", "holdout"):
    _register(f"{_split}_truth_ratio", _split, symmetric_score)
for _split in ("retain", "world_facts", "real_authors"):
    _register(f"{_split}_truth_ratio", _split, utility_score)
for _split in ("world_facts", "real_authors"):
    _register(f"{_split}_truth_ratio_para", _split, utility_score, "truth_ratio_para")
