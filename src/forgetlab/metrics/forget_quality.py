"""TOFU forget quality (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs").

    forget_quality = p-value of the two-sample Kolmogorov-Smirnov test
                     KS(truth_ratio of the model on forget, truth_ratio of the oracle on forget)

The oracle is the model fine-tuned on the retain set only. A high p-value means the unlearned
model's truth-ratio distribution on the forget set is indistinguishable from the oracle's.
NaN without an oracle or when either side has no forget truth ratios.
"""

from __future__ import annotations

import math

from scipy.stats import ks_2samp

from forgetlab.metrics import METRICS, split_values


@METRICS.register("forget_quality")
def forget_quality(samples, oracle) -> float:
    model_tr = split_values(samples, "forget", "truth_ratio")
    oracle_tr = split_values(oracle, "forget", "truth_ratio")
    if oracle is None or len(model_tr) == 0 or len(oracle_tr) == 0:
        return math.nan
    return float(ks_2samp(model_tr.to_numpy(), oracle_tr.to_numpy()).pvalue)
