"""`satimp`: saturation-importance token reweighting (Yang et al., "Exploring Criteria of Loss
Reweighting to Enhance LLM Unlearning", ICML 2025).

Rule implemented (unnormalised weights, per-sample token mean, as weighted gradient ascent):

    w_t = sg[ p_t^beta1 * (1 - p_t)^beta2 ],   p_t = p_theta(y_t | y_<t, x),  sg = stop-gradient
    L(theta) = E_forget[ (1/|y|) * sum_t w_t * log p_t ] + gamma * NLL_retain(theta)

p_t^beta1 (importance) favours tokens still likely; (1 - p_t)^beta2 (saturation) damps tokens the
model is most confident about. beta1 = beta2 = 0 is plain gradient ascent averaged per sample.
"""

from dataclasses import dataclass

import torch

from forgetlab.losses import nll, weighted_answer_logprob
from forgetlab.unlearning import METHODS, Method


@METHODS.register("satimp")
@dataclass
class SatImp(Method):
    beta1: float = 5.0
    beta2: float = 1.0
    gamma: float = 1.0
    uses_retain = True

    def __post_init__(self):
        for name in ("beta1", "beta2", "gamma"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"satimp.{name} must be >= 0, got {getattr(self, name)}")

    def loss(self, model, batch):
        forget = weighted_answer_logprob(model, batch["forget"], lambda p: p.pow(self.beta1) * (1 - p).pow(self.beta2))
        retain = nll(model, batch["retain"]) if self.gamma else torch.zeros(())
        return forget + self.gamma * retain, {"satimp_forget": forget.item(), "retain_nll": retain.item()}
