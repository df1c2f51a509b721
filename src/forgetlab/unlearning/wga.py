"""`wga`: weighted gradient ascent (Wang et al., "Rethinking LLM Unlearning Objectives: A Gradient
Perspective and Go Beyond", ICLR 2025; open-unlearning's WGA trainer and WGA.yaml).

    w_t = sg[ p_theta(y_t | y_<t, x)^beta ]          (sg = stop-gradient)
    F(theta) = (1/|T|) * sum_{t in T} w_t * log p_t           (reduction "pooled", the reference)
    F(theta) = E_forget[ (1/|y|) * sum_t w_t * log p_t ]      (reduction "sequence")
    L(theta) = gamma * F(theta) + alpha * NLL_retain(theta)

with T all supervised forget tokens of the batch and NLL_retain the pooled retain NLL. Tokens the
model already finds unlikely get small weight, so ascent stops pushing them (beta = 0 is plain
gradient ascent). Defaults are WGA.yaml's: beta 1, gamma (forget weight) 1, alpha (retain weight) 1.
"""

from dataclasses import dataclass

import torch

from forgetlab.losses import nll, weighted_token_logprob
from forgetlab.params import require_choice, require_number
from forgetlab.unlearning import METHODS, Method


@METHODS.register("wga")
@dataclass
class WGA(Method):
    beta: float = 1.0  # weight exponent
    gamma: float = 1.0  # forget weight
    alpha: float = 1.0  # retain weight
    reduction: str = "pooled"
    uses_retain = True

    def __post_init__(self):
        for name in ("beta", "gamma", "alpha"):
            require_number("wga", name, getattr(self, name))
        require_choice("wga", "reduction", self.reduction, ("pooled", "sequence"))

    def loss(self, model, batch):
        forget = weighted_token_logprob(model, batch["forget"], lambda p: p.pow(self.beta), self.reduction)
        retain = nll(model, batch["retain"]) if self.alpha else torch.zeros(())
        return self.gamma * forget + self.alpha * retain, {"wga_forget": forget.item(), "retain_nll": retain.item()}
