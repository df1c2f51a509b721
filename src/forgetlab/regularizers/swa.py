"""`swa`: stochastic weight averaging over the last part of training (and its dense SWAD variant).

Mechanism (Izmailov et al., "Averaging Weights Leads to Wider Optima and Better Generalization",
UAI 2018; Cha et al., "SWAD: Domain Generalization by Seeking Flat Minima", NeurIPS 2021): with T
optimizer steps (after_step counts t = 0..T-1) and t0 = floor(start * T), the window is
t in [t0, T-1]; snapshots are taken after the steps

    S = {T-1, T-1-every, T-1-2*every, ...} ∩ [t0, T-1]    (dense: S = [t0, T-1], every step; SWAD)

(counted back from the last step, so the final weights are always in, and |S| >= 1), and the
saved weights are their mean  w_swa = (1/|S|) * sum_{t in S} w_t,  kept as a running mean
w_swa <- w_swa + (w_t - w_swa) / n  in float32 copies of the trainable parameters (the only ones
that change); `finalize` loads w_swa into the model. The model has no batch norm, so no statistics
need recomputing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from forgetlab.regularizers import REGULARIZERS, Regularizer


@REGULARIZERS.register("swa")
@dataclass
class SWA(Regularizer):
    order = -1  # finalize first: load the average before masks or merges
    start: float = 0.75
    every: int = 10
    dense: bool = False
    _total: int = field(default=0, init=False, repr=False)
    _params: list = field(default_factory=list, init=False, repr=False)  # trainable Parameters
    _mean: list = field(default_factory=list, init=False, repr=False)  # float32 running means
    _count: int = field(default=0, init=False, repr=False)

    def __post_init__(self):
        if not 0.0 <= self.start < 1.0:
            raise ValueError(f"swa.start must be in [0, 1), got {self.start}")
        if not (isinstance(self.every, int) and self.every >= 1):
            raise ValueError(f"swa.every must be an integer >= 1, got {self.every}")

    def setup(self, model, ctx):
        self._total = ctx.total_steps
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._mean, self._count = [], 0
        return model

    def param_groups(self, model, groups):
        # the optimizer's parameters, known only once every regularizer has set up (e.g. LoRA's adapters)
        self._params = [p for g in groups for p in g["params"]]
        return groups

    def averages_at(self, step: int) -> bool:
        first = math.floor(self.start * self._total)
        if not first <= step <= self._total - 1:
            return False
        return self.dense or (self._total - 1 - step) % self.every == 0

    @torch.no_grad()
    def after_step(self, model, step: int, optimizer) -> None:
        if not self.averages_at(step):
            return
        self._count += 1
        if self._count == 1:
            self._mean = [p.detach().float().clone() for p in self._params]
            return
        for mean, p in zip(self._mean, self._params):
            mean.add_(p.detach().float() - mean, alpha=1.0 / self._count)

    @torch.no_grad()
    def finalize(self, model):
        for mean, p in zip(self._mean, self._params):
            p.copy_(mean.to(p.dtype))
        self._mean = []
        return model

    def summary(self) -> dict[str, float]:
        return {"snapshots": float(self._count)}

    def state_dict(self) -> dict:
        return {"mean": list(self._mean), "count": self._count}

    def load_state_dict(self, state: dict) -> None:
        self._mean = [m.to(p.device) for m, p in zip(state["mean"], self._params)]
        self._count = state["count"]
