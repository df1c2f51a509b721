"""`sparsity`: gradual magnitude pruning of the decoder's projection matrices.

Mechanism (Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
compression", 2017): with T optimizer steps (after_step counts t = 0..T-1), t0 = floor(start * T)
and t1 = min(floor(end * T), T-1), the sparsity follows the cubic schedule

    s_t = s_f * (1 - (1 - (t - t0) / (t1 - t0))^3)   for t0 <= t <= t1   (0 before, s_f after)

At the steps t0, t0 + every, t0 + 2*every, ... and at t1 (so s_f is always reached), each pruned
matrix W (q/k/v/o and gate/up/down projections of every decoder layer; not embeddings, norms or
lm_head) gets a new mask zeroing its round(s_t * numel(W)) smallest-|w| entries (already pruned
entries first, so the pruned set only grows). After every step the masks are re-applied in place
(W[mask] = 0), so pruned weights stay exactly zero through training; `finalize` applies them once more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from forgetlab.regularizers import REGULARIZERS, Regularizer, base_model

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def cubic_sparsity(t: float, t0: float, t1: float, target: float) -> float:
    """Zhu & Gupta's s_t: 0 before t0, rising as a cubic to `target` at t1, `target` after."""
    if t < t0:
        return 0.0
    if t >= t1:
        return target
    return target * (1.0 - (1.0 - (t - t0) / (t1 - t0)) ** 3)


@REGULARIZERS.register("sparsity")
@dataclass
class Sparsity(Regularizer):
    order = 1  # after swa, so that its finalize re-zeroes pruned weights
    target: float = 0.5
    start: float = 0.0
    end: float = 0.75
    every: int = 10
    _t0: int = field(default=0, init=False, repr=False)
    _t1: int = field(default=0, init=False, repr=False)
    _weights: list = field(default_factory=list, init=False, repr=False)
    _pruned: list = field(default_factory=list, init=False, repr=False)  # bool masks, True = pruned

    def __post_init__(self):
        if not 0.0 <= self.target < 1.0:
            raise ValueError(f"sparsity.target must be in [0, 1), got {self.target}")
        for name in ("start", "end"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"sparsity.{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.start < self.end:
            raise ValueError(f"sparsity.start must be < sparsity.end, got {self.start} >= {self.end}")
        if not (isinstance(self.every, int) and self.every >= 1):
            raise ValueError(f"sparsity.every must be an integer >= 1, got {self.every}")

    def setup(self, model, ctx):
        total = ctx.total_steps
        self._t0 = min(math.floor(self.start * total), total - 1)
        self._t1 = max(self._t0, min(math.floor(self.end * total), total - 1))
        self._weights = [
            getattr(block, name).weight
            for layer in base_model(model).model.layers
            for block in (layer.self_attn, layer.mlp)
            for name in PROJECTIONS
            if hasattr(block, name)
        ]
        self._pruned = []
        return model

    def updates_at(self, step: int) -> bool:
        return step == self._t1 or (self._t0 <= step < self._t1 and (step - self._t0) % self.every == 0)

    @torch.no_grad()
    def _recompute(self, sparsity: float) -> None:
        masks = []
        for i, w in enumerate(self._weights):
            score = w.detach().abs().flatten().float()
            if self._pruned:
                score[self._pruned[i].flatten()] = -1.0  # already pruned: always among the smallest
            k = round(sparsity * score.numel())
            pruned = torch.zeros(score.numel(), dtype=torch.bool, device=w.device)
            if k > 0:
                pruned[torch.topk(score, k, largest=False, sorted=False).indices] = True
            masks.append(pruned.view_as(w))
        self._pruned = masks

    @torch.no_grad()
    def _apply(self) -> None:
        for w, pruned in zip(self._weights, self._pruned):
            w.masked_fill_(pruned, 0.0)

    def after_step(self, model, step: int, optimizer) -> None:
        if self.updates_at(step):
            self._recompute(cubic_sparsity(step, self._t0, self._t1, self.target))
        self._apply()

    def finalize(self, model):
        self._apply()
        return model

    def state_dict(self) -> dict:
        return {"pruned": list(self._pruned)}

    def load_state_dict(self, state: dict) -> None:
        self._pruned = [m.to(w.device) for m, w in zip(state["pruned"], self._weights)]

    def summary(self) -> dict[str, float]:
        zeros = sum(int((w == 0).sum()) for w in self._weights)
        total = sum(w.numel() for w in self._weights)
        return {"sparsity": zeros / max(1, total), "target": float(self.target)}
