"""``--tensorboard``: the training curves as TensorBoard event files in ``<run>/tensorboard/``.

Optional: it needs the ``tensorboard`` package (``pip install tensorboard``), checked before
the run directory is made. Every number of an epoch's history row (losses, accuracies, the
learning rate, held-out scores, seconds) becomes a scalar at step = the epoch, written as the
epoch ends (on rank 0 under torchrun, like every other file of the run); `tensorboard
--logdir runs/` then shows every run side by side. The run's own files stay the source of
truth: the event files are a view.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

DIRECTORY = "tensorboard"


def check_available() -> None:
    """Raise ``ValueError`` with the fix when the ``tensorboard`` package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package, which is not "
                         "installed: pip install tensorboard (or drop --tensorboard)") from None


class EpochScalars:
    """Writes each epoch's history row to ``<run>/tensorboard/`` (a callable for on_epoch)."""

    def __init__(self, run: str | Path) -> None:
        check_available()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run) / DIRECTORY))

    def __call__(self, row: Mapping[str, Any], *_: Any) -> None:
        step = int(row.get("epoch", 0))
        for key, value in row.items():
            if key != "epoch" and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def chain(*hooks: Callable[..., None] | None) -> Callable[..., None] | None:
    """One on_epoch hook calling each of ``hooks`` (None entries skipped) in order."""
    live = [h for h in hooks if h is not None]
    if not live:
        return None

    def call(*args: Any) -> None:
        for h in live:
            h(*args)

    return call


__all__ = ["DIRECTORY", "EpochScalars", "chain", "check_available"]
