"""Min-K% Prob membership-inference attack (Shi et al. 2024, "Detecting Pretraining Data from
Large Language Models", ICLR), as open-unlearning's ``mia_min_k`` (k = 0.4 in its TOFU/MUSE configs).

    score(x)  = mean of the k-fraction lowest token log-probs log p(y_t | <t) of the answer:
                the max(1, floor(k n)) smallest of its n values, over the tokens of " " + answer
                without the eos (open-unlearning's ``tokenwise_logprobs`` drops it)
    mia_min_k = AUC(score; forget = members, holdout = non-members)      (see _mia)

open-unlearning scores -mean (higher = less likely a member) and labels holdout 1: the same AUC.
``k`` defaults to 0.4; ``min_k_metric(k, eos=True)`` builds the metric for another k or with the
eos kept (register it under a new name in a one-line module to use it from a config).
Hand-worked: log-probs (-1, -2, -3, -4, -5) then the eos's -9 (dropped), k = 0.4 -> the 2 lowest of
5, -4 and -5 -> score -4.5.
"""

from __future__ import annotations

from forgetlab.metrics import METRICS, uses
from forgetlab.metrics._mia import DEFAULT_K, mia_auc, min_k_score


def min_k_metric(k: float = DEFAULT_K, name: str = "mia_min_k", eos: bool = False):
    @uses(columns=("answer_token_logp",))
    def metric(samples, oracle=None, role="model") -> float:
        return mia_auc(samples, lambda rows: min_k_score(rows, k, eos, name), name, ("answer_token_logp",))

    metric.__name__ = name
    return metric


mia_min_k = METRICS.register("mia_min_k")(min_k_metric())
