"""Typed, frozen configuration objects: build from dicts that may not hold unknown keys."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, TypeVar

C = TypeVar("C")


def from_dict(cls: type[C], values: dict[str, Any] | None) -> C:
    """Build the frozen dataclass ``cls`` from ``values``; unknown keys are an error.

    Keys whose value is ``None`` keep the field's default, so CLI options can default to ``None``.
    """
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
    for f in dataclasses.fields(cls):
        # YAML/JSON give lists where the config wants tuples.
        if f.name in kwargs and isinstance(kwargs[f.name], list):
            kwargs[f.name] = tuple(kwargs[f.name])
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """A plain (YAML/JSON-ready) dict of a config dataclass."""
    out = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
