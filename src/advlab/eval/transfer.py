"""Transferability of adversarial examples between models.

Rows are sources, columns targets. Each source's adversarial examples are crafted once (with
the robust mask of ``robust_accuracy``: points the source misclassifies stay clean) and shown
to every target. A cell is the target's robust accuracy on them: the fraction of points the
target classifies correctly both clean and on the source's example, so the diagonal is the
white-box robust accuracy and no cell exceeds the target's clean accuracy.
"""

from __future__ import annotations

import time
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advlab.attacks import Attack
from advlab.eval.robust import (
    Model,
    RobustEvaluation,
    check_data,
    check_labels_fit,
    model_device,
    predict,
    progress_bar,
    robust_accuracy,
)


@dataclass(frozen=True)
class TransferMatrix:
    names: list[str]
    accuracy: np.ndarray  # (S, T): target t's robust accuracy on source s's examples
    clean: np.ndarray  # (T,) clean accuracy of each target
    attack: dict[str, Any]
    seconds: float
    white_box: list[RobustEvaluation] = field(repr=False)  # per source

    def to_dict(self) -> dict[str, Any]:
        return {"names": self.names, "accuracy": self.accuracy.tolist(),
                "clean": self.clean.tolist(), "attack": self.attack, "seconds": self.seconds}


def transfer_robust(target: Model, x: Tensor, y: Tensor, adv: Tensor, *, batch_size: int = 1000,
                    device: torch.device | str | None = None,
                    clean_logits: Tensor | None = None) -> Tensor:
    """(N,) bool: ``target`` is correct on ``x`` and on ``adv`` (examples from another model)."""
    check_data(x, y)
    if not isinstance(adv, Tensor) or adv.shape != x.shape:
        shape = tuple(adv.shape) if isinstance(adv, Tensor) else type(adv).__name__
        raise ValueError(f"expected adv of x's shape {tuple(x.shape)}, got {shape}")
    check_data(adv, y)  # the examples too: floating point, finite, inside [0, 1]
    dev = model_device(target, x, device)
    y = y.to(x.device)
    if clean_logits is None:
        clean_logits = predict(target, x, batch_size, dev)
    check_labels_fit(y, clean_logits)
    return (clean_logits.argmax(1) == y) & (predict(target, adv, batch_size, dev).argmax(1) == y)


def _named_models(models: object) -> dict[str, Model]:
    """``models`` as {name: model}, refusing a single model, a string and non-models."""
    if isinstance(models, Mapping | nn.ModuleDict):
        named = dict(models.items())
        label = {n: f"models[{n!r}]" for n in named}
    elif (isinstance(models, Iterable) and not isinstance(models, str | bytes)
          and (isinstance(models, nn.ModuleList) or not callable(models))):
        named = {str(i): m for i, m in enumerate(models)}
        label = {n: f"models[{n}]" for n in named}
    else:
        expected = "expected models to be a mapping name -> model or a sequence of models"
        if callable(models) and not isinstance(models, type):
            kind = ("function" if isinstance(models, types.FunctionType)
                    else type(models).__name__)
            raise ValueError(f"{expected}, got a single {kind}; pass [model] or "
                             f"{{'name': model}}")
        raise ValueError(f"{expected}, got {type(models).__name__} {models!r:.80}")
    if not named:
        raise ValueError("expected at least one model, got none")
    for n, m in named.items():
        if not callable(m) or isinstance(m, type):
            raise ValueError(f"expected {label[n]} to be a model (an nn.Module or a callable "
                             f"x -> logits), got {type(m).__name__} {m!r:.80}")
    return named


def transfer_matrix(models: Mapping[str, Model] | Sequence[Model], x: Tensor, y: Tensor,
                    attack: Attack, *, batch_size: int | None = None, progress: bool = False,
                    device: torch.device | str | None = None) -> TransferMatrix:
    """Accuracy of every target on every source's adversarial examples (see module docstring).

    ``models``: a mapping name -> model, or a sequence (named "0", "1", ...) of models (an
    ``nn.Module`` or a callable x -> logits); a single model is refused (wrap it in a list).
    ``attack``: an ``advlab.attacks.Attack`` instance, e.g. ``attacks.create("pgd", eps=0.1)``.
    The diagonal reuses the white-box evaluation itself (the same model and examples).
    """
    named = _named_models(models)
    if not isinstance(attack, Attack):
        name = attack if isinstance(attack, str) else "pgd"
        got = (f"the class {attack.__name__}" if isinstance(attack, type)
               else f"{type(attack).__name__} {attack!r}")
        raise ValueError(f"expected attack to be an advlab.attacks.Attack instance, got {got}; "
                         f"build one with advlab.attacks.create({name!r}, ...)")
    check_data(x, y)
    start = time.perf_counter()
    names = list(named)
    clean_logits = {n: predict(m, x, batch_size, model_device(m, x, device))
                    for n, m in named.items()}
    y = y.to(x.device)
    clean = np.array([(clean_logits[n].argmax(1) == y).float().mean().item() for n in names])
    acc = np.zeros((len(names), len(names)))
    white = []
    with progress_bar(progress, len(names), "transfer sources") as advance:
        for i, src in enumerate(names):
            ev = robust_accuracy(named[src], x, y, attack, batch_size=batch_size, device=device,
                                 clean_logits=clean_logits[src])
            white.append(ev)
            for j, tgt in enumerate(names):
                if tgt == src:
                    acc[i, j] = ev.robust_accuracy
                    continue
                ok = transfer_robust(named[tgt], x, y, ev.result.adv, batch_size=batch_size,
                                     device=device, clean_logits=clean_logits[tgt])
                acc[i, j] = ok.float().mean().item()
            advance(1)
    config = attack.config() if hasattr(attack, "config") else {"attack": repr(attack)}
    return TransferMatrix(names, acc, clean, config, time.perf_counter() - start, white)
