"""Name -> factory registries, shared by data sets, models, attacks, defenses and generators.

A registry maps a name to a factory. ``create(name, **kwargs)`` drops keyword arguments that are
``None`` (so CLI options can default to ``None`` and only override when given), and an unknown
name raises ``ValueError`` listing the valid names and the closest matches.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories.

    >>> models = Registry("model")
    >>> @models.register("tiny")
    ... def tiny(): return 1
    >>> models.create("tiny")
    1
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            self.add(name, factory)
            return factory

        return decorator

    def add(self, name: str, factory: Callable[..., T]) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = factory

    def get(self, name: str) -> Callable[..., T]:
        if not isinstance(name, str) or name not in self._entries:
            valid = sorted(self._entries)
            close = difflib.get_close_matches(str(name), valid, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"unknown {self.kind} {name!r}.{hint} Valid {self.kind}s: {', '.join(valid)}"
            )
        return self._entries[name]

    def create(self, name: str, **kwargs: Any) -> T:
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return self.get(name)(**kwargs)

    def available(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.available())
