"""`weight_decay`: decoupled weight decay through AdamW on the weight matrices only.

Mechanism (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019): the decay is
applied to the weights directly rather than added to the gradient, so with learning rate lr_t

    w <- w * (1 - lr_t * coef) - lr_t * adam_update(g)

for every weight matrix (ndim >= 2), and with coef = 0 for norm weights and biases (ndim < 2) and,
if `exclude_embeddings`, for the token embedding (with tied embeddings `lm_head.weight` is the same
Parameter, so it is excluded too). The groups replace the loop's single group, so `coef` takes the
place of the stage's `weight_decay` setting; other keys of the incoming groups are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from forgetlab.regularizers import REGULARIZERS, Regularizer, base_model


@REGULARIZERS.register("weight_decay")
@dataclass
class WeightDecay(Regularizer):
    coef: float = 0.01
    exclude_embeddings: bool = False

    def __post_init__(self):
        if not self.coef >= 0.0:
            raise ValueError(f"weight_decay.coef must be >= 0, got {self.coef}")
        if not isinstance(self.exclude_embeddings, bool):
            raise ValueError(f"weight_decay.exclude_embeddings must be a bool, got {self.exclude_embeddings!r}")

    def _embeddings(self, model) -> set[int]:
        if not self.exclude_embeddings:
            return set()
        return {id(m.weight) for m in base_model(model).modules() if isinstance(m, torch.nn.Embedding)}

    def param_groups(self, model, groups: list[dict]) -> list[dict]:
        embeddings = self._embeddings(model)
        out, seen = [], set()
        for group in groups:
            decay, no_decay = [], []
            for p in group["params"]:
                if id(p) in seen:  # a Parameter (e.g. tied embeddings) goes to exactly one group
                    continue
                seen.add(id(p))
                (no_decay if p.ndim < 2 or id(p) in embeddings else decay).append(p)
            if decay:
                out.append({**group, "params": decay, "weight_decay": self.coef})
            if no_decay:
                out.append({**group, "params": no_decay, "weight_decay": 0.0})
        return out or groups

    def summary(self) -> dict[str, float]:
        return {"coef": float(self.coef)}
