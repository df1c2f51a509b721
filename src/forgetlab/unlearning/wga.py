"""`wga`: weighted gradient ascent (Wang et al., "Rethinking LLM Unlearning Objectives: A Gradient
Perspective and Go Beyond", ICLR 2025).

    L(theta) = E_forget[ (1/|y|) * sum_t w_t * log p_theta(y_t | y_<t, x) ] + gamma * NLL_retain(theta)
    w_t = sg[ p_theta(y_t | y_<t, x)^alpha ]          (sg = stop-gradient)

Tokens the model already finds unlikely get small weight, so ascent stops pushing them
(alpha = 0 is plain gradient ascent, averaged per sample).
"""

from dataclasses import dataclass

import torch

from forgetlab.losses import nll, weighted_answer_logprob
from forgetlab.unlearning import METHODS, Method


@METHODS.register("wga")
@dataclass
class WGA(Method):
    alpha: float = 1.0
    gamma: float = 1.0
    uses_retain = True

    def __post_init__(self):
        if not self.alpha >= 0:
            raise ValueError(f"wga.alpha must be >= 0, got {self.alpha}")
        if not self.gamma >= 0:
            raise ValueError(f"wga.gamma must be >= 0, got {self.gamma}")

    def loss(self, model, batch):
        forget = weighted_answer_logprob(model, batch["forget"], lambda p: p.pow(self.alpha))  # w = p^alpha
        retain = nll(model, batch["retain"]) if self.gamma else torch.zeros(())
        return forget + self.gamma * retain, {"wga_forget": forget.item(), "retain_nll": retain.item()}
