"""Attacks by name: ``create(name, **params)``, ``available()``, and the ``@register`` decorator."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, TypeVar

from advlab.attacks.base import Attack
from advlab.registry import Registry

ATTACKS: Registry[Attack] = Registry("attack")
A = TypeVar("A", bound=type[Attack])


def register(name: str):
    """Class decorator: register an ``Attack`` subclass under ``name`` (sets ``cls.name``)."""

    def decorator(cls: A) -> A:
        ATTACKS.add(name, cls)  # raises on a duplicate name before touching cls
        cls.name = name
        return cls

    return decorator


def params(name: str) -> list[str]:
    """The parameter names accepted by attack ``name``."""
    return [f.name for f in dataclasses.fields(ATTACKS.get(name))]


def create(name: str, **kwargs: Any) -> Attack:
    """Build attack ``name``; ``None`` values are dropped, unknown parameters are rejected."""
    cls = ATTACKS.get(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    valid = params(name)
    for key in kwargs:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=2)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"unknown parameter {key!r} for attack {name!r}.{hint} "
                             f"Valid parameters: {', '.join(valid)}")
    return cls(**kwargs)


def available() -> list[str]:
    """The names of every registered attack, sorted."""
    return ATTACKS.available()
