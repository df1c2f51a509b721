"""GradNorm membership-inference attack (Wang et al. 2024, "Pandora's White-Box: Precise Training
Data Detection and Extraction in Large Language Models", arXiv:2402.17012), as implemented in
MIMIR and open-unlearning's ``mia_gradnorm`` (p = 2).

    g(x)     = (1/J) Σ_j || d NLL(x) / d W_j ||_2     over the model's J parameter tensors W_j,
               NLL = mean per-token answer NLL, model in eval mode
    score(x) = -g(x)                                  (training members sit near a minimum)
    mia_gradnorm = AUC(score; forget = members, holdout = non-members)     (see _mia)

g is the per-sample column grad_norm, the only value that needs a backward pass; evaluate
computes it on the forget and holdout splits, batched over samples with torch.func.vmap.
Hand-worked: forget g = 0.1, 0.3 and holdout g = 0.2, 0.4 -> AUC = 3/4.
"""

from __future__ import annotations

from forgetlab.metrics import METRICS
from forgetlab.metrics._mia import gradnorm_score, mia_auc


@METRICS.register("mia_gradnorm")
def mia_gradnorm(samples, oracle=None) -> float:
    return mia_auc(samples, gradnorm_score, "mia_gradnorm", ("grad_norm",))
