"""`allora`: LoRA without dropout and without scaling, with a norm-adaptive learning rate.

Mechanism (Huang & Balestriero, "ALLoRA: Adaptive Learning Rate Mitigates LoRA Fatal Flaws",
2024): W = W0 + B A (alpha / r = 1, no dropout on the adapter input; B = 0, A random at the
start, as in `lora`), and each LoRA parameter's step is scaled by a coefficient inversely
proportional to its l2 norm, so that small factors (B, which starts at 0) move fast and large
ones slowly. The exact rule implemented, per LoRA parameter tensor theta_i (each lora_A and each
lora_B weight matrix; ||.||_2 is the l2 norm of all its entries):

    f_i(t)   = min(max_factor, 1 / (||theta_i(t)||_2 + eps))
    lr_i(t)  = lr_sched(t) * f_i(t)

where lr_sched(t) = lr * lambda(t) is the loop's warmup+cosine lr for step t and theta_i(t) the
parameter before step t's update. At theta_i = 0 (every B at step 0) f_i = min(max_factor, 1/eps),
so max_factor bounds the first steps of B.

Implementation: `param_groups` puts every LoRA parameter in its own group and stores f_i(0) in
the group's `allora_factor` key, leaving the group's `lr` alone, so LambdaLR's base_lrs stay the
plain lr. The factor is applied to a group's freshly scheduled lr only: for step 0 by a one-shot
optimizer step pre-hook (the first hook that sees the optimizer, `after_step`, comes after step
0), and for step t+1 by `after_step(t)`, which the loop calls after LambdaLR has overwritten
every group's lr with base_lr * lambda(t+1); the factor therefore never compounds. Each group
keeps `allora_scheduled_lr` (lr_sched) next to `lr` (= lr_sched * f_i) for inspection.
Everything else (peft wrapping, merge at finalize, summary of the low-rank update, exclusions)
is `lora`'s (forgetlab.regularizers.lora).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from forgetlab.regularizers import REGULARIZERS
from forgetlab.regularizers.lora import LoraBase, check_lora_params, lora_parameters

FACTOR = "allora_factor"
SCHEDULED = "allora_scheduled_lr"


@REGULARIZERS.register("allora")
@dataclass
class Allora(LoraBase):
    rank: int = 8
    target_modules: list = field(default_factory=lambda: ["q_proj", "v_proj"])
    eps: float = 1e-3
    max_factor: float = 10.0

    def __post_init__(self):
        check_lora_params("allora", self.rank, self.target_modules)
        if not self.eps > 0:
            raise ValueError(f"allora.eps must be > 0, got {self.eps}")
        if not self.max_factor > 0:
            raise ValueError(f"allora.max_factor must be > 0, got {self.max_factor}")
        self._lora_ids: set[int] = set()
        self._hook = None
        self._factors: list[float] = []

    def lora_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.rank,  # scaling alpha / r = 1
            lora_dropout=0.0,
            target_modules=list(self.target_modules),
            task_type="CAUSAL_LM",
        )

    def factor(self, param: torch.Tensor) -> float:
        return min(self.max_factor, 1.0 / (param.detach().norm().item() + self.eps))

    def param_groups(self, model, groups: list[dict]) -> list[dict]:
        params = lora_parameters(model)
        self._lora_ids = {id(p) for p in params}
        out, own = [], []
        for group in groups:
            options = {k: v for k, v in group.items() if k != "params"}
            rest = [p for p in group["params"] if id(p) not in self._lora_ids]
            if rest:
                out.append({**options, "params": rest})
            own += [{**options, "params": [p], FACTOR: self.factor(p)}
                    for p in group["params"] if id(p) in self._lora_ids]
        self._factors = [g[FACTOR] for g in own]
        self._remove_hook()
        self._hook = register_optimizer_step_pre_hook(self._first_step)
        return out + own

    def _mine(self, optimizer) -> list[dict]:
        """This regularizer's groups (one LoRA parameter each, with a factor) of an optimizer."""
        return [
            g for g in optimizer.param_groups
            if FACTOR in g and len(g["params"]) == 1 and id(g["params"][0]) in self._lora_ids
        ]

    def _first_step(self, optimizer, args, kwargs) -> None:
        """Before step 0: multiply the scheduled lr by f_i(0), stored by param_groups; once."""
        mine = self._mine(optimizer)
        if not mine:
            return  # another optimizer of the process
        self._remove_hook()
        for g in mine:
            g[SCHEDULED] = g["lr"]
            g["lr"] = g[SCHEDULED] * g[FACTOR]

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def after_step(self, model, step: int, optimizer) -> None:
        self._remove_hook()  # step 0 is done
        mine = self._mine(optimizer)
        for g in mine:
            g[SCHEDULED] = g["lr"]  # just set by the scheduler: base_lr * lambda(step + 1)
            g[FACTOR] = self.factor(g["params"][0])
            g["lr"] = g[SCHEDULED] * g[FACTOR]
        self._factors = [g[FACTOR] for g in mine]

    def finalize(self, model):
        self._remove_hook()
        self._lora_ids = set()
        return super().finalize(model)

    def summary(self) -> dict[str, float]:
        out = super().summary()
        if self._factors:
            out["lr_factor_min"] = min(self._factors)
            out["lr_factor_max"] = max(self._factors)
            out["lr_factor_mean"] = sum(self._factors) / len(self._factors)
        return out
