"""Small models and data shared by the attack tests (cached: trained once per test session).

Everything here is seeded and CPU-sized: sklearn's 8x8 digits (no download), a 64-64-10 MLP
trained in about a second, and an optional MNIST subset when ADVLAB_DATA points to the IDX files.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def single_thread():
    """Run a test on one intra-op thread, restored after: these models are tiny and the CI
    machine's 2 cores are shared, where thread oversubscription makes them 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def digits(binarize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn digits as (1797, 1, 8, 8) float32 in [0, 1] and int64 labels.

    ``binarize`` pushes most pixels to exactly 0 or 1 (like MNIST, where 83% are), keeping a few
    grey levels: x -> clip(2 * x - 0.5, 0, 1).
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if binarize:
        x = (2 * x - 0.5).clamp(0, 1)
    return x, torch.tensor(data.target, dtype=torch.int64)


def mlp(d_in: int, hidden: int = 64, classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(d_in, hidden), nn.ReLU(),
                         nn.Linear(hidden, classes))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 15,
          seed: int = 0) -> nn.Module:
    """Adam, batch 128, ~150 steps on digits (about a second); returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@functools.cache
def trained_digits(binarize: bool = False, hidden: int = 64):
    """(model, x_test, y_test): an MLP trained on 1297 digits, 500 held-out test digits."""
    torch.manual_seed(0)
    x, y = digits(binarize)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train_idx, test_idx = perm[:1297], perm[1297:]
    model = train(mlp(64, hidden), x[train_idx], y[train_idx])
    for p in model.parameters():
        p.requires_grad_(True)
    return model, x[test_idx], y[test_idx]


def correct_subset(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int):
    """The first ``n`` test points the model classifies correctly."""
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return x[ok][:n], y[ok][:n]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@functools.cache
def mnist_subset(n_train: int = 5000, n_test: int = 500):
    """(model, x_test, y_test): an MLP 784-100-10 on an MNIST subset; skips without ADVLAB_DATA."""
    root = os.environ.get("ADVLAB_DATA")
    folder = Path(root) / "mnist" if root else None
    if folder is None or not (folder / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("needs MNIST under $ADVLAB_DATA/mnist")
    xs = _read_idx(folder / "train-images-idx3-ubyte.gz")[:n_train]
    ys = _read_idx(folder / "train-labels-idx1-ubyte.gz")[:n_train]
    xt = _read_idx(folder / "t10k-images-idx3-ubyte.gz")[:n_test]
    yt = _read_idx(folder / "t10k-labels-idx1-ubyte.gz")[:n_test]

    def tensors(a, b):
        return (torch.tensor(a, dtype=torch.float32).unsqueeze(1) / 255.0,
                torch.tensor(b, dtype=torch.int64))

    (x, y), (x_test, y_test) = tensors(xs, ys), tensors(xt, yt)
    torch.manual_seed(0)
    model = train(mlp(784, 100), x, y, epochs=10)
    return model, x_test, y_test


class Linear(nn.Module):
    """logits = W x + b on flattened inputs: the analytic test case."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)  # (K, D)
        self.bias = nn.Parameter(bias)  # (K,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


class SmallCNN(nn.Module):
    """A conv net with BatchNorm and Dropout: train/eval mode changes its outputs."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 8 * 8, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
