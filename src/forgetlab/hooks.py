"""The training loop's hooks, shared by regularizers, unlearning methods and plug-ins.

forgetlab.train calls them in this order: setup, param_groups, then per step before_step and
after_step, then finalize; summary is logged once training ends, and state_dict /
load_state_dict carry what changes during training through a checkpoint. All are no-ops here.
"""

from __future__ import annotations


class Hooks:
    def setup(self, model, ctx):
        return model

    def param_groups(self, model, groups: list[dict]) -> list[dict]:
        return groups

    def before_step(self, model, step: int, optimizer) -> None:
        pass

    def after_step(self, model, step: int, optimizer) -> None:
        pass

    def finalize(self, model):
        return model

    def summary(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        """What changes during training (forgetlab.checkpoint); stateless by default."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
