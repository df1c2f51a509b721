"""TOFU forget quality (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs", §2.5).

    forget_quality = p-value of the two-sample Kolmogorov-Smirnov test
                     KS(truth_ratio of the model on forget, truth_ratio of the oracle on forget)

The oracle is the model fine-tuned on the retain set only. A high p-value means the unlearned
model's truth-ratio distribution on the forget set is indistinguishable from the oracle's.
The truth ratio is TOFU's code's and open-unlearning's (geometric mean over the perturbed answers,
over the paraphrase; see truth_ratio), tested as open-unlearning's ``ks_test`` does (scipy's
ks_2samp on the per-sample R; a strictly monotone map of both samples, e.g. the 1/R of
open-unlearning's get_forget_quality helper, gives the same statistic and p-value).
Needs the oracle's table; an error if it is missing or either side has no forget truth ratios.
"""

from __future__ import annotations


from forgetlab.metrics import METRICS, require_oracle, require_values, uses


@METRICS.register("forget_quality")
@uses(tables=("model", "oracle"), columns=("truth_ratio",))
def forget_quality(samples, oracle=None, role="model") -> float:
    oracle = require_oracle(oracle, "forget_quality")
    model_tr = require_values(samples, "forget", "truth_ratio", "forget_quality")
    oracle_tr = require_values(oracle, "forget", "truth_ratio", "forget_quality", table="oracle")
    from scipy.stats import ks_2samp  # here, not at the top: unlearn jobs import this package too

    return float(ks_2samp(model_tr.to_numpy(), oracle_tr.to_numpy()).pvalue)
