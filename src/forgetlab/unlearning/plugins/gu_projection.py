"""`gu_projection`: project each update off the retain-gradient subspace (GU).

Geometric-disentanglement Unlearning (Zhou et al., "Geometric-disentanglement Unlearning",
arXiv:2511.17100, 2025): to first order a step d changes the retain loss by <grad l_r, d>, so the
retain loss is locally unchanged iff d is orthogonal to the retain gradients. GU keeps only the
component of the unlearning update normal to that subspace.

Each optimizer step (in before_step, after the loop's gradient clipping), with g the method's
gradient over all trainable parameters, flattened into one vector, and r_1..r_k the gradients of
the retain NLL on k fresh retain batches (drawn from TrainContext.retain, an iterator kept across
steps, so successive steps see different batches):

    Q = [q_1 .. q_k']  an orthonormal basis of span{r_1..r_k}   (Gram-Schmidt, two passes;
                       a direction whose residual is below RANK_TOL times its norm is dropped, k' <= k)
    g <- g - Q Q^T g   so that <r_j, g> = 0 for every j

and the projected g is written back into p.grad. The retain gradients come from
torch.autograd.grad, so the method's gradient in p.grad is never overwritten or accumulated into.
The projection uses the Euclidean metric (the paper also considers an optimizer-induced one).
It projects the whole gradient of the method's loss: for a method with its own retain term
(npo's alpha, grad_diff) that term's component along span{r_j} is removed too.

summary(): `gu_projection.removed_fraction`, the mean over steps of ||Q Q^T g|| / ||g||, and
`gu_projection.rank`, the mean k'.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from forgetlab.losses import nll
from forgetlab.unlearning.plugins import PLUGINS, Plugin

RANK_TOL = 1e-4  # relative residual below which a retain gradient adds no new direction


def flatten(tensors, params) -> torch.Tensor:
    """One vector from per-parameter tensors (None counts as zeros)."""
    return torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1) for t, p in zip(tensors, params)])


def orthonormal_basis(vectors: list[torch.Tensor], tol: float = RANK_TOL) -> list[torch.Tensor]:
    """Gram-Schmidt with re-orthogonalisation; directions (nearly) in the span so far are dropped."""
    basis: list[torch.Tensor] = []
    for v in vectors:
        norm = v.norm()
        if not torch.isfinite(norm) or norm == 0:
            continue
        u = v.clone()
        for _ in range(2):
            for q in basis:
                u -= torch.dot(q, u) * q
        residual = u.norm()
        if residual > tol * norm:
            basis.append(u / residual)
    return basis


def project_out(g: torch.Tensor, basis: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(g - Q Q^T g, Q Q^T g) for the orthonormal columns Q of `basis`."""
    removed = torch.zeros_like(g)
    for q in basis:
        removed += torch.dot(q, g) * q
    return g - removed, removed


@PLUGINS.register("gu_projection")
@dataclass
class GUProjection(Plugin):
    name = "gu_projection"
    needs_retain = True
    k: int = 2
    _params: list = field(default_factory=list, init=False, repr=False)
    _retain: object = field(default=None, init=False, repr=False)
    _fractions: list = field(default_factory=list, init=False, repr=False)
    _ranks: list = field(default_factory=list, init=False, repr=False)

    def __post_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"gu_projection.k must be an integer >= 1, got {self.k!r}")

    def setup(self, model, ctx):
        if ctx.retain is None:
            raise ValueError("gu_projection needs retain batches (TrainContext.retain); run it through the unlearn recipe")
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._retain = iter(ctx.retain)
        self._fractions, self._ranks = [], []
        return model

    def retain_gradients(self, model) -> list[torch.Tensor]:
        """k flattened retain-NLL gradients on the next k retain batches; p.grad is left untouched."""
        out = []
        for _ in range(self.k):
            loss = nll(model, next(self._retain))
            grads = torch.autograd.grad(loss, self._params, allow_unused=True)
            out.append(flatten(grads, self._params).detach())
        return out

    def before_step(self, model, step, optimizer):
        params = self._params
        g = flatten([p.grad for p in params], params)
        norm = g.norm()
        basis = orthonormal_basis(self.retain_gradients(model))
        self._ranks.append(len(basis))
        if norm == 0 or not torch.isfinite(norm):
            self._fractions.append(0.0)
            return
        projected, removed = project_out(g, basis)
        self._fractions.append(float(removed.norm() / norm))
        offset = 0
        with torch.no_grad():
            for p in params:
                n = p.numel()
                new = projected[offset : offset + n].view_as(p)
                if p.grad is None:
                    p.grad = new.clone()
                else:
                    p.grad.copy_(new)
                offset += n

    def state_dict(self) -> dict:  # the position of its own retain iterator, and the statistics
        return {"retain": self._retain.state_dict(), "fractions": list(self._fractions), "ranks": list(self._ranks)}

    def load_state_dict(self, state: dict) -> None:
        self._retain.load_state_dict(state["retain"])
        self._fractions, self._ranks = list(state["fractions"]), list(state["ranks"])

    def summary(self) -> dict[str, float]:
        if not self._ranks:
            return {}
        return {"gu_projection.removed_fraction": sum(self._fractions) / len(self._fractions),
                "gu_projection.rank": sum(self._ranks) / len(self._ranks)}
