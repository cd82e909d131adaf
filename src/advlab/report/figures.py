"""Figures of classifier runs (matplotlib, Agg backend, PNG files)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from advlab.io import atomic_path  # noqa: E402

log = logging.getLogger(__name__)


def save(fig, path: str | Path) -> Path | None:
    """Write ``fig`` to ``path`` (its format from the suffix, PNG by default) atomically and
    close it: the one function every figure of advlab is written through.

    A figure that cannot be written (full disk, read-only place) is reported by a warning
    naming it and skipped: the caller's numbers are written all the same. Returns ``path``, or
    None when the figure was skipped; a partial figure is never left behind.
    """
    path = Path(path)
    from advlab.distributed import is_main

    if not is_main():  # under torchrun rank 0 alone writes the run directory
        plt.close(fig)
        return path
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:] or "png", dpi=110, bbox_inches="tight")
    except OSError as e:  # WriteError: disk full, read-only, permissions; the reason names it
        log.warning("figure %s was not written (%s); the run's numbers are not affected",
                    path, e)
        return None
    finally:
        plt.close(fig)
    return path


def point_predictions(x: torch.Tensor, y: torch.Tensor, pred: torch.Tensor,
                      path: str | Path, title: str = "test points by predicted class") -> Path:
    """2-D points (N, 2) coloured by predicted class; misclassified ones circled in red."""
    x = x.detach().cpu().reshape(x.shape[0], -1)[:, :2].numpy()
    y, pred = y.detach().cpu().numpy(), pred.detach().cpu().numpy()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(x[:, 0], x[:, 1], c=pred, cmap="tab20", s=4, alpha=0.7)
    wrong = pred != y
    if wrong.any():
        ax.scatter(x[wrong, 0], x[wrong, 1], facecolors="none", edgecolors="red", s=30,
                   linewidths=0.8, label=f"misclassified ({int(wrong.sum())})")
        ax.legend(loc="upper right")
    ax.set(title=title, aspect="equal")
    ax.grid(alpha=0.3)
    return save(fig, path)


def learning_curves(history: Sequence[dict[str, float]], path: str | Path) -> Path:
    """Loss and accuracy per epoch for every split present in the history."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 3.6))
    for split in ("train", "val", "test"):
        if history and f"{split}_loss" in history[0]:
            ax_l.plot(epochs, [r[f"{split}_loss"] for r in history], marker="o", label=split)
            ax_a.plot(epochs, [r[f"{split}_acc"] for r in history], marker="o", label=split)
    ax_l.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_a.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_l, ax_a):
        ax.grid(alpha=0.3)
        ax.legend()
    return save(fig, path)


def confusion_matrix(cm: np.ndarray, classes: Sequence[str], path: str | Path) -> Path:
    k = len(classes)
    fig, ax = plt.subplots(figsize=(0.55 * k + 2.5, 0.55 * k + 2))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    return save(fig, path)


def to_image(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) or (H, W, C) numpy for imshow."""
    x = x.detach().cpu().clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def prediction_grid(x: torch.Tensor, y: torch.Tensor, pred: torch.Tensor, conf: torch.Tensor,
                    classes: Sequence[str], path: str | Path, cols: int = 8) -> Path:
    """Images with true / predicted label and confidence; mistakes titled in red."""
    n = x.shape[0]
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.75 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(to_image(x[i]), cmap="gray", vmin=0, vmax=1)
        ok = int(pred[i]) == int(y[i])
        ax.set_title(f"{classes[int(pred[i])]} {float(conf[i]):.2f}\n(true {classes[int(y[i])]})",
                     fontsize=7, color="black" if ok else "red")
    return save(fig, path)
