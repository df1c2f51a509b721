"""`none`: the unregularized baseline: AdamW with no weight decay, no dropout, plain cross-entropy."""

from dataclasses import dataclass

from forgetlab.regularizers import REGULARIZERS, Regularizer


@REGULARIZERS.register("none")
@dataclass
class NoRegularizer(Regularizer):
    pass
