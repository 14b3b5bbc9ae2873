"""One type checker for every value read from a file: output files (JSON), recipes (TOML) and a run's
config.json. `conform(value, hint)` returns the value in the field's type (a list for a `tuple[int, ...]`
becomes a tuple, an int for a `float` becomes a float) or raises `Mismatch`; callers turn that into their
own one-line error naming the file and the field."""

from __future__ import annotations

import json
import types
import typing
from typing import Any


class Mismatch(TypeError):
    """A value that is not of its field's type; `expected` names the type for the message."""

    def __init__(self, value: Any, hint: Any):
        self.value, self.expected = value, hint_name(hint)
        super().__init__(f"{type(value).__name__} {short(value)}, expected {self.expected}")


def hint_name(hint: Any) -> str:
    """`int`, `a list of integers`, `int or str` (None of an optional type left out: a value is expected)."""
    if typing.get_origin(hint) is tuple:
        return "a list of integers"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(hint_name(h) for h in typing.get_args(hint) if h is not type(None))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def short(value: Any) -> str:
    """A value as JSON, cut to 40 characters, for error messages."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def conform(value: Any, hint: Any) -> Any:
    """`value` as a value of the type `hint` (int, float, bool, str, list, dict, Any, `tuple[int, ...]`, a
    dataclass-free union of these with None), or `Mismatch`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for h in typing.get_args(hint):
            try:
                return conform(value, h)
            except Mismatch:
                continue
        raise Mismatch(value, hint)
    if hint is Any:
        return value
    if hint is type(None):
        if value is None:
            return None
        raise Mismatch(value, hint)
    if origin is tuple:
        if isinstance(value, (list, tuple)) and all(is_int(v) for v in value):
            return tuple(value)
        raise Mismatch(value, hint)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise Mismatch(value, hint)
    if hint is int:
        if is_int(value):
            return value
        raise Mismatch(value, hint)
    check = {list: list, dict: dict}.get(origin, hint)
    if isinstance(check, type) and isinstance(value, check):
        return value
    raise Mismatch(value, hint)


def type_ok(value: Any, hint: Any) -> bool:
    try:
        conform(value, hint)
        return True
    except Mismatch:
        return False
