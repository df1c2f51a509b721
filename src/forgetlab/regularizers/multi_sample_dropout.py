"""`multi_sample_dropout`: M dropout samples of the final hidden state through a shared head.

Mechanism (Inoue, "Multi-Sample Dropout for Accelerated Training and Better Generalization",
arXiv 2019): with h_t the final (post-norm) hidden state at supervised position t and W the
shared `lm_head`, draw M independent dropout masks d_1..d_M (each unit zeroed with probability p,
survivors scaled by 1/(1-p)) and replace the cross-entropy by

    loss = (1/M) * sum_{m=1..M} mean_{t in S} -log softmax(W (d_m * h_t))[y_t],

S = the positions whose next-token label is not -100. The decoder trunk runs once; only the
head runs M times, and only on the supervised positions. In eval mode (or p = 0) it is the
plain cross-entropy. transformers 5.x `hidden_states[-1]` is after the final norm (checked by
the tests), so `lm_head(hidden_states[-1]) == logits`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from forgetlab.params import require_int
from forgetlab.qa import IGNORE
from forgetlab.regularizers import REGULARIZERS, Regularizer, base_model


@REGULARIZERS.register("multi_sample_dropout")
@dataclass
class MultiSampleDropout(Regularizer):
    m: int = 4
    p: float = 0.1
    needs_hidden_states = True
    replaces_loss = True

    def __post_init__(self):
        require_int("multi_sample_dropout", "m", self.m, low=1)
        if not 0.0 <= self.p < 1.0:
            raise ValueError(f"multi_sample_dropout.p must be in [0, 1), got {self.p}")

    def compute_loss(self, batch, outputs, model):
        if not model.training or self.p == 0.0:
            return None  # no dropout: lm_loss's plain cross-entropy on outputs.logits
        labels = batch["labels"][:, 1:]
        mask = labels != IGNORE
        h = outputs.hidden_states[-1][:, :-1][mask]  # (N, d): supervised positions only
        y = labels[mask]
        # one dropout call draws all M masks: (M, N, d), same draws as M successive F.dropout(h) calls
        dropped = F.dropout(h.unsqueeze(0).expand(self.m, *h.shape), self.p, training=True)
        logits = base_model(model).lm_head(dropped)  # (M, N, V)
        # every sample has the same N tokens, so the mean over M*N is the mean of the M CE losses
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.repeat(self.m))
