"""`task_vector`: forgetting by negating a task vector (Ilharco et al., "Editing Models with Task
Arithmetic", ICLR 2023).

The loop fine-tunes the model further on the forget set (plain descent), and `finalize` subtracts
the resulting task vector tau = theta_ft - theta_target from the target:

    loss      = NLL_forget(theta)                                  (minimised by the loop -> theta_ft)
    theta_out = theta_target - alpha * (theta_ft - theta_target)   (finalize; alpha = `alpha`)

open-unlearning has no task-vector trainer: this follows the paper's negation (and MUSE's Task
Vector baseline), with the loss the pooled mean NLL of the forget batch's answer tokens and alpha
the negation scale (1 by default: the paper's plain negation). theta_target is the frozen
pre-unlearning model that the recipe loads once (`self.reference`); the update is done in place,
parameter by parameter (in float32), with no further copy of the model. alpha = 0 returns the
target exactly. The final model is not a gradient step on the loss, so plug-ins (which edit
gradients) do not apply (`accepts_plugins = False`). Mid-run evaluation (the unlearning
trajectory) sees theta_out as it would be at that step (`as_saved`), not theta_ft.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from forgetlab.losses import nll
from forgetlab.params import require_number
from forgetlab.unlearning import METHODS, Method


@METHODS.register("task_vector")
@dataclass
class TaskVector(Method):
    alpha: float = 1.0
    accepts_plugins = False
    needs_reference = True  # theta_target

    def __post_init__(self):
        require_number("task_vector", "alpha", self.alpha)

    def loss(self, model, batch):
        forget_nll = nll(model, batch["forget"])
        return forget_nll, {"forget_nll": forget_nll.item()}

    @contextmanager
    def as_saved(self, model):
        with torch.no_grad():
            trained = {name: p.detach().clone() for name, p in model.named_parameters()}
            self.finalize(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(trained[name])

    @torch.no_grad()
    def finalize(self, model):
        if self.reference is None:
            raise ValueError("task_vector.finalize needs the frozen target model (method.reference)")
        target = dict(self.reference.named_parameters())
        params = dict(model.named_parameters())
        if params.keys() != target.keys():
            missing = sorted(set(params) ^ set(target))[:5]
            raise ValueError(f"task_vector: the model and the target have different parameters (e.g. {missing})")
        for name, p in params.items():
            ref = target[name].to(device=p.device, dtype=torch.float32)
            p.copy_((ref - self.alpha * (p.float() - ref)).to(p.dtype))
        return model
