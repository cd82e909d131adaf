"""What a data set is: its static description (``DatasetInfo``) and an in-memory tensor set."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

MNIST_CLASSES = tuple(str(i) for i in range(10))
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


class DataError(ValueError):
    """A data file that exists but cannot be used: bad format, truncated, inconsistent, unsafe.

    The message names the file and the problem; no partial data set is ever returned.
    """


class DataReadError(DataError):
    """A data file or directory that exists but cannot be read (permissions, I/O error).

    Unlike other data errors the file itself may be sound: the remedy is to make it
    readable, not to remove it.
    """


def read_error(path: object, err: OSError) -> DataReadError:
    """``DataReadError("cannot read <path>: <cause>")`` for an ``OSError`` raised reading ``path``.

    The cause is the system's description in lower case ("permission denied").
    """
    cause = err.strerror.lower() if err.strerror else (str(err) or type(err).__name__)
    return DataReadError(f"cannot read {path}: {cause}")


class DatasetNotFoundError(FileNotFoundError):
    """No copy of a data set was found; the message lists every place looked at."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a named data set (no I/O needed to know it)."""

    name: str
    kind: str  # "image" (x: (N, C, H, W) in [0, 1]) or "points" (x: (N, D), unbounded)
    shape: tuple[int, ...]  # one example's shape: (C, H, W) or (D,)
    classes: tuple[str, ...]  # class (or mode) names, index = label
    needs_download: bool  # False for data embedded in a package or generated
    # The input domain: every value of x lies in [lo, hi]. The pixel box (0, 1) for images; a
    # stated box for the 2-D toys. Attacks run on pixels in [0, 1]: a model of another domain
    # is evaluated through advlab.wrap(model, bounds=...), its ε in the data's units.
    bounds: tuple[float, float] = (0.0, 1.0)
    # How the set is named wherever it is shown with a result ("CIFAR-10 (JPEG re-encoding)");
    # the name when empty.
    title: str = ""
    # The set whose images these are, encoded otherwise (cifar10-jpeg: cifar10): a model built
    # for this set takes the family's defaults (normalization). The name when empty.
    family: str = ""
    # True for a set read only from the user's own files: no official download exists.
    local_only: bool = False

    def __post_init__(self) -> None:
        for field in ("title", "family"):
            if not getattr(self, field):
                object.__setattr__(self, field, self.name)

    @property
    def unit_box(self) -> bool:
        """True when x lives in the pixel box [0, 1] (attacks need no conversion)."""
        return tuple(self.bounds) == (0.0, 1.0)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_features(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


INFOS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", "image", (1, 28, 28), MNIST_CLASSES, True, title="MNIST"),
    "fashion-mnist": DatasetInfo("fashion-mnist", "image", (1, 28, 28), FASHION_CLASSES, True,
                                 title="Fashion-MNIST"),
    "cifar10": DatasetInfo("cifar10", "image", (3, 32, 32), CIFAR10_CLASSES, True,
                           title="CIFAR-10"),
    # the 60,000 CIFAR-10 images as JPEG files (quality 75): pixels differ from cifar10's
    "cifar10-jpeg": DatasetInfo("cifar10-jpeg", "image", (3, 32, 32), CIFAR10_CLASSES, False,
                                title="CIFAR-10 (JPEG re-encoding)", family="cifar10",
                                local_only=True),
    "digits": DatasetInfo("digits", "image", (1, 8, 8), MNIST_CLASSES, False),
    # the toys' boxes hold every mode with > 40 standard deviations to spare (toy.py)
    "ring8": DatasetInfo("ring8", "points", (2,), tuple(f"mode{i}" for i in range(8)), False,
                         (-1.5, 1.5)),
    "grid25": DatasetInfo("grid25", "points", (2,), tuple(f"mode{i}" for i in range(25)), False,
                          (-5.0, 5.0)),
}


def info(name: str) -> DatasetInfo:
    """The ``DatasetInfo`` of a named data set; unknown names list the valid ones."""
    if name not in INFOS:
        import difflib

        close = difflib.get_close_matches(str(name), list(INFOS), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown dataset {name!r}.{hint} Valid datasets: {', '.join(INFOS)}")
    return INFOS[name]


def available() -> list[str]:
    return list(INFOS)


class TensorSet(Dataset):
    """An in-memory data set: ``x`` float32 (images in [0, 1]), ``y`` int64, and its info."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, info: DatasetInfo, split: str) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{info.name}/{split}: {x.shape[0]} examples but {y.shape[0]} labels")
        self.x = x
        self.y = y
        self.info = info
        self.split = split

    @property
    def classes(self) -> tuple[str, ...]:
        return self.info.classes

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def subset(self, index: torch.Tensor) -> TensorSet:
        """The examples at ``index`` (a LongTensor), as a new set of the same info and split."""
        return TensorSet(self.x[index], self.y[index], self.info, self.split)

    def __repr__(self) -> str:
        return (f"TensorSet({self.info.name!r}, split={self.split!r}, n={len(self)}, "
                f"x={tuple(self.x.shape)}, classes={self.info.num_classes})")
