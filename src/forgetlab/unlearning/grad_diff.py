"""`grad_diff`: gradient difference, ascent on forget and descent on retain.

    L(theta) = - gamma * NLL_forget(theta) + alpha * R(theta)
    R = NLL_retain(theta)                                   (retain_loss: nll)
    R = KL(pi_ref(.|retain) || pi_theta(.|retain))           (retain_loss: kl, pi_ref = frozen target)

(Liu et al., "Continual Learning and Private Unlearning", CoLLAs 2022; TOFU's GradDiff / KL baselines.)
"""

from dataclasses import dataclass

from forgetlab.losses import kl_to_reference, nll
from forgetlab.unlearning import METHODS, Method


@METHODS.register("grad_diff")
@dataclass
class GradDiff(Method):
    gamma: float = 1.0
    alpha: float = 1.0
    retain_loss: str = "nll"
    uses_retain = True

    def __post_init__(self):
        if self.retain_loss not in ("nll", "kl"):
            raise ValueError(f"grad_diff.retain_loss must be 'nll' or 'kl', got {self.retain_loss!r}")

    @property
    def needs_reference(self) -> bool:
        return self.retain_loss == "kl"

    def loss(self, model, batch):
        forget_nll = nll(model, batch["forget"])
        if self.retain_loss == "kl":
            retain = kl_to_reference(model, self.reference, batch["retain"])
        else:
            retain = nll(model, batch["retain"])
        loss = -self.gamma * forget_nll + self.alpha * retain
        return loss, {"forget_nll": forget_nll.item(), "retain_loss": retain.item()}
