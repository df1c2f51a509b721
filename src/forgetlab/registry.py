"""Name -> component registries, filled by a decorator when a component module is imported, and
`build`, the one way a component is made from its config spec.

Each component package (`forgetlab.regularizers`, `forgetlab.unlearning`, its `plugins`,
`forgetlab.metrics`) creates one `Registry` and calls `import_all` on itself, so adding a
component is adding one file. A component is a dataclass whose fields are its parameters: `build`
checks the names and types of a spec's parameters against those fields, then constructs it, and
the component's `__post_init__` checks their ranges. That is all the semantic checking a spec gets
(forgetlab.config runs it once per spec, before any job; the JSON schema checks structure only).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
import typing
from typing import Any, Callable

NAME_RE = re.compile(r"^[a-z0-9_-]+$")


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        if not NAME_RE.match(name):
            raise ValueError(f"{self.kind} name {name!r} must match [a-z0-9_-]+")

        def deco(obj: Any) -> Any:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> Any:
        if name not in self._items:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


class ComponentError(ValueError):
    """A spec that names no registered component, or a parameter it does not have (or of the wrong
    type); `where` is the key inside the spec, e.g. ".beta" or "[0].name"."""

    def __init__(self, where: str, message: str):
        super().__init__(message)
        self.where = where

    def inside(self, prefix: str) -> "ComponentError":
        """The same error, its key under `prefix` (e.g. "[2]" for the third spec of a list)."""
        return ComponentError(f"{prefix}{self.where}", str(self))


SPEC_KEYS = ("name", "plugins", "train")  # a spec's keys that are not the component's parameters


def build(registry: Registry, spec: dict | str) -> Any:
    """The component a spec names ({"name": ..., **parameters}, or just the name), with its
    `name` set; ComponentError for an unknown name or parameter, ValueError for a bad value."""
    spec = {"name": spec} if isinstance(spec, str) else spec
    if spec["name"] not in registry:
        raise ComponentError(".name", f"unknown {registry.kind} {spec['name']!r}; known: {registry.names()}")
    cls = registry.get(spec["name"])
    params = {k: v for k, v in spec.items() if k not in SPEC_KEYS}
    check_types(spec["name"], cls, params)
    component = cls(**params)
    component.name = spec["name"]
    return component


def check_types(name: str, cls: type, params: dict) -> None:
    """Each parameter must be a field of the component's dataclass, of a matching type."""
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for param, value in params.items():
        if param not in fields:
            raise ComponentError(f".{param}", f"{name} has no parameter {param!r} (known: {', '.join(sorted(fields)) or 'none'})")
        allowed = tuple(a for a in (typing.get_args(hints[param]) or (hints[param],)) if isinstance(a, type))
        if float in allowed:
            allowed += (int,)
        if allowed and (not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)):
            raise ComponentError(f".{param}", f"{name}.{param} must be {'/'.join(a.__name__ for a in allowed)}, got {value!r}")


def import_all(package_name: str, package_path: list[str]) -> None:
    """Import every module of a package so that their decorators register them."""
    for info in pkgutil.iter_modules(package_path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
