"""`relabel`: random-label forgetting, fine-tuning the forget questions on wrong answers
(as studied in "Unforgettable Generalization in Language Models", Zhang et al., COLM 2024).

    L(theta) = NLL_perturbed(theta) + alpha * NLL_retain(theta)

NLL_perturbed is the mean per-token negative log-likelihood of the "perturbed" view: each
forget question paired with one of its own perturbed (wrong) answers (a fixed, seeded draw per
row), answer tokens only. With alpha = 0 (the default) no retain data is used at all:
`uses_retain` is then False and the recipe passes retain = None.
"""

from dataclasses import dataclass

import torch

from forgetlab.losses import nll
from forgetlab.unlearning import METHODS, Method


@METHODS.register("relabel")
@dataclass
class Relabel(Method):
    alpha: float = 0.0
    forget_views = ("perturbed",)

    def __post_init__(self):
        if not self.alpha >= 0:
            raise ValueError(f"relabel.alpha must be >= 0, got {self.alpha}")

    @property
    def uses_retain(self) -> bool:
        return self.alpha > 0

    def loss(self, model, batch):
        wrong = nll(model, batch["perturbed"])
        retain = nll(model, batch["retain"]) if self.alpha else torch.zeros(())
        return wrong + self.alpha * retain, {"perturbed_nll": wrong.item(), "retain_nll": retain.item()}
