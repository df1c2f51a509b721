"""`wagle_taylor`: a first-order (Taylor) stand-in for WAGLE's weight attribution (Jia et al.,
"WAGLE: Strategic Weight Attribution for Effective and Modular Unlearning in Large Language
Models", NeurIPS 2024). Not the paper's score: `wagle` is (the closed form from its bi-level,
implicit-gradient analysis). Kept as a cheap, hyper-parameter-light comparison.

The change of a loss l when weight i is removed (set to 0) is, to first order, -theta_i * dl/dtheta_i
(SNIP's connection sensitivity), so with g_f and g_r the mean gradients at theta0 of the forget loss
(NLL_forget by default; forget_loss: method for the method's own forget term, as in `saliency`) and
of NLL_retain over `batches` forget and as many retain batches (batches 0 = one pass over the forget
split; eval mode; torch.autograd.grad):

    s_i = |theta_i * g_f,i| - gamma * |theta_i * g_r,i|

large when the weight matters to the forget answers and little to the retain ones (gamma 0:
forget attribution alone, i.e. SNIP on the forget loss). The mask is the top `fraction` of s over
all trainable weights, one global threshold, ties by position, and training changes only masked
weights: the same mechanics as `saliency` (forgetlab.unlearning.plugins.saliency.WeightMask).
summary(): `wagle_taylor.masked_fraction`, `wagle_taylor.threshold`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from forgetlab.params import require_number
from forgetlab.unlearning.plugins import PLUGINS
from forgetlab.unlearning.plugins.saliency import WeightMask, mean_gradient


def attribution_scores(theta: list[torch.Tensor], g_forget: list[torch.Tensor], g_retain: list[torch.Tensor],
                       gamma: float) -> list[torch.Tensor]:
    """s = |theta * g_forget| - gamma * |theta * g_retain|, per tensor."""
    return [(t * f).abs() - gamma * (t * r).abs() for t, f, r in zip(theta, g_forget, g_retain)]


@PLUGINS.register("wagle_taylor")
@dataclass
class WagleTaylor(WeightMask):
    name = "wagle_taylor"
    needs_retain = True
    gamma: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        require_number(self.name, "gamma", self.gamma)

    def scores(self, model, ctx, params):
        retain = self.retain_batches(ctx)
        g_forget = self.forget_gradient(model, ctx, params)
        g_retain = mean_gradient(model, params, retain, self.num_batches(ctx))
        return attribution_scores([p.detach() for p in params], g_forget, g_retain, self.gamma)
