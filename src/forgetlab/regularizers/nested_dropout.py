"""`nested_dropout`: truncate the final hidden state to a random prefix of its channels.

Mechanism (Rippel, Gelbart, Adams, "Learning Ordered Representations with Nested Dropout",
ICML 2014; used against noisy labels in Chen, Shen, Hu, Wang, Liu, Heng, "Compressing Features
for Learning with Noisy Labels", IEEE TNNLS 2022 / arXiv 2021): for each sequence draw a cut

    b ~ Geometric(rate),  P(b = k) = (1 - rate)^(k-1) * rate  (k >= 1, mean 1/rate),
    b <- clip(b, min_keep, d),

keep channels 0..b-1 of the final (post-norm) hidden state h of every position of that sequence
and zero channels b..d-1 (no rescaling), and replace the cross-entropy by the CE of
lm_head(h * 1[k < b]) on the supervised positions. Earlier channels are kept more often, so they
learn the most important directions. The draw uses torch's RNG (seeded by the training loop);
in eval mode it is the plain cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from forgetlab.params import require_int
from forgetlab.qa import IGNORE
from forgetlab.regularizers import REGULARIZERS, Regularizer, base_model


@REGULARIZERS.register("nested_dropout")
@dataclass
class NestedDropout(Regularizer):
    rate: float = 0.01
    min_keep: int = 1
    needs_hidden_states = True
    replaces_loss = True
    _cut_sum: float = field(default=0.0, init=False, repr=False)
    _cut_n: int = field(default=0, init=False, repr=False)

    def __post_init__(self):
        if not 0.0 < self.rate < 1.0:
            raise ValueError(f"nested_dropout.rate must be in (0, 1), got {self.rate}")
        require_int("nested_dropout", "min_keep", self.min_keep, low=1)

    def sample_cuts(self, n: int, d: int, device=None) -> torch.Tensor:
        """n cut indices b in [min(min_keep, d), d], one per sequence."""
        b = torch.empty(n, device=device).geometric_(self.rate)
        return b.clamp(max=d).long().clamp(min=min(self.min_keep, d))

    def compute_loss(self, batch, outputs, model):
        if not model.training:
            return None  # no truncation at evaluation: lm_loss's plain cross-entropy
        hidden = outputs.hidden_states[-1][:, :-1]  # (B, T-1, d), post-norm
        labels = batch["labels"][:, 1:]
        mask = labels != IGNORE
        d = hidden.size(-1)
        b = self.sample_cuts(hidden.size(0), d, hidden.device)
        keep = torch.arange(d, device=hidden.device) < b[:, None]  # (B, d): a prefix of length b
        self._cut_sum += b.detach().float().sum()  # stays a tensor: no device sync per step
        self._cut_n += b.numel()
        h = (hidden * keep[:, None, :].to(hidden.dtype))[mask]  # (N, d)
        logits = base_model(model).lm_head(h)
        return F.cross_entropy(logits.float(), labels[mask])

    def summary(self) -> dict[str, float]:
        return {"mean_cut": float(self._cut_sum) / self._cut_n} if self._cut_n else {}

    def state_dict(self) -> dict:  # the float32 running sum is exact as a python float
        return {"cut_sum": float(self._cut_sum), "cut_n": self._cut_n}

    def load_state_dict(self, state: dict) -> None:
        self._cut_sum, self._cut_n = state["cut_sum"], state["cut_n"]
