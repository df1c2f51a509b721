"""`grad_diff`: gradient difference, ascent on forget and descent on retain (Liu et al., "Continual
Learning and Private Unlearning", CoLLAs 2022; TOFU's GradDiff / KL baselines; open-unlearning's
GradDiff trainer and GradDiff.yaml: gamma 1, alpha 1, retain_loss_type NLL, the defaults here).

    L(theta) = - gamma * NLL_forget(theta) + alpha * R(theta)
    R = NLL_retain(theta)                                   (retain_loss: nll)
    R = KL(pi_ref(.|retain) || pi_theta(.|retain))           (retain_loss: kl, pi_ref = frozen target)

NLL is the mean next-token NLL over all supervised tokens of the batch (pooled, as HF's loss).
The KL is that of the output distributions, averaged over
    kl_tokens "all"     every position of the padded retain batch, prompt and padding included (the
                        reference: open-unlearning's compute_kl_divergence, batchmean over the
                        flattened positions), the default;
    kl_tokens "answer"  only the supervised next-token positions (forgetlab's earlier choice).
"""

from dataclasses import dataclass

from forgetlab.losses import kl_to_reference, kl_to_reference_all_positions, nll
from forgetlab.params import require_choice, require_number
from forgetlab.unlearning import METHODS, Method


@METHODS.register("grad_diff")
@dataclass
class GradDiff(Method):
    gamma: float = 1.0  # forget weight
    alpha: float = 1.0  # retain weight
    retain_loss: str = "nll"
    kl_tokens: str = "all"
    uses_retain = True

    def __post_init__(self):
        require_number("grad_diff", "gamma", self.gamma)
        require_number("grad_diff", "alpha", self.alpha)
        require_choice("grad_diff", "retain_loss", self.retain_loss, ("nll", "kl"))
        require_choice("grad_diff", "kl_tokens", self.kl_tokens, ("all", "answer"))

    @property
    def needs_reference(self) -> bool:
        return self.retain_loss == "kl"

    def loss(self, model, batch):
        forget_nll = nll(model, batch["forget"])
        if self.retain_loss == "kl":
            kl = kl_to_reference_all_positions if self.kl_tokens == "all" else kl_to_reference
            retain = kl(model, self.reference, batch["retain"])
        else:
            retain = nll(model, batch["retain"])
        loss = -self.gamma * forget_nll + self.alpha * retain
        return loss, {"forget_nll": forget_nll.item(), "retain_loss": retain.item()}
