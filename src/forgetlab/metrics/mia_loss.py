"""LOSS membership-inference attack (Yeom et al. 2018, "Privacy Risk in Machine Learning:
Analyzing the Connection to Overfitting"), as open-unlearning's ``mia_loss`` (TOFU/MUSE suites).

    score(x) = -NLL(x)      NLL = mean per-token negative log-likelihood of the answer
    mia_loss = AUC(score; forget = members, holdout = non-members)      (see _mia)

Hand-worked: forget NLLs 1, 3 and holdout NLLs 2, 4 -> scores -1, -3 vs -2, -4: of the 4
(forget, holdout) pairs 3 are ordered forget-first, so AUC = 0.75.
"""

from __future__ import annotations

from forgetlab.metrics import METRICS, uses
from forgetlab.metrics._mia import loss_score, mia_auc


@METRICS.register("mia_loss")
@uses(columns=("answer_nll",))
def mia_loss(samples, oracle=None, role="model") -> float:
    return mia_auc(samples, loss_score, "mia_loss", ("answer_nll",))
