"""`undial`: self-distillation with adjusted logits (Dong et al., "UNDIAL: Self-Distillation with
Adjusted Logits for Robust Unlearning in Large Language Models", NAACL 2025; open-unlearning's
UNDIAL trainer and UNDIAL.yaml).

    q_t     = softmax( z_ref,t - beta * onehot(y_t) )      (frozen reference logits, no gradient)
    F(theta) = (1/|P|) * sum_{t in P} [ - sum_k q_t,k * log p_theta,k(. | y_<t, x) ]
    L(theta) = gamma * F(theta) + alpha * NLL_retain(theta)

The model is distilled towards the reference's next-token distribution with the true token's
logit lowered by beta, at the supervised (answer) positions. P, the positions averaged over:
    tokens "all"     every next-token position of the padded forget batch, prompt and padding
                     included (the reference: its cross-entropy is averaged over all of them, so
                     prompt positions distil towards the unadjusted reference and the answer's
                     weight depends on the padding), the default;
    tokens "answer"  only the supervised positions, pooled over the batch.
Defaults are UNDIAL.yaml's: beta 10, gamma (forget weight) 1, alpha (retain weight) 0 (the paper uses
no retain data; retain batches are loaded only for alpha > 0). One deliberate difference: at
unsupervised positions the reference's code also lowers vocabulary entry V-100 (its one-hot
indexes label -100 from the end); here those positions keep the reference's logits unchanged.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from forgetlab.losses import forward, nll
from forgetlab.params import require_choice, require_number
from forgetlab.qa import IGNORE
from forgetlab.unlearning import METHODS, Method


@METHODS.register("undial")
@dataclass
class UNDIAL(Method):
    beta: float = 10.0  # strength of the adjustment of the true token's logit
    gamma: float = 1.0  # forget weight
    alpha: float = 0.0  # retain weight
    tokens: str = "all"

    def __post_init__(self):
        for name in ("beta", "gamma", "alpha"):
            require_number("undial", name, getattr(self, name))
        require_choice("undial", "tokens", self.tokens, ("all", "answer"))

    @property
    def needs_reference(self) -> bool:
        return True

    @property
    def uses_retain(self) -> bool:
        return self.alpha > 0

    def loss(self, model, batch):
        forget = batch["forget"]
        targets = forget["labels"][:, 1:]
        supervised = targets != IGNORE
        logits = forward(model, forget).logits[:, :-1].float()
        with torch.no_grad():
            ref = forward(self.reference, forget).logits[:, :-1].float()
            adjust = F.one_hot(targets.clamp(min=0), ref.size(-1)).float() * supervised.unsqueeze(-1)
            q = (ref - self.beta * adjust).softmax(-1)
        ce = -(q * logits.log_softmax(-1)).sum(-1)  # (batch, length - 1)
        if self.tokens == "answer":
            ce = ce[supervised]
        forget_loss = ce.mean() if ce.numel() else logits.sum() * 0.0
        retain = nll(model, batch["retain"]) if self.alpha else torch.zeros(())
        return self.gamma * forget_loss + self.alpha * retain, {"undial_ce": forget_loss.item(),
                                                                "retain_nll": retain.item()}
