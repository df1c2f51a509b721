"""`confidence_penalty`: discourage over-confident next-token distributions on the answer tokens.

Two modes, over the supervised positions S (those t whose label at t+1 is not -100):
- `entropy` (Pereyra, Tucker, Chorowski, Kaiser, Hinton, "Regularizing Neural Networks by
  Penalizing Confident Output Distributions", ICLR workshop 2017): an added term

      extra = -beta * mean_{t in S} H(p_t),   H(p) = -sum_k p[k] log p[k],

  so low-entropy (confident) predictions are penalised; the cross-entropy is unchanged.
- `capped` ("limiting confidence"): the cross-entropy is replaced by

      loss = mean_{t in S, p_t[y_t] <= tau} (-log p_t[y_t])    (0 if no such t),

  i.e. a token the model already predicts with probability > tau gives no loss and no gradient,
  so fine-tuning stops pushing already-learned answer tokens towards probability 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from forgetlab.losses import logits_at_supervised
from forgetlab.qa import IGNORE
from forgetlab.regularizers import REGULARIZERS, Regularizer

MODES = ("entropy", "capped")


@REGULARIZERS.register("confidence_penalty")
@dataclass
class ConfidencePenalty(Regularizer):
    mode: str = "entropy"
    beta: float = 0.1
    tau: float = 0.9

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"confidence_penalty.mode must be one of {MODES}, got {self.mode!r}")
        if not self.beta >= 0.0:
            raise ValueError(f"confidence_penalty.beta must be >= 0, got {self.beta}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"confidence_penalty.tau must be in (0, 1], got {self.tau}")

    @property
    def replaces_loss(self) -> bool:  # only the capped mode replaces the cross-entropy
        return self.mode == "capped"

    @staticmethod
    def _supervised(batch, outputs):
        labels = batch["labels"][:, 1:]
        mask = labels != IGNORE
        return F.log_softmax(logits_at_supervised(outputs, batch["labels"]).float(), -1), labels[mask], mask

    def compute_loss(self, batch, outputs, model):
        if self.mode != "capped":
            return None
        logp, y, _ = self._supervised(batch, outputs)
        nll = -logp.gather(-1, y[:, None]).squeeze(-1)  # (n_supervised,)
        keep = nll.detach().neg().exp() <= self.tau  # p(y) <= tau: still trained
        return torch.where(keep, nll, torch.zeros_like(nll)).sum() / keep.sum().clamp(min=1)

    def extra_loss(self, batch, outputs, model):
        if self.mode != "entropy":
            return None
        logp, _, mask = self._supervised(batch, outputs)
        entropy = -(logp.exp() * logp).sum(-1)
        return -self.beta * entropy.sum() / mask.sum().clamp(min=1)
