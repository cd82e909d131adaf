"""Typed, frozen configuration objects: build from dicts that may not hold unknown keys."""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import types
import typing
from typing import Any, TypeVar

C = TypeVar("C")


class _Mismatch(Exception):
    """``value`` does not fit the annotation; ``expected`` says what would."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def _coerce(tp: Any, value: Any, strict: bool = False) -> Any:
    """``value`` as the annotation ``tp`` wants it, converting only what YAML and JSON lose:
    an integral float for an int, an int or a numeric string (YAML 1.1 reads ``1e-3`` as a
    string) for a float, a list for a tuple; with ``strict`` only the list. Anything else that
    does not fit raises ``_Mismatch``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _coerce(option, value, strict)
            except _Mismatch:
                pass
        expected = " or ".join(_expected(o) for o in options)
        raise _Mismatch(expected + (" or null" if type(None) in args else ""))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch("true or false")
    if tp is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        if not strict and isinstance(value, float) and value.is_integer():
            return int(value)
        raise _Mismatch("an integer")
    if tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        if not strict and isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise _Mismatch("a number") from None
            if not math.isnan(number):
                return number
        raise _Mismatch("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch("a string")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch("a mapping")
    if tp is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch("a list")
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            kinds = [args[0]] * len(value)
        elif len(args) != len(value):
            raise _Mismatch(f"a list of {len(args)} items")
        else:
            kinds = list(args)
        try:
            return tuple(_coerce(k, v, strict) for k, v in zip(kinds, value, strict=True))
        except _Mismatch as e:
            raise _Mismatch(f"a list of {e.expected.removeprefix('a ').removeprefix('an ')}s"
                            ) from None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return from_dict(tp, value)
        raise _Mismatch(f"a mapping of {tp.__name__} options")
    return value  # an annotation this function does not know: the class checks it


def _expected(tp: Any) -> str:
    try:
        _coerce(tp, object())
    except _Mismatch as e:
        return e.expected
    return getattr(tp, "__name__", str(tp))


def from_dict(cls: type[C], values: dict[str, Any] | None) -> C:
    """Build the frozen dataclass ``cls`` from ``values``; unknown keys are an error.

    Keys whose value is ``None`` keep the field's default, so CLI options can default to ``None``.
    Values are checked against the field annotations (a wrong type is a ``ValueError`` naming
    the option), converting only what YAML and JSON lose: lists to tuples, integral floats to
    ints, ints and numeric strings (YAML 1.1's ``1e-3``) to floats; a mapping for a nested
    config class is built with ``from_dict`` too.
    """
    if values is not None and not isinstance(values, dict):
        raise ValueError(f"expected a mapping of {cls.__name__} options, got {values!r}")
    values = dict(values or {})
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, names, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(
            f"unknown {cls.__name__} option(s): {', '.join(hints)}; valid: {', '.join(names)}"
        )
    kwargs = {k: v for k, v in values.items() if v is not None}
    hints = typing.get_type_hints(cls)
    for name, value in kwargs.items():
        try:
            kwargs[name] = _coerce(hints.get(name, Any), value)
        except _Mismatch as e:
            raise ValueError(f"{cls.__name__} option {name}: expected {e.expected}, "
                             f"got {value!r}") from None
    return cls(**kwargs)


def check_types(config: Any) -> None:
    """Raise ``ValueError`` naming the first field of the dataclass instance ``config`` whose
    value does not fit its annotation (for ``__post_init__``: a config built in Python gets the
    message a config file would, not a ``TypeError`` from deep inside)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        try:
            _coerce(hints.get(f.name, Any), value, strict=True)
        except _Mismatch as e:
            raise ValueError(f"{type(config).__name__} option {f.name}: expected {e.expected}, "
                             f"got {value!r}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """A plain (YAML/JSON-ready) dict of a config dataclass."""
    out = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
