"""`swa`: stochastic weight averaging under a constant (or cyclic) lr, and its dense SWAD variant.

References: Izmailov et al., "Averaging Weights Leads to Wider Optima and Better Generalization",
UAI 2018 (SWA; official code github.com/timgaripov/swa); Cha et al., "SWAD: Domain Generalization
by Seeking Flat Minima", NeurIPS 2021 (SWAD; official code github.com/khanrc/swad).

Averaging. With T optimizer steps (after_step counts t = 0..T-1), the window is t in [t0, t1] with
t0 = floor(start * T) and t1 = max(t0, ceil(end * T) - 1) (t1 = T-1 for end = 1). Snapshots are
taken after the steps

    S = {t1, t1 - every, t1 - 2*every, ...} ∩ [t0, t1]    (dense: S = [t0, t1], every step: SWAD)

(counted back from t1, so the window's last weights are always in and |S| >= 1), and the saved
weights are their mean  w_swa = (1/|S|) * sum_{t in S} w_t,  kept as a running mean
w_swa <- w_swa + (w_t - w_swa) / n  in float32 copies of the trainable parameters (the only ones
that change); `finalize` loads w_swa into the model. The model has no batch norm, so no
statistics need recomputing (the paper's BN update step has nothing to do).

Learning rate (SWA paper, Sec. 3.1-3.2 and the official train.py). Up to t0 the loop's own schedule
runs; from step t0 to the end every step uses the SWA lr instead (`before_step` overwrites each
group's lr just before the optimizer step; the scheduler's next step never sees it):

    lr_schedule: constant   alpha(t) = alpha2                   (paper; the official code's only mode)
    lr_schedule: cyclic     alpha(t) = (1 - tau) * alpha1 + tau * alpha2,   (paper, Sec. 3.1, cyclical)
                            tau = (every - k) / every,  k = (t1 - t) mod every
                            i.e. a cycle of length c = `every` decaying linearly from ~alpha1 to
                            alpha2, reached exactly at the snapshot steps, as the paper prescribes
    lr_schedule: loop       the loop's schedule throughout (this project's former behaviour; not SWA)

with alpha2 = `swa_lr` (None: the loop's scheduled lr at step t0, held) and alpha1 = `swa_lr_max`
(None: the loop's peak lr). A parameter group whose base lr differs from the loop's lr keeps its
ratio to it (lr_g = alpha(t) * base_lr_g / lr). `summary` logs the last SWA lr as `swa_lr`. The
loop's logged `lr` is the scheduler's value and does not show this override.

Deliberate differences from the references:
  - SWA, lr before t0: the official code decays linearly from the initial lr to swa_lr between
    0.5 and 0.9 of the pre-averaging budget and holds it from there; here the loop's own schedule
    (warm-up + cosine by default) runs until t0. With swa_lr = None the lr is continuous at t0
    (held at its t0 value), so there is no jump; torch's SWALR annealing is not used either.
  - SWA, snapshot grid: counted back from the end (the final weights always count) instead of
    forward from the SWA start every c epochs; steps instead of epochs.
  - SWAD (dense = true), window: SWAD's LossValley picks t0 as the first evaluation after which the
    validation loss stops decreasing for n_converge = 3 evaluations, and t1 when the smoothed
    loss (min over n_tolerance = 6 evaluations) exceeds (1 + 0.3) x the converged loss. Here the
    window is fixed by `start` / `end` (fractions of training). Reason: the fine-tune's objective
    is to memorise its training set (the facts later unlearned), there is no held-out validation
    split to define an overfitting valley, and the only fixed batch the loop offers (the probe)
    is training data, whose loss keeps falling: the valley would never be detected and SWAD would
    fall back to the last model. SWAD also trains with one constant lr throughout (DomainBed's
    Adam), and averages every iteration of its window; the latter is what `dense` does, and
    lr_schedule = constant holds the lr constant over the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from forgetlab.params import require_int
from forgetlab.regularizers import REGULARIZERS, Regularizer

SCHEDULES = ("constant", "cyclic", "loop")


def _positive_or_none(name: str, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"swa.{name} must be a number > 0 or null, got {value!r}")


@REGULARIZERS.register("swa")
@dataclass
class SWA(Regularizer):
    order = -1  # finalize first: load the average before masks or merges; set the lr before allora scales it
    start: float = 0.75
    end: float = 1.0
    every: int = 10
    dense: bool = False
    lr_schedule: str = "constant"
    swa_lr: float | None = None
    swa_lr_max: float | None = None
    _total: int = field(default=0, init=False, repr=False)
    _params: list = field(default_factory=list, init=False, repr=False)  # trainable Parameters
    _mean: list = field(default_factory=list, init=False, repr=False)  # float32 running means
    _count: int = field(default=0, init=False, repr=False)
    _held: float | None = field(default=None, init=False, repr=False)  # lambda(t0): scheduled lr / base lr
    _lr: float | None = field(default=None, init=False, repr=False)  # the last SWA lr used

    def __post_init__(self):
        for name in ("start", "end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"swa.{name} must be a number, got {value!r}")
        if not 0.0 <= self.start < 1.0:
            raise ValueError(f"swa.start must be in [0, 1), got {self.start}")
        if not self.start < self.end <= 1.0:
            raise ValueError(f"swa.end must be in (start, 1] = ({self.start}, 1], got {self.end}")
        require_int("swa", "every", self.every, low=1)
        if not isinstance(self.dense, bool):
            raise ValueError(f"swa.dense must be true or false, got {self.dense!r}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"swa.lr_schedule must be one of {', '.join(SCHEDULES)}, got {self.lr_schedule!r}")
        _positive_or_none("swa_lr", self.swa_lr)
        _positive_or_none("swa_lr_max", self.swa_lr_max)
        if self.lr_schedule == "loop" and self.swa_lr is not None:
            raise ValueError("swa.swa_lr has no effect with swa.lr_schedule: loop (the loop's schedule runs)")
        if self.lr_schedule != "cyclic" and self.swa_lr_max is not None:
            raise ValueError("swa.swa_lr_max (the cycle's top lr) applies only to swa.lr_schedule: cyclic")
        if self.lr_schedule == "cyclic" and (self.dense or self.every < 2):
            raise ValueError("swa.lr_schedule: cyclic needs dense: false and every >= 2 (the cycle length, "
                             "with a snapshot at each cycle's end)")
        if self.swa_lr is not None and self.swa_lr_max is not None and self.swa_lr_max < self.swa_lr:
            raise ValueError(f"swa.swa_lr_max ({self.swa_lr_max}) must be >= swa.swa_lr ({self.swa_lr})")

    # -- window -------------------------------------------------------------------------------

    @property
    def first(self) -> int:
        return math.floor(self.start * self._total)

    @property
    def last(self) -> int:
        return min(self._total - 1, max(self.first, math.ceil(self.end * self._total) - 1))

    def averages_at(self, step: int) -> bool:
        if not self.first <= step <= self.last:
            return False
        return self.dense or (self.last - step) % self.every == 0

    # -- learning rate ------------------------------------------------------------------------

    def lr_at(self, step: int, base_lr: float, held: float) -> float:
        """The SWA lr of step t >= t0 for a loop whose peak lr is base_lr and lambda(t0) = held."""
        low = self.swa_lr if self.swa_lr is not None else base_lr * held
        if self.lr_schedule == "constant":
            return low
        high = self.swa_lr_max if self.swa_lr_max is not None else base_lr
        tau = (self.every - (self.last - step) % self.every) / self.every
        return (1.0 - tau) * high + tau * low

    def before_step(self, model, step: int, optimizer) -> None:
        if self.lr_schedule == "loop" or step < self.first:
            return
        groups = optimizer.param_groups
        for g in groups:
            g.setdefault("initial_lr", g["lr"])  # set by LambdaLR; a bare optimizer's lr is its base
        base = optimizer.defaults["lr"]
        if self._held is None:  # step t0 (the scheduler has just set lr = base * lambda(t0))
            ref = next((g for g in groups if g["initial_lr"] > 0), None)
            self._held = ref["lr"] / ref["initial_lr"] if ref is not None else 1.0
        self._lr = self.lr_at(step, base, self._held)
        for g in groups:
            g["lr"] = self._lr * g["initial_lr"] / base if base > 0 else 0.0

    # -- averaging ----------------------------------------------------------------------------

    def setup(self, model, ctx):
        self._total = ctx.total_steps
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._mean, self._count, self._held, self._lr = [], 0, None, None
        return model

    def param_groups(self, model, groups):
        # the optimizer's parameters, known only once every regularizer has set up (e.g. LoRA's adapters)
        self._params = [p for g in groups for p in g["params"]]
        return groups

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
        out = {"snapshots": float(self._count)}
        if self._lr is not None:
            out["swa_lr"] = float(self._lr)
        return out

    def state_dict(self) -> dict:
        return {"mean": list(self._mean), "count": self._count, "held": self._held, "lr": self._lr}

    def load_state_dict(self, state: dict) -> None:
        self._mean = [m.to(p.device) for m, p in zip(state["mean"], self._params)]
        self._count = state["count"]
        self._held, self._lr = state.get("held"), state.get("lr")
