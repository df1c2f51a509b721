"""`idk_dpo`: Direct Preference Optimization towards a refusal (Rafailov et al., "Direct
Preference Optimization: Your Language Model is Secretly a Reward Model", NeurIPS 2023; as TOFU's
IdkDPO baseline, Maini et al. 2024, and open-unlearning's DPO trainer with tofu/idk.yaml).

    m(x)     = [log pi_theta(y_w|x) - log pi_ref(y_w|x)] - [log pi_theta(y_l|x) - log pi_ref(y_l|x)]
    L(theta) = - gamma * (2/beta) * E_forget[ log sigmoid(beta * m(x)) ] + alpha * NLL_retain(theta)

with y_w the preferred answer, a refusal from idk.txt (the "idk" view), y_l the dispreferred one,
the forget answer (the "forget" view), log pi(y|x) the summed answer-token log-probability,
pi_ref the frozen pre-unlearning model, E_forget the batch mean and NLL_retain the pooled mean over
the retain batch's supervised tokens. The 2/beta factor and the defaults (beta 0.1, gamma 1,
alpha 1, NLL retain) are open-unlearning's DPO.yaml; `plain: true` drops the factor, giving the
standard DPO loss of Rafailov et al. (and TOFU's original code), i.e. a forget term 20x smaller
against alpha * NLL_retain at beta = 0.1.
Its gradient is -gamma * 2 * sigmoid(-beta * m) * (d log pi(y_w|x) - d log pi(y_l|x)) (beta times
less with `plain`): descent raises the refusal's likelihood and lowers the forget answer's,
relative to the reference.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from forgetlab.losses import nll, sequence_logprob
from forgetlab.params import require_number
from forgetlab.unlearning import METHODS, Method


@METHODS.register("idk_dpo")
@dataclass
class IdkDPO(Method):
    beta: float = 0.1
    alpha: float = 1.0  # retain weight
    gamma: float = 1.0  # forget (preference) weight
    plain: bool = False  # True: standard DPO, without open-unlearning's 2/beta factor
    uses_retain = True
    forget_views = ("idk",)
    needs_reference = True  # pi_ref

    def __post_init__(self):
        require_number("idk_dpo", "beta", self.beta, strict=True)
        require_number("idk_dpo", "alpha", self.alpha)
        require_number("idk_dpo", "gamma", self.gamma)
        if not isinstance(self.plain, bool):
            raise ValueError(f"idk_dpo.plain must be true or false, got {self.plain!r}")

    def loss(self, model, batch):
        win, lose = sequence_logprob(model, batch["idk"]), sequence_logprob(model, batch["forget"])
        with torch.no_grad():
            ref_win = sequence_logprob(self.reference, batch["idk"])
            ref_lose = sequence_logprob(self.reference, batch["forget"])
        margin = (win - ref_win) - (lose - ref_lose)
        scale = 1.0 if self.plain else 2.0 / self.beta
        dpo = -scale * F.logsigmoid(self.beta * margin).mean()
        retain = nll(model, batch["retain"]) if self.alpha else torch.zeros(())
        return self.gamma * dpo + self.alpha * retain, {"dpo": dpo.item(), "dpo_margin": margin.mean().item(),
                                                        "retain_nll": retain.item()}
