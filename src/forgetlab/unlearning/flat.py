"""`flat`: loss adjustment with only forget data (Wang et al., "LLM Unlearning via Loss Adjustment
with Only Forget Data", ICLR 2025).

FLAT maximises an f-divergence between the template (refusal) response and the forget response
on the forget questions, through its variational form (f-GAN, Nowozin et al. 2016):

    L(theta) = - E_forget[ g(P_e(x)) - f*(g(P_f(x))) ]

    P_e(x) = (1/|y_e|) sum_t p_theta(y_e,t | y_e,<t, x)     y_e: the refusal ("idk" view, idk.txt)
    P_f(x) = (1/|y_f|) sum_t p_theta(y_f,t | y_f,<t, x)     y_f: the forget answer ("forget" view)

i.e. each P is the arithmetic mean of the answer tokens' probabilities (not log-probabilities,
not the sequence probability) of one sample under the current model, over its supervised tokens
(labels != -100: the answer and its closing eos), and the expectation is the batch mean. g is the divergence's output activation and f* the convex conjugate of its f:

    kl                     g(v) = v                          f*(t) = exp(t - 1)
    js (Jensen-Shannon)    g(v) = log 2 - log(1 + exp(-v))   f*(t) = -log(2 - exp(t))
    pearson (chi^2)        g(v) = v                          f*(t) = t^2/4 + t
    total_variation        g(v) = tanh(v) / 2                f*(t) = t
    reverse_kl             g(v) = -exp(-v)                   f*(t) = -1 - log(-t)
    squared_hellinger      g(v) = 1 - exp(-v)                f*(t) = t / (1 - t)

g and f*(g(.)) are both increasing, so minimising L raises the refusal's probability and lowers
the forget answer's, with weights set by the divergence (no retain data, no reference model).

open-unlearning has no FLAT trainer; the reference is the paper (per-sample mean token probability,
per-sample divergence terms averaged over the batch: `reduction: sequence`, the default). The
authors' TOFU code instead forms one P per batch, the batch's answer-token probabilities summed and
divided by all batch * (length - 1) next-token positions of the padded batch (prompt and padding
count as zeros), and applies g and f* once: `reduction: padded_batch` (their fixed padding width is
forgetlab's longest row in the batch). Their code's reverse_kl and squared_hellinger flip the sign of
the activation's argument, which turns the objective around; forgetlab keeps the f-GAN forms above.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from forgetlab.losses import forward
from forgetlab.params import require_choice
from forgetlab.qa import token_logprobs
from forgetlab.unlearning import METHODS, Method

# divergence -> (activation g, conjugate f*)
DIVERGENCES = {
    "kl": (lambda v: v, lambda t: torch.exp(t - 1)),
    "js": (lambda v: math.log(2) - F.softplus(-v), lambda t: -torch.log(2 - torch.exp(t))),
    "pearson": (lambda v: v, lambda t: t.pow(2) / 4 + t),
    "total_variation": (lambda v: torch.tanh(v) / 2, lambda t: t),
    "reverse_kl": (lambda v: -torch.exp(-v), lambda t: -1 - torch.log(-t)),
    "squared_hellinger": (lambda v: 1 - torch.exp(-v), lambda t: t / (1 - t)),
}


def mean_token_prob(model, batch: dict) -> torch.Tensor:
    """(1/|y|) sum_t p(y_t | y_<t, x) per sample, shape (batch,)."""
    logp, mask = token_logprobs(forward(model, batch).logits, batch["labels"])
    return (logp.exp() * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def padded_batch_token_prob(model, batch: dict) -> torch.Tensor:
    """The batch's answer-token probabilities summed over / batch * (length - 1), shape (1,)."""
    logp, mask = token_logprobs(forward(model, batch).logits, batch["labels"])
    return ((logp.exp() * mask).sum() / mask.numel()).reshape(1)


@METHODS.register("flat")
@dataclass
class FLAT(Method):
    divergence: str = "kl"
    reduction: str = "sequence"
    forget_views = ("idk",)

    def __post_init__(self):
        require_choice("flat", "divergence", self.divergence, sorted(DIVERGENCES))
        require_choice("flat", "reduction", self.reduction, ("sequence", "padded_batch"))

    def loss(self, model, batch):
        g, f_star = DIVERGENCES[self.divergence]
        prob = mean_token_prob if self.reduction == "sequence" else padded_batch_token_prob
        p_e, p_f = prob(model, batch["idk"]), prob(model, batch["forget"])
        estimate = (g(p_e) - f_star(g(p_f))).mean()  # variational lower bound on the divergence
        return -estimate, {"flat_divergence": estimate.item(), "template_prob": p_e.mean().item(),
                           "forget_prob": p_f.mean().item()}
