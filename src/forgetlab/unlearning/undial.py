"""`undial`: self-distillation with adjusted logits (Dong et al., "UNDIAL: Self-Distillation with
Adjusted Logits for Robust Unlearning in Large Language Models", 2024).

    q_t     = softmax( z_ref,t - gamma * onehot(y_t) )      (frozen reference logits, no gradient)
    L(theta) = (1/|T|) * sum_{t in T} [ - sum_k q_t,k * log p_theta,k(. | y_<t, x) ]

over the supervised forget positions T: the model is distilled towards the reference's
next-token distribution with the true token's logit lowered by gamma.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from forgetlab.losses import forward
from forgetlab.qa import IGNORE
from forgetlab.unlearning import METHODS, Method


@METHODS.register("undial")
@dataclass
class UNDIAL(Method):
    gamma: float = 10.0

    def __post_init__(self):
        if not self.gamma >= 0:
            raise ValueError(f"undial.gamma must be >= 0, got {self.gamma}")

    @property
    def needs_reference(self) -> bool:
        return True

    def loss(self, model, batch):
        forget = batch["forget"]
        targets = forget["labels"][:, 1:]
        mask = targets != IGNORE
        logits = forward(model, forget).logits[:, :-1][mask].float()
        with torch.no_grad():
            ref = forward(self.reference, forget).logits[:, :-1][mask].float()
            ref = ref - self.gamma * F.one_hot(targets[mask], ref.size(-1)).float()
            q = ref.softmax(-1)
        loss = -(q * logits.log_softmax(-1)).sum(-1).mean()
        return loss, {"undial_ce": loss.item()}
