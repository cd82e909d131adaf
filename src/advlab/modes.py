"""One context manager for a model's train/eval mode, restored after (also on error)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def model_mode(model: nn.Module | Callable, training: bool = False) -> Iterator[None]:
    """Run the block with every submodule of ``model`` in eval mode (or train mode with
    ``training=True``), then put each submodule back in its own previous mode, also on error
    (a partly frozen model stays so). A plain callable that is not an ``nn.Module`` is left
    alone."""
    if not isinstance(model, nn.Module):
        yield
        return
    modules = list(model.modules())
    flags = [m.training for m in modules]
    model.train(training)
    try:
        yield
    finally:
        for m, flag in zip(modules, flags, strict=True):
            m.training = flag


def eval_mode(model: nn.Module | Callable):
    """``model_mode(model, training=False)``: the mode every attack and evaluation runs in."""
    return model_mode(model, False)
