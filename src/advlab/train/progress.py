"""A rich progress bar for epochs of batches (a no-op when disabled)."""

from __future__ import annotations

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Reading the loss forces a device sync: refresh the shown loss only every few batches.
_SHOW_EVERY = 20


class EpochProgress:
    def __init__(self, enabled: bool, total_batches: int, console: Console | None = None) -> None:
        self.enabled = enabled
        self.total = total_batches
        self._progress = None
        self._task = None
        self._count = 0
        self._console = console or Console(stderr=True)

    def __enter__(self) -> EpochProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self._console, refresh_per_second=4,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self._count = 0
        if self._progress is not None:
            self._task = self._progress.add_task(f"epoch {epoch}/{epochs}", total=self.total,
                                                 info="")

    def advance(self, loss: torch.Tensor) -> None:
        if self._progress is None:
            return
        self._count += 1
        if self._count % _SHOW_EVERY == 0 or self._count == self.total:
            self._progress.update(self._task, completed=self._count,
                                  info=f"loss {loss.item():.4f}")

    def end_epoch(self, row: dict[str, float]) -> None:
        if self._progress is None:
            return
        parts = [f"loss {row['train_loss']:.4f}", f"acc {row['train_acc']:.4f}"]
        parts += [f"{k} {row[k]:.4f}" for k in ("val_acc", "test_acc") if k in row]
        self._progress.update(self._task, completed=self.total, info="  ".join(parts))
