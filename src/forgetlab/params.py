"""Range checks of the components' hyper-parameters (the regularizers', methods' and plug-ins'
`__post_init__`): each raises ValueError naming the parameter as `owner.name`, e.g. `npo.beta`."""

from __future__ import annotations

import math


def require_number(owner: str, name: str, value, low: float = 0.0, strict: bool = False) -> None:
    """A finite number (not a bool) >= low (> low if strict)."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value > low if strict else value >= low))
    if not ok:
        raise ValueError(f"{owner}.{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}")


def require_int(owner: str, name: str, value, low: int = 0, hint: str = "") -> None:
    """An integer (not a bool) >= low; `hint`, if given, explains the value in the error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        note = f" ({hint})" if hint else ""
        raise ValueError(f"{owner}.{name} must be an integer >= {low}{note}, got {value!r}")


def require_choice(owner: str, name: str, value, choices) -> None:
    """One of `choices`."""
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {list(choices)}, got {value!r}")
