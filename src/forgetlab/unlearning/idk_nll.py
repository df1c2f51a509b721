"""`idk_nll`: learn to refuse on the forget questions (TOFU's IdkNLL baseline; Maini et al.,
"TOFU: A Task of Fictitious Unlearning for LLMs", 2024).

    L(theta) = NLL_idk(theta) + alpha * NLL_retain(theta)

NLL_idk is the mean per-token negative log-likelihood of the "idk" view: each forget question
paired with a refusal from idk.txt (a fixed, seeded draw per row), answer tokens only.
The original forget answers are never used: forgetting comes only from overwriting them.
"""

from dataclasses import dataclass

import torch

from forgetlab.losses import nll
from forgetlab.unlearning import METHODS, Method


@METHODS.register("idk_nll")
@dataclass
class IdkNLL(Method):
    alpha: float = 1.0
    uses_retain = True
    forget_views = ("idk",)

    def __post_init__(self):
        if not self.alpha >= 0:
            raise ValueError(f"idk_nll.alpha must be >= 0, got {self.alpha}")

    def loss(self, model, batch):
        idk = nll(model, batch["idk"])
        retain = nll(model, batch["retain"]) if self.alpha else torch.zeros(())
        return idk + self.alpha * retain, {"idk_nll": idk.item(), "retain_nll": retain.item()}
