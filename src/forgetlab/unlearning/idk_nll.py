"""`idk_nll`: learn to refuse on the forget questions (TOFU's IdkNLL baseline; Maini et al.,
"TOFU: A Task of Fictitious Unlearning for LLMs", 2024). open-unlearning has no such trainer; the
reference is TOFU's paper and code.

    reduction "sum" (the paper):       L = NLL_idk(theta) + alpha * NLL_retain(theta)
    reduction "pooled" (TOFU's code):  L = (S_idk + alpha * S_retain) / (N_idk + N_retain)

NLL_idk is the mean per-token negative log-likelihood of the "idk" view (each forget question
paired with a refusal from idk.txt, a fixed seeded draw per row; answer tokens only), pooled over
the batch's tokens, and NLL_retain likewise on the retain batch. S and N are the summed NLL and the
number of supervised tokens of each batch: TOFU's code concatenates the refusal and retain batches
into one forward pass and takes its mean token loss, which weights the two sets by their token
counts (at alpha = 1 it is exactly that). The original forget answers are never used: forgetting
comes only from overwriting them.
"""

from dataclasses import dataclass

import torch

from forgetlab.losses import forward, nll
from forgetlab.params import require_choice, require_number
from forgetlab.qa import IGNORE, token_logprobs
from forgetlab.unlearning import METHODS, Method


def summed_nll(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the supervised tokens' NLL, their number) over a batch."""
    logp, mask = token_logprobs(forward(model, batch).logits, batch["labels"])
    return -logp.sum(), mask.sum()


@METHODS.register("idk_nll")
@dataclass
class IdkNLL(Method):
    alpha: float = 1.0
    reduction: str = "sum"
    uses_retain = True
    forget_views = ("idk",)

    def __post_init__(self):
        require_number("idk_nll", "alpha", self.alpha)
        require_choice("idk_nll", "reduction", self.reduction, ("sum", "pooled"))

    def loss(self, model, batch):
        if self.reduction == "pooled":
            s_idk, n_idk = summed_nll(model, batch["idk"])
            if self.alpha:
                s_retain, n_retain = summed_nll(model, batch["retain"])
            else:
                s_retain, n_retain = torch.zeros(()), (batch["retain"]["labels"][:, 1:] != IGNORE).sum()
            loss = (s_idk + self.alpha * s_retain) / (n_idk + n_retain).clamp(min=1)
            return loss, {"idk_nll": (s_idk / n_idk.clamp(min=1)).item(),
                          "retain_nll": (s_retain / n_retain.clamp(min=1)).item()}
        idk = nll(model, batch["idk"])
        retain = nll(model, batch["retain"]) if self.alpha else torch.zeros(())
        return idk + self.alpha * retain, {"idk_nll": idk.item(), "retain_nll": retain.item()}
