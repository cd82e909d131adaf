"""Data sets by name, as in-memory tensors.

>>> from advlab import data
>>> ds = data.load("digits", split="test")       # doctest: +SKIP
>>> ds.x.shape, ds.y.dtype                         # doctest: +SKIP
(torch.Size([359, 1, 8, 8]), torch.int64)

Names: mnist, fashion-mnist, cifar10 (files, found locally or downloaded when asked),
cifar10-jpeg (CIFAR-10 as local JPEG files, see ``jpeg``), digits (bundled with scikit-learn),
ring8, grid25 (generated 2-D mixtures). See ``sources`` for where files are looked for and
``docs/guide-data.md`` for the user guide.
"""

from advlab.data.base import (
    INFOS,
    DataError,
    DatasetInfo,
    DatasetNotFoundError,
    TensorSet,
    available,
    info,
)
from advlab.data.catalog import LOADERS, load, prepare
from advlab.data.sources import cache_dir, data_dir, search_roots, set_data_dir
from advlab.data.splits import subset, train_val_split
from advlab.data.toy import toy_modes

__all__ = [
    "INFOS",
    "LOADERS",
    "DataError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "TensorSet",
    "available",
    "cache_dir",
    "data_dir",
    "info",
    "load",
    "prepare",
    "search_roots",
    "set_data_dir",
    "subset",
    "toy_modes",
    "train_val_split",
]
