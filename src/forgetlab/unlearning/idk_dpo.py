"""`idk_dpo`: Direct Preference Optimization towards a refusal (Rafailov et al., "Direct
Preference Optimization: Your Language Model is Secretly a Reward Model", NeurIPS 2023; as TOFU's
IdkDPO baseline, Maini et al. 2024).

    m(x)     = [log pi_theta(y_w|x) - log pi_ref(y_w|x)] - [log pi_theta(y_l|x) - log pi_ref(y_l|x)]
    L(theta) = - E_forget[ log sigmoid(beta * m(x)) ] + alpha * NLL_retain(theta)

with y_w the preferred answer, a refusal from idk.txt (the "idk" view), y_l the dispreferred one,
the forget answer (the "forget" view), log pi(y|x) the summed answer-token log-probability and
pi_ref the frozen pre-unlearning model. This is the standard DPO loss (as in TOFU's original
code); open-unlearning's IdkDPO multiplies the preference term by 2/beta, a constant rescaling
that matters here only through its weight against alpha * NLL_retain (20x at beta = 0.1).
Its gradient is -beta * sigmoid(-beta * m) * (d log pi(y_w|x) - d log pi(y_l|x)): descent
raises the refusal's likelihood and lowers the forget answer's, relative to the reference.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from forgetlab.losses import nll, sequence_logprob
from forgetlab.unlearning import METHODS, Method


@METHODS.register("idk_dpo")
@dataclass
class IdkDPO(Method):
    beta: float = 0.1
    alpha: float = 1.0
    uses_retain = True
    forget_views = ("idk",)

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"idk_dpo.beta must be > 0, got {self.beta}")
        if not self.alpha >= 0:
            raise ValueError(f"idk_dpo.alpha must be >= 0, got {self.alpha}")

    @property
    def needs_reference(self) -> bool:
        return True

    def loss(self, model, batch):
        win, lose = sequence_logprob(model, batch["idk"]), sequence_logprob(model, batch["forget"])
        with torch.no_grad():
            ref_win = sequence_logprob(self.reference, batch["idk"])
            ref_lose = sequence_logprob(self.reference, batch["forget"])
        margin = (win - ref_win) - (lose - ref_lose)
        dpo = -F.logsigmoid(self.beta * margin).mean()
        retain = nll(model, batch["retain"]) if self.alpha else torch.zeros(())
        return dpo + self.alpha * retain, {"dpo": dpo.item(), "dpo_margin": margin.mean().item(),
                                           "retain_nll": retain.item()}
