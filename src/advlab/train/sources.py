"""What ``fit`` trains and evaluates on: a data set of advlab's, or what a user already has.

``as_tensor_set`` accepts an advlab ``TensorSet``, a tuple ``(x, y)`` of tensors, a
``torch.utils.data.TensorDataset`` of ``(x, y)``, or a ``DataLoader`` yielding ``(x, y)``
batches (read once into memory: ``fit`` shuffles and batches by itself, seeded, so that a
resumed run repeats the same order). Inputs are pixels in [0, 1] as for every advlab model;
labels are class indices.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from advlab.data.base import DatasetInfo, TensorSet


def as_tensor_set(data: Any, what: str = "train") -> TensorSet:
    """``data`` as a ``TensorSet`` (see the module docstring); a clear error for anything else."""
    if isinstance(data, TensorSet) or (hasattr(data, "x") and hasattr(data, "y")
                                       and hasattr(data, "info")):
        return data
    from torch.utils.data import DataLoader, TensorDataset

    if isinstance(data, DataLoader):
        xs, ys = [], []
        for batch in data:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError(f"expected the {what} DataLoader to yield (x, y) batches, got "
                                 f"{type(batch).__name__}")
            xs.append(batch[0])
            ys.append(batch[1])
        if not xs:
            raise ValueError(f"expected at least one batch from the {what} DataLoader, got none")
        data = (torch.cat(xs), torch.cat(ys))
    elif isinstance(data, TensorDataset):
        if len(data.tensors) < 2:
            raise ValueError(f"expected the {what} TensorDataset to hold (x, y), got "
                             f"{len(data.tensors)} tensor(s)")
        data = data.tensors[:2]
    if not (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(t, Tensor) for t in data)):
        raise ValueError(f"expected {what} data as an advlab data set, a tuple (x, y) of "
                         f"tensors, a TensorDataset or a DataLoader of (x, y), got "
                         f"{type(data).__name__}")
    x, y = data
    if not x.is_floating_point():
        raise ValueError(f"expected {what} x to be floating point (pixels in [0, 1]), got "
                         f"{x.dtype}")
    if y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
        raise ValueError(f"expected {what} y of shape ({x.shape[0]},) holding class indices, "
                         f"got {y.dtype} {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"expected at least one {what} example, got none")
    k = int(y.max()) + 1
    info = DatasetInfo(f"user-{what}", "image" if x.dim() == 4 else "points",
                       tuple(x.shape[1:]), tuple(str(i) for i in range(k)), False)
    return TensorSet(x, y.long(), info, what)
