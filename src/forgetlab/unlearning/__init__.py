"""Unlearning methods: the study's second axis.

A method is a dataclass registered by name; its fields are its config hyperparameters, and its
`loss(model, batch)` maps a {"forget": batch, "retain": batch | None} pair to a scalar loss and a
dict of named parts to log. The shared loop (forgetlab.train) minimises it.
A method that needs the frozen pre-unlearning model sets `needs_reference`; the recipe then
loads that model once and assigns it to `method.reference` (never copied per step).
Adding a method is one new file in this package plus a config entry.
"""

from __future__ import annotations

from typing import ClassVar

from forgetlab.registry import Registry, import_all

METHODS = Registry("unlearning method")


class Method:
    uses_retain: ClassVar[bool] = False
    reference = None

    @property
    def needs_reference(self) -> bool:
        return False

    def loss(self, model, batch: dict):
        raise NotImplementedError


def build_method(spec: dict) -> Method:
    return METHODS.get(spec["name"])(**{k: v for k, v in spec.items() if k != "name"})


import_all(__name__, __path__)
