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

Implementation: `param_groups` puts every LoRA parameter in its own group, leaving its `lr`
alone, so LambdaLR's base_lrs stay the plain lr. `before_step` multiplies each of these groups'
scheduled lr by f_i just before the optimizer step; the scheduler step that follows overwrites
every lr with base_lr * lambda(t+1), so the factor never compounds. Each group keeps
`allora_scheduled_lr` (lr_sched) and `allora_factor` (f_i) next to `lr` for inspection.
Everything else (peft wrapping, merge at finalize, summary of the low-rank update, exclusions)
is `lora`'s (forgetlab.regularizers.lora).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

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
        """Each LoRA parameter in a group of its own (keeping its group's options), the rest as before."""
        lora_ids = {id(p) for p in lora_parameters(model)}
        out, own = [], []
        for group in groups:
            options = {k: v for k, v in group.items() if k != "params"}
            rest = [p for p in group["params"] if id(p) not in lora_ids]
            if rest:
                out.append({**options, "params": rest})
            own += [{**options, "params": [p], FACTOR: 1.0} for p in group["params"] if id(p) in lora_ids]
        return out + own

    @torch.no_grad()
    def before_step(self, model, step: int, optimizer) -> None:
        mine = [g for g in optimizer.param_groups if FACTOR in g]
        for g in mine:
            g[SCHEDULED] = g["lr"]  # set by the scheduler: base_lr * lambda(step)
            g[FACTOR] = self.factor(g["params"][0])
            g["lr"] = g[SCHEDULED] * g[FACTOR]
        self._factors = [g[FACTOR] for g in mine]

    def state_dict(self) -> dict:  # the factors live in the optimizer's param groups; these feed summary
        return {"factors": list(self._factors)}

    def load_state_dict(self, state: dict) -> None:
        self._factors = list(state["factors"])

    def summary(self) -> dict[str, float]:
        out = super().summary()
        if self._factors:
            out["lr_factor_min"] = min(self._factors)
            out["lr_factor_max"] = max(self._factors)
            out["lr_factor_mean"] = sum(self._factors) / len(self._factors)
        return out
