"""Fine-tuning regularizers: the study's independent variable.

A regularizer is a dataclass registered by name. Its fields are its config parameters. A study
entry is a list of them, applied together (e.g. dropout + z_loss). Each may override any of the
hooks below; the training loop (forgetlab.train) calls them and is the same for all.
Adding one is one new file in this package plus a config entry.
"""

from __future__ import annotations

from forgetlab.registry import Registry, import_all

REGULARIZERS = Registry("regularizer")


class Regularizer:
    """Hooks, all no-ops by default."""

    def setup(self, model):
        """Wrap or modify the model before training; return it."""
        return model

    def param_groups(self, model, groups: list[dict]) -> list[dict]:
        """Change the optimizer's parameter groups (e.g. weight decay)."""
        return groups

    def adjust_loss(self, loss, batch: dict, outputs, model):
        """Add a term to, or replace, the loss from the batch and the model outputs."""
        return loss

    def after_step(self, model, step: int) -> None:
        """Act after optimizer.step()."""

    def finalize(self, model):
        """Undo training-only changes or transform the final weights; return the model to save."""
        return model


def build_regularizers(specs: list[dict]) -> list[Regularizer]:
    return [REGULARIZERS.get(s["name"])(**{k: v for k, v in s.items() if k != "name"}) for s in specs]


import_all(__name__, __path__)
