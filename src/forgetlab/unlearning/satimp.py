"""`satimp`: saturation-importance token reweighting (Yang et al., "Exploring Criteria of Loss
Reweighting to Enhance LLM Unlearning", ICML 2025; open-unlearning's SatImp trainer and SatImp.yaml).

    w_t = sg[ p_t^beta1 * (1 - p_t)^beta2 ],   p_t = p_theta(y_t | y_<t, x),  sg = stop-gradient
    F(theta) = (1/|T|) * sum_{t in T} w_t * log p_t           (reduction "pooled", the reference)
    F(theta) = E_forget[ (1/|y|) * sum_t w_t * log p_t ]      (reduction "sequence")
    L(theta) = gamma * F(theta) + alpha * NLL_retain(theta)

with T all supervised forget tokens of the batch and NLL_retain the pooled retain NLL. The weights
are unnormalised (weighted gradient ascent); open-unlearning's code names p^beta1 the saturation
weight and (1 - p)^beta2 the importance weight. Defaults are SatImp.yaml's method_args: beta1 5,
beta2 1, gamma (forget weight) 0.1, alpha (retain weight) 1 (the community README's text says the
opposite pair, gamma 1 and alpha 0.1; the yaml is what runs). beta1 = beta2 = 0 is plain gradient ascent.
"""

from dataclasses import dataclass

import torch

from forgetlab.losses import nll, weighted_token_logprob
from forgetlab.params import require_choice, require_number
from forgetlab.unlearning import METHODS, Method


@METHODS.register("satimp")
@dataclass
class SatImp(Method):
    beta1: float = 5.0
    beta2: float = 1.0
    gamma: float = 0.1  # forget weight
    alpha: float = 1.0  # retain weight
    reduction: str = "pooled"
    uses_retain = True

    def __post_init__(self):
        for name in ("beta1", "beta2", "gamma", "alpha"):
            require_number("satimp", name, getattr(self, name))
        require_choice("satimp", "reduction", self.reduction, ("pooled", "sequence"))

    def loss(self, model, batch):
        forget = weighted_token_logprob(model, batch["forget"], lambda p: p.pow(self.beta1) * (1 - p).pow(self.beta2),
                                        self.reduction)
        retain = nll(model, batch["retain"]) if self.alpha else torch.zeros(())
        return self.gamma * forget + self.alpha * retain, {"satimp_forget": forget.item(), "retain_nll": retain.item()}
