"""Unlearning methods: the study's second axis, and plug-ins that compose with any of them.

A method is a dataclass registered by name; its fields are its config hyperparameters, and its
`loss(model, batch)` maps an unlearning batch to a scalar loss and a dict of named parts to log.
The batch holds "forget" and "retain" (None unless the method sets `uses_retain`), plus the
other views of the same forget rows that the method asks for in `forget_views`:
    "idk"        the question with a refusal answer from idk.txt (a fixed, seeded draw per row);
    "relabel"    the question with a wrong answer meant for training (a seeded draw per row from its
                 `relabel_answers`, never from the perturbed answers that evaluation scores; see
                 forgetlab.recipes.unlearn.relabel_candidates).
The shared loop (forgetlab.train) minimises the loss.

Methods and plug-ins are training-loop hooks too (the contract: forgetlab.hooks), e.g. setup to
freeze all but a few layers, finalize to turn the trained weights into a negated task vector,
state_dict for what changes during training (pdu's lambda). A method that needs the frozen
pre-unlearning model sets `needs_reference`; the recipe then loads that model once and assigns it
to `method.reference` (never copied per step).

Plug-ins (forgetlab.unlearning.plugins) are given in config as `{name: npo, plugins: [saliency]}`
(or `plugins: [{name: saliency, fraction: 0.3}]`); each checks that it can apply to the method.
An entry may also override the study's `unlearn` loop settings for that method alone, e.g.
`{name: rmu, train: {lr: 1.0e-3}}`.
Adding a method is one new file in this package plus a config entry.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import ClassVar

from forgetlab.hooks import Hooks
from forgetlab.registry import ComponentError, Registry, build, import_all

METHODS = Registry("unlearning method")
VIEWS = ("idk", "relabel")


class Method(Hooks):
    name: ClassVar[str] = ""
    uses_retain: ClassVar[bool] = False
    forget_views: ClassVar[tuple[str, ...]] = ()
    # False for methods whose update is not a gradient step on their loss (e.g. task_vector)
    accepts_plugins: ClassVar[bool] = True
    reference = None
    plugins: list = []

    @property
    def needs_reference(self) -> bool:
        return False

    def loss(self, model, batch: dict):
        raise NotImplementedError

    @contextmanager
    def as_saved(self, model):
        """The model as the method would save it at this point (e.g. task_vector's negated
        weights), for mid-run evaluation; most methods save the trained weights as they are."""
        yield model


def build_method(spec: dict) -> Method:
    """A method entry (forgetlab.registry.build) with its plug-ins, checked to apply to it."""
    from forgetlab.unlearning.plugins import PLUGINS

    method = build(METHODS, spec)
    bad = [v for v in method.forget_views if v not in VIEWS]
    if bad:
        raise ValueError(f"{spec['name']}: unknown forget view(s) {bad}; known: {list(VIEWS)}")
    method.plugins = []
    for i, plugin_spec in enumerate(spec.get("plugins", [])):
        try:
            method.plugins.append(build(PLUGINS, plugin_spec))
        except ComponentError as e:
            raise e.inside(f".plugins[{i}]") from None
    for plugin in method.plugins:
        plugin.check(method)
    return method


import_all(__name__, __path__)
