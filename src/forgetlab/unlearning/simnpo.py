"""`simnpo`: Simple NPO, reference-free and length-normalised (Fan et al., "Simplicity Prevails:
Rethinking Negative Preference Optimization for LLM Unlearning", 2024).

    L(theta) = -gamma * (2/beta) * E_forget[ log sigmoid( beta * (-(1/|y|) log pi_theta(y|x) - delta) ) ]
               + alpha * NLL_retain(theta)

with log pi_theta(y|x) the summed answer-token log-probability, |y| the number of answer tokens,
E_forget the batch mean over sequences and NLL_retain the pooled mean over the retain batch's
supervised tokens. As open-unlearning's SimNPO trainer (and the authors' code), the margin delta
sits inside beta's product (the paper's reward margin gamma_paper is beta * delta here).
Defaults are open-unlearning's SimNPO.yaml: beta 4.5, delta 0, gamma (forget weight, the
authors' npo_coeff) 0.125, alpha (retain weight) 1.
Its forget gradient is gradient ascent's (d log pi / |y|) reweighted by
gamma * 2 * sigmoid(beta * ((1/|y|) log pi_theta(y|x) + delta)), which vanishes as the answer becomes unlikely.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from forgetlab.losses import forward, nll
from forgetlab.params import require_number
from forgetlab.qa import token_logprobs
from forgetlab.unlearning import METHODS, Method


@METHODS.register("simnpo")
@dataclass
class SimNPO(Method):
    beta: float = 4.5
    delta: float = 0.0
    gamma: float = 0.125  # forget weight
    alpha: float = 1.0  # retain weight
    uses_retain = True

    def __post_init__(self):
        require_number("simnpo", "beta", self.beta, strict=True)
        require_number("simnpo", "delta", self.delta, low=float("-inf"))
        require_number("simnpo", "gamma", self.gamma)
        require_number("simnpo", "alpha", self.alpha)

    def loss(self, model, batch):
        logp, mask = token_logprobs(forward(model, batch["forget"]).logits, batch["forget"]["labels"])
        avg_nll = -logp.sum(-1) / mask.sum(-1).clamp(min=1)  # -log pi(y|x) / |y|
        forget = -(2.0 / self.beta) * F.logsigmoid(self.beta * (avg_nll - self.delta)).mean()
        retain = nll(model, batch["retain"]) if self.alpha else torch.zeros(())
        return self.gamma * forget + self.alpha * retain, {"simnpo_forget": forget.item(), "retain_nll": retain.item()}
