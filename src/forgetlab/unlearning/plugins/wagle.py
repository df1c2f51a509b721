"""`wagle`: a weight-attribution mask in the style of WAGLE (Jia et al., "WAGLE: Strategic Weight
Attribution for Effective and Modular Unlearning in Large Language Models", NeurIPS 2024).

WAGLE attributes to each weight its influence on forgetting and on retained utility, and unlearns
with only the most influential weights. This plug-in uses a first-order (Taylor) attribution of
both losses; it is a WAGLE-style score, not the paper's closed-form bi-level (implicit-gradient)
score. The change of a loss l when weight i is removed (set to 0) is, to first order,
-theta_i * dl/dtheta_i, so with g_f and g_r the mean gradients at theta0 of NLL_forget and
NLL_retain over `batches` forget and as many retain batches (batches 0 = one pass over the forget
split; eval mode; torch.autograd.grad):

    s_i = |theta_i * g_f,i| - gamma * |theta_i * g_r,i|

large when the weight matters to the forget answers and little to the retain ones (gamma 0:
forget attribution alone). The mask is the top `fraction` of s over all trainable weights, one
global threshold, ties by position, and training changes only masked weights: the same mechanics
as `saliency` (forgetlab.unlearning.plugins.saliency.WeightMask). summary():
`wagle.masked_fraction`, `wagle.threshold`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from forgetlab.unlearning.plugins import PLUGINS
from forgetlab.unlearning.plugins.saliency import WeightMask, mean_gradient


def attribution_scores(theta: list[torch.Tensor], g_forget: list[torch.Tensor], g_retain: list[torch.Tensor],
                       gamma: float) -> list[torch.Tensor]:
    """s = |theta * g_forget| - gamma * |theta * g_retain|, per tensor."""
    return [(t * f).abs() - gamma * (t * r).abs() for t, f, r in zip(theta, g_forget, g_retain)]


@PLUGINS.register("wagle")
@dataclass
class Wagle(WeightMask):
    name = "wagle"
    needs_retain = True
    gamma: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        g = self.gamma
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not g >= 0.0 or g == float("inf"):
            raise ValueError(f"wagle.gamma must be a finite number >= 0, got {g!r}")

    def scores(self, model, ctx, params):
        if ctx.retain is None:
            raise ValueError("wagle needs retain batches (TrainContext.retain); run it through the unlearn recipe")
        n = self.num_batches(ctx)
        g_forget = mean_gradient(model, params, iter(ctx.forget), n)
        g_retain = mean_gradient(model, params, iter(ctx.retain), n)
        return attribution_scores([p.detach() for p in params], g_forget, g_retain, self.gamma)
