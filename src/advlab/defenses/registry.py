"""Defenses by name: ``create_objective(name, dataset=..., **params)`` and ``available()``.

A defense is registered as a factory ``factory(dataset, **params) -> Objective``: it fills the
parameters the caller left out from the defense's per-data-set defaults (e.g. ε = 0.3 on MNIST)
and builds a frozen objective dataclass, which the ordinary training loop (``advlab.train.fit``)
calls on every batch. Unknown parameters are rejected with the list of valid ones.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from typing import Any

from advlab.registry import Registry
from advlab.train.objective import Objective

DEFENSES: Registry[Objective] = Registry("defense")


def register(name: str) -> Callable[[Callable[..., Objective]], Callable[..., Objective]]:
    """Decorator: register ``factory(dataset, **params) -> Objective`` under ``name``."""
    return DEFENSES.register(name)


def available() -> list[str]:
    """The names of every registered defense, sorted."""
    return DEFENSES.available()


def create_objective(name: str, dataset: str | None = None, **params: Any) -> Objective:
    """The training objective of defense ``name`` for ``dataset``; ``None`` values are dropped.

    >>> objective = create_objective("pgd-at", dataset="mnist")  # ε = 0.3, 40 steps of 0.01
    >>> objective = create_objective("fast-at", dataset="mnist", eps=0.2)
    """
    from advlab.defenses.common import check_dataset

    factory = DEFENSES.get(name)  # an unknown defense: the error lists the valid ones
    check_dataset(dataset)  # every defense: a misspelt data set is an error, not the default
    params = {k: v for k, v in params.items() if v is not None}
    return factory(dataset, **params)


def build(cls: type, name: str, params: Mapping[str, Any],
          defaults: Mapping[str, Any] | None = None) -> Any:
    """Instantiate the objective dataclass ``cls`` from ``defaults`` updated by ``params``.

    ``name`` (the registered name) is stored in the objective's ``name`` field; a parameter that
    is not a field of ``cls`` raises ``ValueError`` naming the valid ones.
    """
    valid = [f.name for f in dataclasses.fields(cls) if f.name != "name"]
    for key in params:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=2)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"unknown parameter {key!r} for defense {name!r}.{hint} "
                             f"Valid parameters: {', '.join(valid)}")
    values = {**(defaults or {}), **params}
    return cls(name=name, **values)


def per_dataset(table: Mapping[str, Mapping[str, Any]], dataset: str | None) -> dict[str, Any]:
    """The defaults of ``dataset`` in ``table`` (or of its family: cifar10-jpeg takes
    cifar10's), falling back to the ``"*"`` row."""
    return dict(table.get(family(dataset), table["*"]))


def family(dataset: str | None) -> str:
    """The data set whose defaults ``dataset`` shares (``DatasetInfo.family``), or "*"."""
    if not dataset:
        return "*"
    from advlab import data

    try:
        return data.info(dataset).family or dataset
    except ValueError:
        return dataset


def config(objective: Any) -> dict[str, Any]:
    """The objective's name and settings, JSON-ready (stored in a run's config.yaml)."""
    if dataclasses.is_dataclass(objective):
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(objective).items()}
    return {"name": getattr(objective, "name", type(objective).__name__)}
