"""Deterministic, vectorized splits and subsets of a ``TensorSet``.

Randomness comes from a ``torch.Generator`` seeded with the caller's ``seed``; no Python loop
runs over examples. Selected examples keep their original order.
"""

from __future__ import annotations

import torch

from advlab.data.base import TensorSet


def _check_seed(seed: int) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"expected an integer seed, got {seed!r}")


def _rank_within_class(y: torch.Tensor, num_classes: int, seed: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """A random rank of each example among those of its class, and the class counts.

    rank[i] in 0..count[y[i]]-1; which example gets which rank is random (seeded).
    """
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)  # random order ...
    order = perm[torch.sort(y[perm], stable=True).indices]  # ... grouped by class
    counts = torch.bincount(y, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts  # first position of each class in `order`
    rank = torch.empty_like(y)
    rank[order] = torch.arange(len(y)) - starts[y[order]]
    return rank, counts


def stratified_mask(y: torch.Tensor, fraction: float, seed: int, num_classes: int) -> torch.Tensor:
    """A boolean mask selecting ``round(fraction * count)`` random examples of every class."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"expected a fraction in [0, 1], got {fraction}")
    rank, counts = _rank_within_class(y.cpu(), num_classes, seed)
    take = torch.round(counts.double() * fraction).long()
    return (rank < take[y.cpu()]).to(y.device)


def train_val_split(ds: TensorSet, val_fraction: float = 0.1, seed: int = 0, *,
                    stratify: bool = False) -> tuple[TensorSet, TensorSet]:
    """Split ``ds`` into (train, val) with ``round(val_fraction * len(ds))`` validation examples.

    With ``stratify=True`` each class contributes ``round(val_fraction * its count)`` instead.
    The val set's ``split`` is ``"val"``; the train part keeps ``ds.split``.
    """
    _check_seed(seed)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"expected val_fraction in (0, 1), got {val_fraction}")
    n = len(ds)
    if stratify:
        val = stratified_mask(ds.y, val_fraction, seed, ds.info.num_classes)
    else:
        n_val = round(val_fraction * n)
        g = torch.Generator().manual_seed(seed)
        val = torch.zeros(n, dtype=torch.bool)
        val[torch.randperm(n, generator=g)[:n_val]] = True
        val = val.to(ds.y.device)
    if not (val.any() and (~val).any()):
        raise ValueError(f"expected both parts non-empty; val_fraction={val_fraction} of "
                         f"{n} examples leaves {int(val.sum())} for validation")
    train_idx, val_idx = torch.nonzero(~val).squeeze(1), torch.nonzero(val).squeeze(1)
    return (TensorSet(ds.x[train_idx], ds.y[train_idx], ds.info, ds.split),
            TensorSet(ds.x[val_idx], ds.y[val_idx], ds.info, "val"))


def subset(ds: TensorSet, n: int, seed: int = 0, balanced: bool = False) -> TensorSet:
    """``n`` random examples of ``ds`` (without replacement, original order kept).

    ``balanced=True`` takes ``n / num_classes`` examples of every class: ``n`` must be a
    multiple of the number of classes, and every class must have that many examples.
    """
    _check_seed(seed)
    if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= len(ds):
        raise ValueError(f"expected n in 1..{len(ds)} (the size of the set), got {n!r}")
    k = ds.info.num_classes
    if not balanced:
        g = torch.Generator().manual_seed(seed)
        index = torch.sort(torch.randperm(len(ds), generator=g)[:n]).values
        return ds.subset(index.to(ds.y.device))
    if n % k:
        raise ValueError(f"expected n divisible by the {k} classes for a balanced subset, got {n}")
    per = n // k
    rank, counts = _rank_within_class(ds.y.cpu(), k, seed)
    short = torch.nonzero(counts < per).squeeze(1)
    if len(short):
        detail = ", ".join(f"{ds.classes[c]!r}: {int(counts[c])}" for c in short[:5].tolist())
        raise ValueError(f"expected at least {per} examples of every class for a balanced "
                         f"subset of {n}, got fewer for {len(short)} class(es) ({detail})")
    index = torch.nonzero(rank < per).squeeze(1)
    return ds.subset(index.to(ds.y.device))
