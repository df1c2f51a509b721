"""The training loop's hooks: the one contract of regularizers, unlearning methods, their
plug-ins and the unlearning trajectory. `forgetlab.train.train(..., hooks=[...])` calls them:

    setup(model, ctx) -> model             before the first step: wrap or modify the model (freeze
                                           layers, add adapters, attach probes). ctx is the run's
                                           forgetlab.train.TrainContext: total_steps, a fixed probe
                                           batch, and forget/retain loaders of its own
    param_groups(model, groups) -> groups  change the optimizer's parameter groups
    before_step(model, step, optimizer)    after backward and gradient clipping, before
                                           optimizer.step(): read or change the gradients
    after_step(model, step, optimizer)     after optimizer.step() and the lr update
    finalize(model) -> model               after the last step: undo training-only changes, or
                                           transform the final weights (e.g. load an average)
    summary() -> dict                      numbers that the recipe logs to MLflow once training ends
    state_dict() / load_state_dict(state)  what the hook changes during training (running means,
                                           masks, counters, loader positions it drew), saved in a
                                           checkpoint (forgetlab.checkpoint): a resumed run calls
                                           setup on the initial model, then load_state_dict

Each hook in the list is called in list order at each point; all are no-ops here. Regularizers
add two loss hooks (forgetlab.regularizers) and methods their loss (forgetlab.unlearning).
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
