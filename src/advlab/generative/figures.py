"""Figures of generative-model runs (matplotlib, Agg backend, PNG files).

Sample grids, reconstructions, loss curves, 2-D latent spaces, interpolations and, for the 2-D
toys, samples over the true modes at several epochs (the mode-collapse picture).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from advlab.report.figures import save, to_image  # noqa: E402


def _tile(x: torch.Tensor, nrow: int, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> one (rows * (H + pad), nrow * (W + pad)[, C]) mosaic."""
    x = x.detach().cpu().clamp(0, 1)
    n, c, h, w = x.shape
    rows = (n + nrow - 1) // nrow
    canvas = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):  # at most a few hundred small images: a loop over tiles is fine here
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[:, top:top + h, left:left + w] = x[i]
    return to_image(canvas)


def _show(ax, mosaic: np.ndarray) -> None:
    ax.imshow(mosaic, cmap="gray" if mosaic.ndim == 2 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.axis("off")


def image_grid(x: torch.Tensor, path: str | Path, nrow: int = 8, title: str | None = None
               ) -> Path:
    """A grid of images (N, C, H, W) in [0, 1]."""
    mosaic = _tile(x, nrow)
    fig, ax = plt.subplots(figsize=(0.9 * nrow, 0.9 * ((len(x) + nrow - 1) // nrow) + 0.4))
    _show(ax, mosaic)
    if title:
        ax.set_title(title, fontsize=9)
    return save(fig, path)


def sample_grids(snapshots: Sequence[tuple[int, torch.Tensor]], path: str | Path,
                 n: int = 16, nrow: int = 8) -> Path:
    """One row-block per snapshot: the same fixed codes decoded after several epochs."""
    k = len(snapshots)
    fig, axes = plt.subplots(k, 1, figsize=(0.9 * nrow, (0.9 * ((n + nrow - 1) // nrow) + 0.35)
                                            * k), squeeze=False)
    for ax, (epoch, samples) in zip(axes[:, 0], snapshots):
        _show(ax, _tile(samples[:n], nrow))
        ax.set_title(f"epoch {epoch}", fontsize=8)
    return save(fig, path)


def reconstructions(x: torch.Tensor, x_hat: torch.Tensor, path: str | Path) -> Path:
    """Originals (top row) above their reconstructions (bottom row)."""
    n = x.shape[0]
    mosaic = _tile(torch.cat([x.cpu(), x_hat.cpu()]), n)
    fig, ax = plt.subplots(figsize=(0.9 * n, 2.2))
    _show(ax, mosaic)
    ax.set_title("top: data, bottom: reconstruction", fontsize=9)
    return save(fig, path)


def loss_curves(history: Sequence[dict[str, float]], keys: Sequence[str], path: str | Path,
                title: str = "training losses") -> Path:
    """One panel per key present in the history (mean per epoch)."""
    keys = [k for k in keys if history and k in history[0]]
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(3.6 * max(len(keys), 1), 3.2),
                             squeeze=False)
    for ax, k in zip(axes[0], keys):
        ax.plot(epochs, [r[k] for r in history], marker="o", markersize=3)
        ax.set(xlabel="epoch", title=k)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def latent_scatter(codes: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
                   path: str | Path, title: str = "latent space") -> Path:
    """Codes (N, d) coloured by class; the first two principal components when d > 2."""
    z = codes.detach().double().cpu()
    how = "latent"
    if z.shape[1] > 2:
        z = z - z.mean(0)
        _, _, v = torch.linalg.svd(z, full_matrices=False)
        z = z @ v[:2].T
        how = "PCA of latent"
    elif z.shape[1] == 1:
        z = torch.cat([z, torch.zeros_like(z)], 1)
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    sc = ax.scatter(z[:, 0], z[:, 1], c=labels.cpu().numpy(), cmap="tab10", s=4, alpha=0.7,
                    vmin=-0.5, vmax=len(classes) - 0.5)
    cbar = fig.colorbar(sc, ax=ax, ticks=range(len(classes)))
    cbar.ax.set_yticklabels(classes, fontsize=7)
    ax.set(title=f"{title} ({how})", xlabel="component 1", ylabel="component 2")
    return save(fig, path)


def interpolations(rows: torch.Tensor, path: str | Path) -> Path:
    """Rows of decoded linear interpolations: (R, S, C, H, W), S steps from one code to the
    other."""
    r, s = rows.shape[:2]
    mosaic = _tile(rows.reshape(r * s, *rows.shape[2:]), s)
    fig, ax = plt.subplots(figsize=(0.9 * s, 0.9 * r + 0.4))
    _show(ax, mosaic)
    ax.set_title("linear interpolation between latent codes", fontsize=9)
    return save(fig, path)


def toy_snapshots(snapshots: Sequence[tuple[int, torch.Tensor]], centers: torch.Tensor,
                  sigma: float, path: str | Path, real: torch.Tensor | None = None,
                  scores: Sequence[str] | None = None) -> Path:
    """Samples (N, 2) after several epochs over the true mode centres (red crosses) and their
    3-sigma circles; the first panel shows real data when given."""
    panels = ([("data", real)] if real is not None else []) + [
        (f"epoch {e}", s) for e, s in snapshots]
    k = len(panels)
    c = centers.cpu().numpy()
    span = float(np.abs(c).max()) * 1.35 + 0.2
    fig, axes = plt.subplots(1, k, figsize=(2.8 * k, 3.0), squeeze=False)
    for i, (ax, (name, pts)) in enumerate(zip(axes[0], panels)):
        p = pts.detach().cpu().numpy()
        ax.scatter(p[:, 0], p[:, 1], s=1.5, alpha=0.35, color="tab:blue")
        ax.scatter(c[:, 0], c[:, 1], marker="x", s=18, color="tab:red", linewidths=1)
        for cx, cy in c:
            ax.add_patch(plt.Circle((cx, cy), 3 * sigma, fill=False, color="tab:red", lw=0.5))
        ax.set_xlim(-span, span)
        ax.set_ylim(-span, span)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=6)
        label = name
        j = i - (1 if real is not None else 0)
        if scores is not None and 0 <= j < len(scores):
            label += f"\n{scores[j]}"
        ax.set_title(label, fontsize=8)
    return save(fig, path)
