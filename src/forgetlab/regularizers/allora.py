"""`allora`: LoRA without dropout and without scaling, with a norm-adaptive learning rate.

Reference: Huang & Balestriero, "ALLoRA: Adaptive Learning Rate Mitigates LoRA Fatal Flaws",
arXiv:2410.09692, 2024. What follows the paper: W = W0 + B A with alpha / r = 1 (scaling-free) and
no dropout on the adapter input, B = 0 and A random at the start (as `lora`), and each LoRA
parameter's learning rate scaled by a coefficient inversely proportional to its l2 norm, so small
factors (B, which starts at 0) move fast and large ones slowly, with a bounded coefficient at 0.

The equation implemented, for every row theta_i of every LoRA weight (`granularity: row`, the
default: each row of lora_A.weight (r x in) and of lora_B.weight (out x r), torch layout):

    f_i(t)  = 1 / sqrt( ||theta_i(t)||_2^2 + 1 / eta^2 )
    lr_i(t) = lr_sched(t) * f_i(t)

where lr_sched(t) is the lr the optimizer's group has at step t (the loop's schedule, or swa's
lr) and theta_i(t) the row before step t's update. f_i <= eta, with f_i = eta at theta_i = 0 (every
row of B at step 0), and f_i ~ 1 / ||theta_i|| once ||theta_i|| >> 1 / eta. `granularity: column`
uses the columns instead, `tensor` the whole matrix (one norm per lora_A / lora_B tensor).

Caveat, stated plainly: the paper's text could not be consulted when this was written (only its
abstract: "scaling the per sample and per parameter gradients with a coefficient inversely
proportional to parameters' l2 norm"). The form 1/sqrt(||theta||^2 + 1/eta^2) and the per-row
granularity follow the issue's reading of the paper; whether eta is the base learning rate itself
(no new hyper-parameter) or a separate bound, and whether the rows are those of the paper's A
(d x r) / B (r x k) or of peft's transposed layout, are unverified. `eta` and `granularity` make
each reading a config choice; check them against the paper before citing the numbers.

Implementation. The rows of one tensor cannot have their own optimizer lr, so the rule is applied
to the optimizer's update: a step pre-hook on the optimizer snapshots the LoRA weights theta(t)
and computes f from them; a step post-hook replaces each weight by

    theta(t) + f * (theta_optimizer(t+1) - theta(t))

which equals running AdamW with lr_i = lr_sched(t) * f_i for each row (AdamW's step, decoupled
weight decay included, is linear in its lr; its moment estimates do not depend on it). The hooks
are registered on the first `before_step` and removed at `finalize`; they run inside
optimizer.step(), before the scheduler and before any after_step (e.g. swa's snapshot). Groups
and their lrs are left as they are. `summary` logs the min / mean / max of the factors of the
last step. Everything else (peft wrapping, merge at finalize, summary of the low-rank update,
exclusions) is `lora`'s (forgetlab.regularizers.lora).

Deliberate differences: none intended beyond the caveat above. The previous version of this file
used min(max_factor, 1 / (||theta|| + eps)) per tensor; `granularity: tensor` with eta = max_factor
is its smooth counterpart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from forgetlab.params import require_number
from forgetlab.regularizers import REGULARIZERS
from forgetlab.regularizers.lora import LoraBase, check_lora_params, lora_parameters

GRANULARITIES = ("row", "column", "tensor")


def allora_factor(param: torch.Tensor, eta: float, granularity: str = "row") -> torch.Tensor:
    """f = 1 / sqrt(||theta||^2 + 1/eta^2) per row / column / tensor, broadcastable to `param`."""
    p = param.detach().float()
    if granularity == "row":
        sq = p.pow(2).sum(dim=1, keepdim=True)
    elif granularity == "column":
        sq = p.pow(2).sum(dim=0, keepdim=True)
    else:
        sq = p.pow(2).sum().reshape(1, 1)
    return torch.rsqrt(sq + 1.0 / eta**2)


@REGULARIZERS.register("allora")
@dataclass
class Allora(LoraBase):
    rank: int = 8
    target_modules: list = field(default_factory=lambda: ["q_proj", "v_proj"])
    eta: float = 10.0
    granularity: str = "row"

    def __post_init__(self):
        check_lora_params("allora", self.rank, self.target_modules)
        require_number("allora", "eta", self.eta, strict=True)
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"allora.granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        self._params: list[torch.nn.Parameter] = []
        self._before: list[torch.Tensor] = []
        self._factors: list[torch.Tensor] = []
        self._handles: list = []
        self._stats_f: dict[str, float] = {}

    def lora_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.rank,  # scaling alpha / r = 1
            lora_dropout=0.0,
            target_modules=list(self.target_modules),
            task_type="CAUSAL_LM",
        )

    def setup(self, model, ctx=None):
        model = super().setup(model, ctx)
        self._params = lora_parameters(model)
        return model

    # -- the rule, inside optimizer.step() ----------------------------------------------------

    @torch.no_grad()
    def _pre(self, optimizer, args, kwargs) -> None:
        self._before = [p.detach().clone() for p in self._params]
        self._factors = [allora_factor(p, self.eta, self.granularity) for p in self._params]

    @torch.no_grad()
    def _post(self, optimizer, args, kwargs) -> None:
        for p, before, f in zip(self._params, self._before, self._factors):
            p.copy_((before.float() + f * (p.float() - before.float())).to(p.dtype))
        flat = torch.cat([f.flatten() for f in self._factors]) if self._factors else None
        if flat is not None and flat.numel():
            self._stats_f = {"lr_factor_min": flat.min().item(), "lr_factor_mean": flat.mean().item(),
                             "lr_factor_max": flat.max().item()}
        self._before = []

    def before_step(self, model, step: int, optimizer) -> None:
        if not self._handles:
            self._handles = [optimizer.register_step_pre_hook(self._pre), optimizer.register_step_post_hook(self._post)]

    def finalize(self, model):
        for h in self._handles:
            h.remove()
        self._handles, self._before, self._factors = [], [], []
        return super().finalize(model)

    def state_dict(self) -> dict:  # the factors are recomputed from the weights at each step
        return {"factors": dict(self._stats_f)}

    def load_state_dict(self, state: dict) -> None:
        stats = state.get("factors", {})
        self._stats_f = dict(stats) if isinstance(stats, dict) else {}

    def summary(self) -> dict[str, float]:
        return {**super().summary(), **self._stats_f}
