"""`pdu`: primal-dual unlearning (Entesari et al., "Constrained Entropic Unlearning: A Primal-Dual
Framework for Large Language Models", NeurIPS 2025).

Unlearning as a constrained problem, solved by alternating one primal (optimizer) step on the
Lagrangian with one projected dual-ascent step on its multiplier:

    min_theta  L_fgt(theta)   s.t.   NLL_retain(theta) <= eps

    L_fgt    = E_forget[ (1/|y|) * sum_{t in y} ( max_k z_t,k - (1/V) * sum_k z_t,k )^2 ]
    L(theta) = L_fgt(theta) + lambda * (NLL_retain(theta) - eps)        (the primal loss; lambda fixed)
    lambda  <- max(0, lambda + dual_lr * (NLL_retain - eps))            (after each optimizer step)

L_fgt is the paper's logit-margin flattening loss in the form its formula gives: z_t are the
next-token logits at the supervised forget positions t (those predicting an answer token; prompt
and padding excluded), the margin of the largest logit over the mean logit is squared, averaged
over the answer tokens of each row, then over rows (the authors' public code instead pools all
answer positions of the batch, which weights long answers more; the two agree for equal lengths). It is zero exactly when all logits at a
position are equal (a uniform next-token distribution), uses no softmax, and its gradient does not
vanish near uniformity. (Gradient through the max: the subgradient at the arg-max logit.)

NLL_retain is the mean per-token NLL of the retain batch; the value used in the dual step is the
one measured in that step's loss (the mean over its micro-batches), before the step. eps is
`epsilon` when `relative` is false, else (1 + epsilon) * NLL_retain(target), the paper's suggested
threshold, measured once in `setup` over one pass of the run's own retain loader
(TrainContext.retain), without gradients and in training mode (the mode the constraint is
evaluated in). lambda starts at `lambda_init`; no dual step is taken in the first `warmup_steps`
optimizer steps (the paper's warm start). lambda is logged every step as `pdu_lambda` (the value
used in that step's loss), and its final value and eps once, in `summary`.

Scale: L_fgt is a squared logit margin, O(10-100) for a trained model, while NLL_retain - eps is
O(0.1-1), so lambda must grow to tens before the constraint binds; dual_lr (default 10) sets how
fast it gets there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from forgetlab.losses import forward, nll
from forgetlab.qa import IGNORE
from forgetlab.unlearning import METHODS, Method


def logit_margin_flattening(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """E_rows[ mean over answer positions of (max_k z_k - mean_k z_k)^2 ] of next-token logits."""
    mask = (labels[:, 1:] != IGNORE).float()
    z = logits[:, :-1].float()
    margin = (z.max(-1).values - z.mean(-1)).pow(2)
    return ((margin * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


@METHODS.register("pdu")
@dataclass
class PDU(Method):
    epsilon: float = 0.1
    relative: bool = True
    lambda_init: float = 1.0
    dual_lr: float = 10.0
    warmup_steps: int = 0
    uses_retain = True
    lam: float = field(default=0.0, init=False)  # the dual variable lambda
    eps: float | None = field(default=None, init=False)  # the threshold in use
    _retain_sum: float = field(default=0.0, init=False, repr=False)
    _retain_n: int = field(default=0, init=False, repr=False)

    def __post_init__(self):
        if not self.epsilon >= 0:
            raise ValueError(f"pdu.epsilon must be >= 0, got {self.epsilon}")
        if not self.lambda_init >= 0:
            raise ValueError(f"pdu.lambda_init must be >= 0, got {self.lambda_init}")
        if not self.dual_lr >= 0:
            raise ValueError(f"pdu.dual_lr must be >= 0, got {self.dual_lr}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"pdu.warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        self.lam = float(self.lambda_init)
        self.eps = None if self.relative else float(self.epsilon)

    def setup(self, model, ctx):
        self.lam, self._retain_sum, self._retain_n = float(self.lambda_init), 0.0, 0
        if self.relative:
            if ctx is None or ctx.retain is None:
                raise ValueError("pdu.relative: measuring the target's retain NLL needs TrainContext.retain")
            self.eps = (1.0 + self.epsilon) * retain_nll(model, ctx.retain)
        return model

    def loss(self, model, batch):
        if self.eps is None:
            raise RuntimeError("pdu: eps is set in setup when relative is true; run the method through the loop")
        forget = batch["forget"]
        flat = logit_margin_flattening(forward(model, forget).logits, forget["labels"])
        retain = nll(model, batch["retain"])
        self._retain_sum += retain.item()
        self._retain_n += 1
        loss = flat + self.lam * (retain - self.eps)
        return loss, {"pdu_forget": flat.item(), "retain_nll": retain.item(), "pdu_lambda": self.lam}

    def after_step(self, model, step: int, optimizer) -> None:
        if self._retain_n == 0:
            return
        violation = self._retain_sum / self._retain_n - self.eps
        self._retain_sum, self._retain_n = 0.0, 0
        if step >= self.warmup_steps:
            self.lam = max(0.0, self.lam + self.dual_lr * violation)

    def state_dict(self) -> dict:
        return {"lam": self.lam, "eps": self.eps, "retain_sum": self._retain_sum, "retain_n": self._retain_n}

    def load_state_dict(self, state: dict) -> None:
        self.lam, self.eps = state["lam"], state["eps"]
        self._retain_sum, self._retain_n = state["retain_sum"], state["retain_n"]

    def summary(self) -> dict[str, float]:
        return {"pdu_lambda_final": self.lam, "pdu_epsilon": float(self.eps) if self.eps is not None else float("nan")}


@torch.no_grad()
def retain_nll(model, loader) -> float:
    """Token-weighted mean NLL over one pass (len(loader) batches) of a loader, in training mode."""
    was_training = model.training
    model.train()
    total, tokens = 0.0, 0
    try:
        batches = iter(loader)
        for _ in range(len(loader)):
            b = next(batches)
            n = int((b["labels"][:, 1:] != IGNORE).sum())
            total += nll(model, b).item() * n
            tokens += n
    finally:
        model.train(was_training)
    return total / max(1, tokens)
