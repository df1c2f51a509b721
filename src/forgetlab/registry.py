"""Name -> component registries, filled by a decorator when a component module is imported.

Each component package (`forgetlab.regularizers`, `forgetlab.unlearning`, `forgetlab.metrics`)
creates one `Registry` and calls `import_all` on itself, so adding a component is adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
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


def import_all(package_name: str, package_path: list[str]) -> None:
    """Import every module of a package so that their decorators register them."""
    for info in pkgutil.iter_modules(package_path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
