"""Figures of attack evaluations (matplotlib, Agg backend, PNG files).

- ``adversarial_grid``: original / perturbation (amplified, diverging colormap) / adversarial,
  with predicted labels and confidences (titles in red when the prediction is wrong).
- ``accuracy_curves``: accuracy against ε for one or more attacks or models.
- ``roc_curves``: per-class one-vs-rest ROC curves, clean and adversarial side by side.
- ``transfer_heatmap``: the transferability matrix.
- ``norm_histogram``: sizes of the successful perturbations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from advlab.report.figures import plt, save, to_image


def _signed_image(delta: torch.Tensor) -> np.ndarray:
    """(C, H, W) perturbation -> (H, W), channels averaged, for a diverging colormap."""
    return delta.detach().float().cpu().mean(dim=0).numpy()


def _strip(tiles: list[np.ndarray], pad: int) -> np.ndarray:
    """Tiles (H, W) or (H, W, 3) side by side with ``pad`` columns of NaN (shown white)."""
    h, w = tiles[0].shape[:2]
    extra = tiles[0].shape[2:]
    out = np.full((h, len(tiles) * (w + pad) - pad, *extra), np.nan, dtype=np.float64)
    for i, t in enumerate(tiles):
        out[:, i * (w + pad): i * (w + pad) + w] = t
    if extra:  # RGB: imshow has no "bad" colour, pad with white
        out = np.nan_to_num(out, nan=1.0)
    return out


def adversarial_grid(x: torch.Tensor, adv: torch.Tensor, y: torch.Tensor,
                     pred_clean: torch.Tensor, conf_clean: torch.Tensor,
                     pred_adv: torch.Tensor, conf_adv: torch.Tensor, classes: Sequence[str],
                     path: str | Path, title: str = "") -> Path:
    """Three rows (original, perturbation, adversarial) and one column per example.

    ``x``, ``adv`` (n, C, H, W) in [0, 1]; labels and confidences (n,). Each perturbation is
    scaled by its own largest absolute value (the amplification is written above it) and
    shown with a diverging colormap: red adds brightness, blue removes it, white is unchanged.
    Predictions are written as "label confidence", in red when wrong. Each row is one image
    strip (three axes in all), which keeps the figure fast to draw.
    """
    n = x.shape[0]
    if n == 0:
        raise ValueError("expected at least one example to draw, got none")
    h, w = x.shape[-2:]
    pad = max(1, w // 6)
    originals, deltas, advs, texts = [], [], [], ([], [], [])
    for i in range(n):
        delta = (adv[i].float() - x[i].float()).cpu()
        peak = delta.abs().max().item()
        amp = 1.0 / peak if peak > 0 else 1.0
        originals.append(to_image(x[i]))
        deltas.append(_signed_image(delta) * amp)
        advs.append(to_image(adv[i]))
        yi, pc, pa = int(y[i]), int(pred_clean[i]), int(pred_adv[i])
        texts[0].append((f"{classes[pc]} {float(conf_clean[i]):.2f}\n(true {classes[yi]})",
                         "black" if pc == yi else "red"))
        texts[1].append((f"x{amp:.3g}\nlinf {peak:.3g}", "black"))
        texts[2].append((f"{classes[pa]} {float(conf_adv[i]):.2f}",
                         "black" if pa == yi else "red"))
    gray = plt.get_cmap("gray").with_extremes(bad="white")
    diverging = plt.get_cmap("RdBu_r").with_extremes(bad="white")
    fig, axes = plt.subplots(3, 1, figsize=(1.3 * n + 0.8, 5.4))
    rows = [(originals, gray, 0.0, "original"), (deltas, diverging, -1.0, "perturbation"),
            (advs, gray, 0.0, "adversarial")]
    for ax, (tiles, cmap, vmin, label), row_text in zip(axes, rows, texts, strict=True):
        ax.imshow(_strip(tiles, pad), cmap=cmap, vmin=vmin, vmax=1, interpolation="nearest")
        for i, (text, color) in enumerate(row_text):
            ax.text(i * (w + pad) + (w - 1) / 2, -0.8, text, ha="center", va="bottom",
                    fontsize=7, color=color)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(hspace=0.45)
    return save(fig, path)


def point_attacks(x: torch.Tensor, adv: torch.Tensor, fooled: torch.Tensor, path: str | Path,
                  title: str = "") -> Path:
    """2-D inputs (N, 2): each clean point and an arrow to its adversarial example (in the
    attack's [0, 1] coordinates); fooled points in red."""
    x2 = x.detach().cpu().reshape(x.shape[0], -1)[:, :2].float().numpy()
    a2 = adv.detach().cpu().reshape(adv.shape[0], -1)[:, :2].float().numpy()
    f = fooled.detach().cpu().numpy()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(x2[:, 0], x2[:, 1], s=4, c="tab:blue", label="clean")
    d = a2 - x2
    for mask, colour, label in ((~f, "tab:gray", "not fooled"), (f, "tab:red", "fooled")):
        if mask.any():
            ax.quiver(x2[mask, 0], x2[mask, 1], d[mask, 0], d[mask, 1], angles="xy",
                      scale_units="xy", scale=1, color=colour, width=0.003, label=label)
    ax.set(title=title or "adversarial points", aspect="equal")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    return save(fig, path)


def accuracy_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                    path: str | Path, xlabel: str = "eps", title: str = "") -> Path:
    """One line per entry ``label -> (eps, accuracy)``."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for label, (eps, acc) in curves.items():
        ax.plot(list(eps), list(acc), marker="o", markersize=3, label=label)
    ax.set(xlabel=xlabel, ylabel="accuracy", ylim=(-0.02, 1.02),
           title=title or "accuracy under attack")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def roc_curves(results: Mapping[str, object], path: str | Path) -> Path:
    """Per-class ROC curves, one panel per entry ``label -> ROCResult`` (e.g. clean, adversarial).
    """
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.9), squeeze=False)
    for ax, (label, res) in zip(axes[0], results.items(), strict=True):
        cmap = plt.get_cmap("tab10")
        for k, (name, curve) in enumerate(zip(res.classes, res.curves, strict=True)):
            if curve.fpr.size:
                ax.plot(curve.fpr, curve.tpr, color=cmap(k % 10), lw=1,
                        label=f"{name} ({curve.auc:.3f})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls="--")
        ax.set(xlabel="false-positive rate", ylabel="true-positive rate",
               title=f"{label}: macro AUC {res.macro_auc:.3f}")
        ax.legend(fontsize=6, loc="lower right")
        ax.grid(alpha=0.3)
    return save(fig, path)


def transfer_heatmap(accuracy: np.ndarray, names: Sequence[str], path: str | Path) -> Path:
    """Rows: source models; columns: targets; cells: target accuracy on the source's examples."""
    k = len(names)
    fig, ax = plt.subplots(figsize=(0.9 * k + 2.4, 0.8 * k + 1.8))
    ax.imshow(accuracy, cmap="viridis", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{accuracy[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if accuracy[i, j] < 0.5 else "black")
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set(xlabel="target", ylabel="source", title="accuracy on transferred examples")
    return save(fig, path)


def norm_histogram(norms: Mapping[str, torch.Tensor], path: str | Path,
                   xlabel: str = "perturbation norm") -> Path:
    """Histograms of per-sample perturbation sizes (one entry per norm or attack)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for label, v in norms.items():
        v = v.detach().float().cpu().numpy()
        if v.size:
            ax.hist(v, bins=30, alpha=0.6, label=f"{label} (median {np.median(v):.3g})")
    ax.set(xlabel=xlabel, ylabel="points", title="successful perturbations")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)
