"""`ce_u`: cross-entropy unlearning (Yang et al., "CE-U: Cross Entropy Unlearning", 2025; open-
unlearning's CEU trainer and CEU.yaml).

    q_t     = sg[ softmax( z_theta,t with z_theta,t[y_t] := -inf ) ]      (sg = stop-gradient)
    L(theta) = (1/|T|) * sum_{t in T} [ - sum_k q_t,k * log p_theta,k(. | y_<t, x) ] + alpha * NLL_retain

over T, the supervised forget positions of the whole batch (pooled) less the first `skip_first`
answer tokens of each sequence (the paper's footnote trick, open-unlearning's
ignore_first_n_answer_tokens = 1: the first answer token is often a formulaic word). The model is
pulled towards its own distribution with the true token removed; the gradient at a position is
p_theta - q, bounded (unlike ascent). The reference has no retain term: alpha = 0 by default, and
retain batches are then not loaded; alpha > 0 adds the pooled retain NLL.
"""

from dataclasses import dataclass

import torch

from forgetlab.losses import forward, nll
from forgetlab.params import require_int, require_number
from forgetlab.qa import IGNORE
from forgetlab.unlearning import METHODS, Method


def drop_first_answer_tokens(labels: torch.Tensor, n: int) -> torch.Tensor:
    """The labels with each row's first n supervised tokens set to IGNORE."""
    valid = labels != IGNORE
    return labels.masked_fill(valid & (valid.cumsum(-1) <= n), IGNORE)


@METHODS.register("ce_u")
@dataclass
class CEU(Method):
    alpha: float = 0.0
    skip_first: int = 1

    def __post_init__(self):
        require_number("ce_u", "alpha", self.alpha)
        require_int("ce_u", "skip_first", self.skip_first)

    @property
    def uses_retain(self) -> bool:
        return self.alpha > 0

    def loss(self, model, batch):
        forget = batch["forget"]
        targets = drop_first_answer_tokens(forget["labels"], self.skip_first)[:, 1:]
        mask = targets != IGNORE
        logits = forward(model, forget).logits[:, :-1][mask].float()
        with torch.no_grad():
            q = logits.scatter(-1, targets[mask].unsqueeze(-1), float("-inf")).softmax(-1)
        ce = -(q * logits.log_softmax(-1)).sum(-1)
        ce = ce.mean() if ce.numel() else logits.sum() * 0.0  # no position left: no forget signal
        retain = nll(model, batch["retain"]) if self.alpha else torch.zeros(())
        return ce + self.alpha * retain, {"ce_u_forget": ce.item(), "retain_nll": retain.item()}
