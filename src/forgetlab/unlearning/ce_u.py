"""`ce_u`: cross-entropy unlearning (Yang et al., "CE-U: Cross Entropy Unlearning", 2025).

    q_t     = sg[ softmax( z_theta,t with z_theta,t[y_t] := -inf ) ]      (sg = stop-gradient)
    L(theta) = (1/|T|) * sum_{t in T} [ - sum_k q_t,k * log p_theta,k(. | y_<t, x) ] + alpha * NLL_retain

over the supervised forget positions T: the model is pulled towards its own distribution with
the true token removed; the gradient at a position is p_theta - q, bounded (unlike ascent).
"""

from dataclasses import dataclass

import torch

from forgetlab.losses import forward, nll
from forgetlab.qa import IGNORE
from forgetlab.unlearning import METHODS, Method


@METHODS.register("ce_u")
@dataclass
class CEU(Method):
    alpha: float = 0.0
    uses_retain = True

    def __post_init__(self):
        if not self.alpha >= 0:
            raise ValueError(f"ce_u.alpha must be >= 0, got {self.alpha}")

    def loss(self, model, batch):
        forget = batch["forget"]
        targets = forget["labels"][:, 1:]
        mask = targets != IGNORE
        logits = forward(model, forget).logits[:, :-1][mask].float()
        with torch.no_grad():
            q = logits.scatter(-1, targets[mask].unsqueeze(-1), float("-inf")).softmax(-1)
        ce = -(q * logits.log_softmax(-1)).sum(-1).mean()
        retain = nll(model, batch["retain"]) if self.alpha else torch.zeros(())
        return ce + self.alpha * retain, {"ce_u_forget": ce.item(), "retain_nll": retain.item()}
