"""Plug-ins: written once, composed with any gradient-based unlearning method by config.

    methods:
      npo_salun: {name: npo, beta: 0.1, plugins: [{name: saliency, fraction: 0.5}]}
      npo_gu:    {name: npo, plugins: [gu_projection]}

A plug-in is a dataclass registered by name whose fields are its parameters. It uses the training
loop's hooks (forgetlab.hooks), typically `setup` to compute something from its own
forget/retain batches (TrainContext.forget / .retain) and `before_step` to change the gradients
the optimizer is about to apply. `check(method)` raises ValueError when it cannot apply.
Adding a plug-in is one new file in this package.
"""

from __future__ import annotations

from typing import ClassVar

from forgetlab.hooks import Hooks
from forgetlab.registry import Registry, import_all

PLUGINS = Registry("unlearning plug-in")


class Plugin(Hooks):
    name: ClassVar[str] = ""
    needs_retain: ClassVar[bool] = False  # uses TrainContext.retain

    def check(self, method) -> None:
        if not method.accepts_plugins:
            raise ValueError(f"plug-in {self.name} cannot apply to {method.name}: "
                             "its update is not a gradient step on its loss")


import_all(__name__, __path__)
