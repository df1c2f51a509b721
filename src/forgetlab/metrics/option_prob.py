"""TOFU answer probability over the options (Maini et al. 2024, "TOFU", §2.5 "Probability").

For the real-authors and world-facts sets TOFU normalises the answer's probability over the
answer options: P(a|q)^(1/|a|) / (P(a|q)^(1/|a|) + Σ_i P(â_i|q)^(1/|â_i|)), each option's
probability length-normalised. Here the correct option is the paraphrase ã, because the world
renders the perturbed answers â_i with the paraphrase's template: the options then differ in the
fact only, as TOFU's options do (per-sample column ``option_prob``).

    world_facts_option_prob = mean over world_facts rows of option_prob

Hand-worked: probabilities 0.6 (ã) and 0.1, 0.2, 0.1 (â) give 0.6 / 1.0 = 0.6.
"""

from __future__ import annotations

from forgetlab.metrics import METRICS, require_values


@METRICS.register("world_facts_option_prob")
def world_facts_option_prob(samples, oracle=None) -> float:
    return float(require_values(samples, "world_facts", "option_prob", "world_facts_option_prob").mean())
