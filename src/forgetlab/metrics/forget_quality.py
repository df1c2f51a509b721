"""TOFU forget quality (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs", §2.5).

    forget_quality = p-value of the two-sample Kolmogorov-Smirnov test
                     KS(truth_ratio of the model on forget, truth_ratio of the oracle on forget)

The oracle is the model fine-tuned on the retain set only. A high p-value means the unlearned
model's truth-ratio distribution on the forget set is indistinguishable from the oracle's.
(TOFU's code tests exp(perturbed_nll - paraphrased_nll), a monotone function of its own
geometric-mean ratio; the KS statistic is invariant under the same monotone map of both samples,
so only the arithmetic-vs-geometric mean of the perturbed answers differs; see truth_ratio.)
Needs the oracle's table; an error if it is missing or either side has no forget truth ratios.
"""

from __future__ import annotations


from forgetlab.metrics import METRICS, needs, require_oracle, require_values


@METRICS.register("forget_quality")
@needs("oracle")
def forget_quality(samples, oracle) -> float:
    oracle = require_oracle(oracle, "forget_quality")
    model_tr = require_values(samples, "forget", "truth_ratio", "forget_quality")
    oracle_tr = require_values(oracle, "forget", "truth_ratio", "forget_quality", table="oracle")
    from scipy.stats import ks_2samp  # here, not at the top: unlearn jobs import this package too

    return float(ks_2samp(model_tr.to_numpy(), oracle_tr.to_numpy()).pvalue)
