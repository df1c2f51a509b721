"""`simnpo`: Simple NPO, reference-free and length-normalised (Fan et al., "Simplicity Prevails:
Rethinking Negative Preference Optimization for LLM Unlearning", 2024).

    L(theta) = -(2/beta) * E_forget[ log sigmoid( -(beta/|y|) * log pi_theta(y|x) - delta ) ]
               + alpha * NLL_retain(theta)

with log pi_theta(y|x) the summed answer-token log-probability and |y| the number of answer tokens.
Its forget gradient is gradient ascent's (d log pi / |y|) reweighted by
w = 2 * sigmoid((beta/|y|) * log pi_theta(y|x) + delta), which vanishes as the answer becomes unlikely.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from forgetlab.losses import forward, nll
from forgetlab.qa import token_logprobs
from forgetlab.unlearning import METHODS, Method


@METHODS.register("simnpo")
@dataclass
class SimNPO(Method):
    beta: float = 2.5
    delta: float = 0.0
    alpha: float = 1.0
    uses_retain = True

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"simnpo.beta must be > 0, got {self.beta}")
        if not self.alpha >= 0:
            raise ValueError(f"simnpo.alpha must be >= 0, got {self.alpha}")

    def loss(self, model, batch):
        logp, mask = token_logprobs(forward(model, batch["forget"]).logits, batch["forget"]["labels"])
        avg_logp = logp.sum(-1) / mask.sum(-1).clamp(min=1)  # log pi(y|x) / |y|
        forget = -(2.0 / self.beta) * F.logsigmoid(-self.beta * avg_logp - self.delta).mean()
        retain = nll(model, batch["retain"]) if self.alpha else torch.zeros(())
        return forget + self.alpha * retain, {"simnpo_forget": forget.item(), "retain_nll": retain.item()}
