"""`label_smoothing`: label-smoothed cross-entropy on the supervised (answer) tokens.

Mechanism (Szegedy, Vanhoucke, Ioffe, Shlens, Wojna, "Rethinking the Inception Architecture for
Computer Vision", CVPR 2016; analysed in Müller, Kornblith, Hinton, "When does label smoothing
help?", NeurIPS 2019): the one-hot target is mixed with the uniform distribution over the
vocabulary of size K, q = (1 - eps) * onehot(y) + eps / K, so per supervised position t

    loss_t = (1 - eps) * (-log p_t[y_t]) + eps * (1/K) * sum_k (-log p_t[k]),

averaged over the positions whose next-token label is not -100 (prompt tokens get no loss).
It replaces the cross-entropy; eps = 0 is the plain cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

from forgetlab.losses import supervised_nll
from forgetlab.regularizers import REGULARIZERS, Regularizer


@REGULARIZERS.register("label_smoothing")
@dataclass
class LabelSmoothing(Regularizer):
    epsilon: float = 0.1
    replaces_loss = True

    def __post_init__(self):
        if not 0.0 <= self.epsilon < 1.0:
            raise ValueError(f"label_smoothing.epsilon must be in [0, 1), got {self.epsilon}")

    def compute_loss(self, batch, outputs, model):
        # torch's label_smoothing is exactly (1-eps)*NLL + eps*mean_k(-log p_k), ignored positions excluded
        return supervised_nll(outputs, batch["labels"], label_smoothing=self.epsilon)
