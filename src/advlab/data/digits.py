"""``digits``: scikit-learn's 8x8 handwritten digits (1797 images, shipped with sklearn).

Pixels are 0..16 in the source and are divided by 16, so x is float32 (N, 1, 8, 8) in [0, 1].
sklearn has no train/test split for this set; advlab's is stratified and fixed: with seed 0,
``round(0.2 * count)`` random images of every class form the test split and the rest the train
split (1438 train / 359 test).
"""

from __future__ import annotations

import numpy as np
import torch

from advlab.data.base import TensorSet, info
from advlab.data.splits import stratified_mask

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits(split: str) -> TensorSet:
    """The ``train`` or ``test`` split of sklearn's digits."""
    if split not in ("train", "test"):
        raise ValueError(f"expected split 'train' or 'test', got {split!r}")
    from sklearn.datasets import load_digits as sk_load_digits  # bundled data, no download

    bunch = sk_load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)  # (1797, 8, 8), values 0..16
    x = torch.from_numpy(images).div_(16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    meta = info("digits")
    test = stratified_mask(y, TEST_FRACTION, SPLIT_SEED, meta.num_classes)
    keep = test if split == "test" else ~test
    return TensorSet(x[keep].contiguous(), y[keep], meta, split)
