"""`gu_projection`: Geometric-disentanglement Unlearning (GU; Zhou et al., "Geometric-disentanglement
Unlearning", arXiv:2511.17100, 2025; authors' code Lemutisme/geo-unlearning, not readable here;
open-unlearning has no implementation).

To first order a step d changes the retain loss by <grad l_r, d>; GU keeps only the component of the
*forget* update that leaves the retain losses unchanged to first order, and passes the method's
own retain term as it is (the paper's joint forget-retain update):

    g  = P(g_F) + g_R,    P(g_F) = g_F - sum_i <q_i, g_F>_M q_i

with g_F and g_R the gradients of the method's forget and retain terms on the step's batch (split
by forgetlab.unlearning.plugins.terms: its contract is the one this plug-in relies on), q_1..q_k'
an M-orthonormal basis of span{r_1..r_k} (Gram-Schmidt, two passes; a direction whose residual is
below RANK_TOL of its M-norm adds nothing, k' <= k), r_j the gradients of NLL_retain on k fresh
retain batches (TrainContext.retain, an iterator kept across steps), and <a, b>_M = a^T M b:

    metric: euclidean   M = I: SGD's geometry, <r_j, P(g_F)> = 0
    metric: adam        M = diag(1 / (sqrt(v_hat) + eps)), AdamW's preconditioner (v_hat = exp_avg_sq
                        / (1 - beta2^t), eps and beta2 the parameter's group's) from the optimizer
                        state as it stands before the step: the forget part of the step, -lr * M P(g_F),
                        moves each retain loss by -lr <r_j, P(g_F)>_M = 0 (the paper's optimizer-induced
                        geometry, the default)

so the projected forget update leaves each retain loss unchanged to first order, in the chosen metric.
Where the optimizer has no state yet (the first step) `adam` uses M = I for that step
(`gu_projection.euclidean_steps` counts them): Adam's first v_hat would be the projected gradient's
own square. A parameter without optimizer state gets M = 1.

How: check(method) makes method.loss this plug-in's loss, which for every micro-batch evaluates
the method's loss twice, once differentiable through the forget term only (its gradient g_F by
torch.autograd.grad; its side effects on the method's state undone) and once through the retain
term only, and returns the latter plus <P(g_F), theta> - <P(g_F), theta>.detach(): the value is the
method's loss, the gradient g_R + P(g_F). The basis and M are fixed for a step (computed at its
first micro-batch), so grad_accum averages projected micro-batch gradients, and the loop's gradient
clipping then applies to the projected update. The projection is computed in float64. A checkpoint
holds M for the next step, so a resumed run projects its first step as the uninterrupted one did.

Deliberate differences (the paper's text only; its code was not available to compare): the
retain directions are k fresh batches of retain NLL (not the method's own retain term, nor
per-sample gradients); M is the state before the step, not the v_t that includes this step's
gradient; Adam's momentum still carries earlier (projected) gradients; one global projection over
all trainable weights (the authors' README mentions a per-parameter mechanism, unverified here).
summary(): `gu_projection.removed_fraction`, the mean over micro-batches of
||g_F - P(g_F)||_M / ||g_F||_M, `gu_projection.rank`, the mean k', and for metric adam
`gu_projection.euclidean_steps`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from forgetlab.losses import nll
from forgetlab.params import require_int
from forgetlab.unlearning.plugins import PLUGINS, Plugin
from forgetlab.unlearning.plugins.terms import loss_with_gradient_of

RANK_TOL = 1e-4  # relative residual below which a retain gradient adds no new direction
METRICS = ("euclidean", "adam")


def flatten(tensors, params) -> torch.Tensor:
    """One float64 vector from per-parameter tensors (None counts as zeros)."""
    return torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1).double() for t, p in zip(tensors, params)])


def inner(a: torch.Tensor, b: torch.Tensor, metric: torch.Tensor | None) -> torch.Tensor:
    """<a, b>_M with M = diag(metric) (None: the identity)."""
    return torch.dot(a, b) if metric is None else torch.dot(a * metric, b)


def orthonormal_basis(vectors: list[torch.Tensor], metric: torch.Tensor | None = None,
                      tol: float = RANK_TOL) -> list[torch.Tensor]:
    """Gram-Schmidt in <.,.>_M with re-orthogonalisation; directions (nearly) in the span so far are dropped."""
    basis: list[torch.Tensor] = []
    for v in vectors:
        norm = inner(v, v, metric).sqrt()
        if not torch.isfinite(norm) or norm == 0:
            continue
        u = v.clone()
        for _ in range(2):
            for q in basis:
                u -= inner(q, u, metric) * q
        residual = inner(u, u, metric).sqrt()
        if residual > tol * norm:
            basis.append(u / residual)
    return basis


def project_out(g: torch.Tensor, basis: list[torch.Tensor],
                metric: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(g - T g, T g), T g = sum_i <q_i, g>_M q_i for the M-orthonormal `basis`."""
    removed = torch.zeros_like(g)
    for q in basis:
        removed += inner(q, g, metric) * q
    return g - removed, removed


def adam_metric(optimizer, params: list) -> torch.Tensor | None:
    """diag(1 / (sqrt(v_hat) + eps)) over `params`, flattened (float64), from AdamW's state; None
    where the optimizer has no state for any of them."""
    if optimizer is None:
        return None
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    parts, found = [], False
    for p in params:
        state = optimizer.state.get(p, {})
        if "exp_avg_sq" not in state:
            parts.append(torch.ones(p.numel(), dtype=torch.float64, device=p.device))
            continue
        found = True
        group = groups[id(p)]
        v_hat = state["exp_avg_sq"].double() / (1 - group["betas"][1] ** float(state["step"]))
        parts.append((1.0 / (v_hat.sqrt() + group["eps"])).reshape(-1))
    return torch.cat(parts) if found else None


@PLUGINS.register("gu_projection")
@dataclass
class GUProjection(Plugin):
    name = "gu_projection"
    needs_retain = True
    k: int = 2
    metric: str = "adam"
    _method: object = field(default=None, init=False, repr=False)
    _method_loss: object = field(default=None, init=False, repr=False)
    _params: list = field(default_factory=list, init=False, repr=False)
    _retain: object = field(default=None, init=False, repr=False)
    _optimizer: object = field(default=None, init=False, repr=False)
    _loaded_metric: object = field(default=None, init=False, repr=False)  # M for the first step after a resume
    _step: tuple | None = field(default=None, init=False, repr=False)  # (basis, M) of the current step
    _fractions: list = field(default_factory=list, init=False, repr=False)
    _ranks: list = field(default_factory=list, init=False, repr=False)
    _euclidean_steps: int = field(default=0, init=False, repr=False)

    def __post_init__(self):
        require_int("gu_projection", "k", self.k, low=1)
        if self.metric not in METRICS:
            raise ValueError(f"gu_projection.metric must be one of {list(METRICS)}, got {self.metric!r}")

    def check(self, method) -> None:
        super().check(method)
        if isinstance(getattr(method.loss, "__self__", None), GUProjection):
            if method.loss.__self__ is self:
                return
            raise ValueError(f"gu_projection is given twice for {method.name}")
        # bind: the loop minimises method.loss, which becomes this plug-in's (see the module docstring)
        self._method, self._method_loss = method, method.loss
        method.loss = self.loss

    def setup(self, model, ctx):
        if ctx.retain is None:
            raise ValueError("gu_projection needs retain batches (TrainContext.retain); run it through the unlearn recipe")
        if self._method is None:
            raise ValueError("gu_projection is not bound to a method: build it with forgetlab.unlearning.build_method")
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._retain = iter(ctx.retain)
        self._optimizer = self._loaded_metric = self._step = None
        self._fractions, self._ranks, self._euclidean_steps = [], [], 0
        return model

    def retain_gradients(self, model) -> list[torch.Tensor]:
        """k flattened retain-NLL gradients on the next k retain batches; p.grad is left untouched."""
        out = []
        for _ in range(self.k):
            grads = torch.autograd.grad(nll(model, next(self._retain)), self._params, allow_unused=True)
            out.append(flatten(grads, self._params))
        return out

    def next_metric(self) -> torch.Tensor | None:
        """M for the coming step (None: Euclidean)."""
        if self.metric == "euclidean":
            return None
        if self._optimizer is not None:
            return adam_metric(self._optimizer, self._params)
        return self._loaded_metric

    def start_step(self, model) -> tuple:
        metric = self.next_metric()
        if self.metric == "adam" and metric is None:
            self._euclidean_steps += 1
        basis = orthonormal_basis(self.retain_gradients(model), metric)
        self._ranks.append(len(basis))
        return basis, metric

    def loss(self, model, batch):
        """The method's loss; its gradient is g_R + P(g_F) (see the module docstring)."""
        if not self._params or not torch.is_grad_enabled():
            return self._method_loss(model, batch)
        params, method = self._params, self._method
        with_retain = batch.get("retain") is not None
        forget, parts = loss_with_gradient_of(method, model, batch, "forget", restore=with_retain)
        g_f = flatten(torch.autograd.grad(forget, params, allow_unused=True) if forget.requires_grad else
                      [None] * len(params), params)
        if self._step is None:
            self._step = self.start_step(model)
        basis, metric = self._step
        projected, removed = project_out(g_f, basis, metric)
        norm = inner(g_f, g_f, metric).sqrt()
        self._fractions.append(float(inner(removed, removed, metric).sqrt() / norm) if norm > 0 else 0.0)
        if with_retain:
            loss, parts = loss_with_gradient_of(method, model, batch, "retain")
        else:
            loss = forget.detach()
        linear = sum((d.view_as(p).to(p.dtype) * p).sum()
                     for d, p in zip(torch.split(projected, [p.numel() for p in params]), params))
        return loss + (linear - linear.detach()), parts

    def before_step(self, model, step, optimizer):
        self._optimizer = optimizer

    def after_step(self, model, step, optimizer):
        self._optimizer, self._loaded_metric, self._step = optimizer, None, None

    def state_dict(self) -> dict:  # its retain iterator's position, the statistics, and M for the next step
        metric = self.next_metric()
        return {"retain": self._retain.state_dict(), "fractions": list(self._fractions), "ranks": list(self._ranks),
                "euclidean_steps": self._euclidean_steps, "metric": metric.cpu() if metric is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self._retain.load_state_dict(state["retain"])
        self._fractions, self._ranks = list(state["fractions"]), list(state["ranks"])
        self._euclidean_steps = state["euclidean_steps"]
        metric = state["metric"]
        self._loaded_metric = metric.to(self._params[0].device) if metric is not None else None
        self._optimizer, self._step = None, None

    def summary(self) -> dict[str, float]:
        if not self._ranks:
            return {}
        out = {"gu_projection.removed_fraction": sum(self._fractions) / len(self._fractions),
               "gu_projection.rank": sum(self._ranks) / len(self._ranks)}
        if self.metric == "adam":
            out["gu_projection.euclidean_steps"] = float(self._euclidean_steps)
        return out
