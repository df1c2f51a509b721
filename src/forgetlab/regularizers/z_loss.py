"""`z_loss`: auxiliary penalty on the log-partition function of the output softmax.

Mechanism (Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways", JMLR 2023 /
arXiv 2022; Wortsman et al., "Small-scale proxies for large-scale Transformer training
instabilities", ICLR 2024 / arXiv 2023): with Z_t = sum_k exp(logits_t[k]),

    extra = coef * mean_{t in S} (log Z_t)^2,

where S is the set of supervised positions (those t whose label at t+1 is not -100). It pushes
log Z towards 0, keeping the logits from drifting; added to the (unchanged) cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

from forgetlab.losses import logits_at_supervised
from forgetlab.qa import IGNORE
from forgetlab.regularizers import REGULARIZERS, Regularizer


@REGULARIZERS.register("z_loss")
@dataclass
class ZLoss(Regularizer):
    coef: float = 1e-4

    def __post_init__(self):
        if not self.coef >= 0.0:
            raise ValueError(f"z_loss.coef must be >= 0, got {self.coef}")

    def extra_loss(self, batch, outputs, model):
        mask = batch["labels"][:, 1:] != IGNORE
        log_z = logits_at_supervised(outputs, batch["labels"]).float().logsumexp(-1)  # (n_supervised,)
        return self.coef * log_z.pow(2).sum() / mask.sum().clamp(min=1)
