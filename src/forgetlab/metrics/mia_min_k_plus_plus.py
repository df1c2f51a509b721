"""Min-K%++ membership-inference attack (Zhang et al. 2025, "Min-K%++: Improved Baseline for
Detecting Pre-Training Data from Large Language Models", ICLR), as open-unlearning's
``mia_min_k_plus_plus``.

Per answer token t (the tokens of " " + answer without the eos, as open-unlearning's
``tokenwise_vocab_logprobs``), with p = p(. | <t) the model's next-token distribution:

    mu_t    = E_{z~p}[log p(z)]                      sigma_t^2 = E_{z~p}[(log p(z) - mu_t)^2]
    s_t     = (log p(y_t) - mu_t) / sqrt(max(sigma_t^2, 1e-6))     (open-unlearning's clamp)
    score   = mean of the max(1, floor(k n)) smallest s_t of the n answer tokens, k = 0.4
    mia_min_k_plus_plus = AUC(score; forget = members, holdout = non-members)     (see _mia)

mu_t and sigma_t are the per-token columns answer_token_mu / answer_token_sigma, computed from
the full distribution in the same forward pass. ``min_k_plus_plus_metric(k, eos=True)`` builds
another k or keeps the eos.
Hand-worked: a distribution (1/2, 1/4, 1/4) has mu = -(3/2) log 2, sigma = (1/2) log 2, so a target
of probability 1/2 has s = (-log 2 + (3/2) log 2) / ((1/2) log 2) = 1; a uniform distribution has
sigma = 0, floored to sqrt(1e-6) = 1e-3.
"""

from __future__ import annotations

from forgetlab.metrics import METRICS, uses
from forgetlab.metrics._mia import DEFAULT_K, mia_auc, min_k_plus_plus_score

COLUMNS = ("answer_token_logp", "answer_token_mu", "answer_token_sigma")


def min_k_plus_plus_metric(k: float = DEFAULT_K, name: str = "mia_min_k_plus_plus", eos: bool = False):
    @uses(columns=COLUMNS)
    def metric(samples, oracle=None, role="model") -> float:
        return mia_auc(samples, lambda rows: min_k_plus_plus_score(rows, k, eos, name), name, COLUMNS)

    metric.__name__ = name
    return metric


mia_min_k_plus_plus = METRICS.register("mia_min_k_plus_plus")(min_k_plus_plus_metric())
