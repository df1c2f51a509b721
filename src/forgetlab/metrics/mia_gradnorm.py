"""GradNorm membership-inference attack (Wang et al. 2024, "Pandora's White-Box: Precise Training
Data Detection and Extraction in Large Language Models", arXiv:2402.17012), as implemented in
MIMIR and open-unlearning's ``mia_gradnorm`` (p = 2).

    g(x)     = (1/J) Σ_j || d NLL(x) / d W_j ||_2     over the model's J parameter tensors W_j,
               NLL = mean per-token NLL of " " + answer without the eos
    score(x) = -g(x)                                  (training members sit near a minimum)
    mia_gradnorm = AUC(score; forget = members, holdout = non-members)     (see _mia)

As open-unlearning's GradNormAttack: the model is in train mode (``model.train()``: any dropout is
active) and the eos is dropped (``tokenwise_logprobs``). open-unlearning draws its dropout masks
from the global RNG seeded once per evaluation (seed 0), one sample per batch; here they come from
a generator seeded with the evaluation's seed (evaluate: the data seed) and vmap draws a different
mask per sample, so the same config and seed give the same number. forgetlab's saved models carry
no dropout (the dropout regularizer removes its hooks and resets attention_dropout), so for them
train and eval mode give the same g.

g is the per-sample column grad_norm, the only value that needs a backward pass; evaluate
computes it on the forget and holdout splits (`forgetlab.eval.passes.grad_norms`), and only
when this metric is configured (it is the only one reading grad_norm).
Hand-worked: forget g = 0.1, 0.3 and holdout g = 0.2, 0.4 -> AUC = 3/4.
"""

from __future__ import annotations

from forgetlab.metrics import METRICS, uses
from forgetlab.metrics._mia import gradnorm_score, mia_auc


@METRICS.register("mia_gradnorm")
@uses(columns=("grad_norm",))
def mia_gradnorm(samples, oracle=None, role="model") -> float:
    return mia_auc(samples, gradnorm_score, "mia_gradnorm", ("grad_norm",))
