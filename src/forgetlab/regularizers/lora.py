"""`lora`: fine-tune only a low-rank additive update of chosen weight matrices.

Mechanism (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022): each
adapted matrix W0 (out x in) is frozen and replaced by W = W0 + (alpha / r) * B A, with
A (r x in) random and B (out x r) zero at the start, so training starts at W0; only A and B (and
nothing else) are trained, with dropout `dropout` on the adapter's input. The model is wrapped
with peft at `setup`; `finalize` merges B A into the weights (peft `merge_and_unload`) and
returns the plain transformers model, which is what gets saved, so later stages see an ordinary
checkpoint.

`summary` records that the fine-tuning signal lives in the low-rank subspace:
    trainable_params, trainable_fraction   LoRA parameters, and their share of all the wrapped
                                           model's parameters (adapters included)
    adapted_matrices                       how many weight matrices carry an adapter
    delta_rank_max                         max over adapted matrices of the numerical rank of
                                           dW = W_final - W0 (merged weights; <= rank)
    delta_rel_norm_mean                    mean over adapted matrices of ||dW||_F / ||W0||_F
The numerical rank counts singular values of dW above max(max(m, n) * eps32 * s_max,
eps32 * ||W_final||_F): the second term bounds the float32 rounding of the merge itself.

The helpers here (`LoraBase`, `lora_parameters`, `delta_stats`) are shared with `allora`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from forgetlab.regularizers import REGULARIZERS, Regularizer, base_model

# Regularizers that cannot share an entry with a LoRA-type one: another adapter on the same
# weights, or masks on weights that LoRA freezes and then overwrites with a dense merge.
EXCLUSIVE = ("lora", "allora", "sparsity")


def check_lora_params(kind: str, rank, target_modules) -> None:
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"{kind}.rank must be an integer >= 1, got {rank!r}")
    if (
        not isinstance(target_modules, (list, tuple))
        or not target_modules
        or not all(isinstance(t, str) and t for t in target_modules)
    ):
        raise ValueError(f"{kind}.target_modules must be a non-empty list of module names, got {target_modules!r}")


def adapted_modules(model) -> dict:
    """{name in the unwrapped model: LoRA layer} of a peft-wrapped model."""
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in base_model(model).named_modules() if isinstance(m, LoraLayer)}


def lora_parameters(model) -> list[torch.nn.Parameter]:
    """The trainable LoRA factors (every lora_A / lora_B weight) of a peft-wrapped model."""
    params = []
    for module in adapted_modules(model).values():
        for adapter in module.active_adapters:
            params += [module.lora_A[adapter].weight, module.lora_B[adapter].weight]
    return params


def numerical_rank(delta: torch.Tensor, merged: torch.Tensor) -> int:
    d = delta.detach().double().cpu()
    eps = torch.finfo(torch.float32).eps
    s = torch.linalg.svdvals(d)
    if s.numel() == 0 or s[0] == 0:
        return 0
    tol = max(max(d.shape) * eps * s[0].item(), eps * merged.detach().double().norm().item())
    return int((s > tol).sum())


def delta_stats(model, w0: dict[str, torch.Tensor]) -> dict[str, float]:
    """Rank and relative size of W_final - W0 for each snapshotted matrix of a (merged) model."""
    ranks, rel = [], []
    for name, before in w0.items():
        after = model.get_submodule(name).weight.detach().to("cpu", torch.float64)
        before = before.to(torch.float64)
        delta = after - before
        ranks.append(numerical_rank(delta, after))
        rel.append((delta.norm() / before.norm().clamp(min=1e-30)).item())
    if not ranks:
        return {}
    return {
        "adapted_matrices": float(len(ranks)),
        "delta_rank_max": float(max(ranks)),
        "delta_rel_norm_mean": sum(rel) / len(rel),
    }


class LoraBase(Regularizer):
    """Wrap with peft at setup, merge at finalize, report the low-rank update; the subclass
    gives the peft config (`lora_config`)."""

    order = 2  # finalize last: merge the adapters after e.g. swa has loaded its average into them
    _w0: dict | None = None
    _stats: dict | None = None

    def lora_config(self):
        raise NotImplementedError

    def setup(self, model, ctx=None):
        from peft import get_peft_model

        model = get_peft_model(model, self.lora_config())
        self._w0 = {
            name: module.get_base_layer().weight.detach().to("cpu", copy=True)
            for name, module in adapted_modules(model).items()
        }
        if not self._w0:
            raise ValueError(f"{self.name}.target_modules {self.target_modules} matched no module of the model")
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        self._stats = {"trainable_params": float(trainable), "trainable_fraction": trainable / total}
        return model

    def finalize(self, model):
        if not hasattr(model, "merge_and_unload"):
            return model
        merged = model.merge_and_unload()
        self._stats = {**(self._stats or {}), **delta_stats(merged, self._w0 or {})}
        self._w0 = None  # the copies are no longer needed
        return merged

    def summary(self) -> dict[str, float]:
        return dict(self._stats or {})

    def check(self, others) -> None:
        for other in others:
            if other.name in EXCLUSIVE or isinstance(other, LoraBase):
                raise ValueError(
                    f"{self.name} and {other.name} cannot be combined: "
                    + (
                        "sparsity masks the weights that LoRA freezes and overwrites with a dense merge"
                        if other.name == "sparsity"
                        else "only one low-rank adapter per entry"
                    )
                )


@REGULARIZERS.register("lora")
@dataclass
class Lora(LoraBase):
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list = field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self):
        check_lora_params("lora", self.rank, self.target_modules)
        if not self.alpha > 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def lora_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            task_type="CAUSAL_LM",
        )
