"""`saliency`: SalUn's gradient-saliency weight mask (Fan et al., "SalUn: Empowering Machine
Unlearning via Gradient-based Weight Saliency", ICLR 2024, Eq. (3)-(4); authors' code
OPTML-Group/Unlearn-Saliency; open-unlearning has no implementation).

At setup, from the weights theta0 the unlearning starts from:

    g_f = mean over `batches` forget batches of grad l_f(theta0)
          l_f = NLL_forget (forget_loss: nll, the default: SalUn's forgetting loss is gradient
          ascent's -CE, the same |g_f|), or the method's own forget term on forget-only batches
          (forget_loss: method; see forgetlab.unlearning.plugins.terms); batches 0 = one pass
    m   = 1[ |g_f| is among the s = max(1, floor(fraction * N + 1/2)) largest of all N trainable weights ]

one global threshold over every trainable parameter (SalUn's hard threshold gamma, set by the
fraction as in its code); ties at the threshold are broken by position (parameter order, then
row-major), so the mask has exactly s entries and is deterministic. The gradients are taken with
the model in eval mode (no dropout), with torch.autograd.grad (p.grad is untouched). Training then
changes only masked weights (SalUn Eq. (4), theta_u = m * (Delta + theta0) + (1 - m) * theta0):

    before_step:  g <- m * g                          (the method's gradient, after clipping)
    after_step:   theta <- m * theta + (1 - m) * theta0   (freeze_unmasked: true, the default)

The second line undoes whatever the optimizer did to unmasked weights despite a zero gradient
(AdamW's decoupled weight decay), so every unmasked weight stays bit-identical to theta0, as Eq. (4)
states. Deliberate differences from the authors' code: it only masks the gradient, so weight decay
still shrinks unmasked weights (freeze_unmasked: false restores that); it sums gradients over
batches (we average: the same mask); its top-k breaks ties arbitrarily. summary():
`saliency.masked_fraction` (s / N) and `saliency.threshold` (the s-th largest score).

WeightMask holds these masking mechanics for any score; `wagle` and `wagle_taylor` reuse it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from forgetlab.losses import nll
from forgetlab.params import require_int
from forgetlab.unlearning.plugins import PLUGINS, Plugin
from forgetlab.unlearning.plugins.terms import loss_with_gradient_of

FORGET_LOSSES = ("nll", "method")


def top_fraction_mask(scores: list[torch.Tensor], fraction: float) -> tuple[list[torch.Tensor], float]:
    """Boolean masks (shaped like `scores`) of the s = max(1, floor(fraction*N + 1/2)) largest scores over
    all tensors together, ties at the threshold taken in flat order; also returns the threshold.
    NaN scores rank last."""
    flat = torch.cat([s.detach().reshape(-1).double() for s in scores])
    flat = torch.nan_to_num(flat, nan=-math.inf)
    n = flat.numel()
    s = min(n, max(1, math.floor(fraction * n + 0.5)))
    threshold = torch.kthvalue(flat, n - s + 1).values  # the s-th largest
    mask = flat > threshold
    need = s - int(mask.sum())
    if need > 0:
        ties = torch.nonzero(flat == threshold).squeeze(1)[:need]
        mask[ties] = True
    masks = [m.view_as(t) for m, t in zip(torch.split(mask, [t.numel() for t in scores]), scores)]
    return masks, float(threshold)


def mean_gradient(model, params: list, batches, n: int, loss_fn=nll) -> list[torch.Tensor]:
    """The mean over n batches of grad loss_fn(model, batch) (default NLL) w.r.t. params, in eval
    mode; p.grad is left untouched."""
    total = [torch.zeros_like(p) for p in params]
    training = model.training
    model.eval()
    try:
        for _ in range(n):
            grads = torch.autograd.grad(loss_fn(model, next(batches)), params, allow_unused=True)
            for t, g in zip(total, grads):
                if g is not None:
                    t.add_(g.detach())
    finally:
        model.train(training)
    return [t / n for t in total]


@dataclass
class WeightMask(Plugin):
    """Update only the weights of a top-`fraction` mask of per-weight scores fixed at setup."""

    fraction: float = 0.5
    batches: int = 0
    forget_loss: str = "nll"  # nll | method: the loss whose forget gradient scores the weights
    freeze_unmasked: bool = True  # reset unmasked weights to theta0 after every step
    _method: object = field(default=None, init=False, repr=False)
    _params: list = field(default_factory=list, init=False, repr=False)
    _keep: list = field(default_factory=list, init=False, repr=False)  # ~mask: the frozen weights
    _frozen: list = field(default_factory=list, init=False, repr=False)  # their initial values, 1-D
    _stats: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 < f <= 1.0:
            raise ValueError(f"{self.name}.fraction must be in (0, 1], got {f!r}")
        require_int(self.name, "batches", self.batches, hint="0: one pass over the forget split")
        if self.forget_loss not in FORGET_LOSSES:
            raise ValueError(f"{self.name}.forget_loss must be one of {list(FORGET_LOSSES)}, got {self.forget_loss!r}")
        if not isinstance(self.freeze_unmasked, bool):
            raise ValueError(f"{self.name}.freeze_unmasked must be true or false, got {self.freeze_unmasked!r}")

    def check(self, method) -> None:
        super().check(method)
        if self.forget_loss == "method" and method.forget_views:
            raise ValueError(f"{self.name}.forget_loss 'method' cannot apply to {method.name}: its forget term uses "
                             f"the view(s) {list(method.forget_views)}, and the plug-in's own forget batches "
                             "(TrainContext.forget) hold only the forget answers; use forget_loss: nll")
        self._method = method

    def num_batches(self, ctx) -> int:
        if ctx.forget is None:
            raise ValueError(f"{self.name} needs forget batches (TrainContext.forget); run it through the unlearn recipe")
        return self.batches or len(ctx.forget)

    def scores(self, model, ctx, params: list) -> list[torch.Tensor]:
        raise NotImplementedError

    def retain_batches(self, ctx):
        if ctx.retain is None:
            raise ValueError(f"{self.name} needs retain batches (TrainContext.retain); run it through the unlearn recipe")
        return iter(ctx.retain)

    def forget_gradient(self, model, ctx, params: list) -> list[torch.Tensor]:
        """g_f: the mean gradient of `forget_loss` over `batches` forget batches (see the module docstring)."""
        n = self.num_batches(ctx)
        if self.forget_loss == "nll":
            return mean_gradient(model, params, iter(ctx.forget), n)
        method = self._method
        if method is None:
            raise ValueError(f"{self.name}.forget_loss 'method' needs the method: build the plug-in with "
                             "forgetlab.unlearning.build_method (it calls check(method))")
        if method.needs_reference and method.reference is None:
            raise ValueError(f"{self.name}: {method.name} needs its reference model (method.reference) before setup")
        # the method's forget term on forget-only batches; a method with a retain term gets a retain
        # batch whose passes run without gradient (forgetlab.unlearning.plugins.terms)
        retain = self.retain_batches(ctx) if method.uses_retain else None

        def forget_term(model, forget):
            batch = {"forget": forget, "retain": next(retain) if retain is not None else None}
            return loss_with_gradient_of(method, model, batch, "forget", restore=True)[0]

        return mean_gradient(model, params, iter(ctx.forget), n, forget_term)

    def setup(self, model, ctx):
        self._params = [p for p in model.parameters() if p.requires_grad]
        masks, threshold = top_fraction_mask(self.scores(model, ctx, self._params), self.fraction)
        self._keep = [~m for m in masks]
        self._frozen = [p.detach()[k].clone() if self.freeze_unmasked else p.new_empty(0)
                        for p, k in zip(self._params, self._keep)]
        masked = sum(int(m.sum()) for m in masks)
        self._stats = {"masked_fraction": masked / sum(m.numel() for m in masks), "threshold": threshold}
        return model

    @property
    def masks(self) -> list[torch.Tensor]:
        return [~k for k in self._keep]

    def before_step(self, model, step, optimizer):
        for p, keep in zip(self._params, self._keep):
            if p.grad is not None:
                p.grad.masked_fill_(keep, 0.0)

    def after_step(self, model, step, optimizer):
        if not self.freeze_unmasked:
            return
        with torch.no_grad():
            for p, keep, frozen in zip(self._params, self._keep, self._frozen):
                if frozen.numel():
                    p.masked_scatter_(keep, frozen)

    def summary(self) -> dict[str, float]:
        return {f"{self.name}.{k}": v for k, v in self._stats.items()}

    def state_dict(self) -> dict:
        # setup recomputes these from the initial weights; saved all the same, so that a resumed run
        # keeps the very mask it trained with (a GPU's gradients need not be bit-reproducible)
        return {"keep": list(self._keep), "frozen": list(self._frozen), "stats": dict(self._stats)}

    def load_state_dict(self, state: dict) -> None:
        self._keep = [k.to(p.device) for k, p in zip(state["keep"], self._params)]
        self._frozen = [f.to(p.device) for f, p in zip(state["frozen"], self._params)]
        self._stats = dict(state["stats"])


@PLUGINS.register("saliency")
@dataclass
class Saliency(WeightMask):
    """Scores |g_f|: the forget gradient's magnitude (see the module docstring)."""

    name = "saliency"

    def scores(self, model, ctx, params):
        return [g.abs() for g in self.forget_gradient(model, ctx, params)]
