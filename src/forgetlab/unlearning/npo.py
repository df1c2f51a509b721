"""`npo`: Negative Preference Optimization (Zhang et al., "Negative Preference Optimization:
From Catastrophic Collapse to Effective Unlearning", COLM 2024).

    L(theta) = gamma * (2/beta) * E_forget[ log(1 + (pi_theta(y|x) / pi_ref(y|x))^beta) ] + alpha * NLL_retain(theta)
             = -gamma * (2/beta) * E_forget[ log sigmoid(-beta * (log pi_theta(y|x) - log pi_ref(y|x))) ] + alpha * NLL_retain

with log pi(y|x) the summed answer-token log-probability (not length-normalised), pi_ref the frozen
target, E_forget the batch mean over sequences and NLL_retain the mean next-token NLL over all
supervised retain tokens of the batch (pooled). This is open-unlearning's NPO (trainer NPO, config
NPO.yaml: beta 0.1, gamma 1, alpha 1, retain_loss_type NLL), the same defaults here.
Its gradient is gradient ascent's reweighted by w = 2 * pi_theta^beta / (pi_theta^beta + pi_ref^beta),
which vanishes as the forget answer becomes unlikely (no catastrophic collapse).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from forgetlab.losses import nll, sequence_logprob
from forgetlab.params import require_number
from forgetlab.unlearning import METHODS, Method


@METHODS.register("npo")
@dataclass
class NPO(Method):
    beta: float = 0.1
    alpha: float = 1.0  # retain weight
    gamma: float = 1.0  # forget weight
    uses_retain = True
    needs_reference = True  # pi_ref

    def __post_init__(self):
        require_number("npo", "beta", self.beta, strict=True)
        require_number("npo", "alpha", self.alpha)
        require_number("npo", "gamma", self.gamma)

    def loss(self, model, batch):
        logp = sequence_logprob(model, batch["forget"])
        with torch.no_grad():
            ref_logp = sequence_logprob(self.reference, batch["forget"])
        forget = -(2.0 / self.beta) * F.logsigmoid(-self.beta * (logp - ref_logp)).mean()
        retain = nll(model, batch["retain"]) if self.alpha else torch.zeros(())
        return self.gamma * forget + self.alpha * retain, {"npo_forget": forget.item(), "retain_nll": retain.item()}
