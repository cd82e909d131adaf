"""Where the downloadable data sets come from: official file names, mirrors and md5 checksums.

The checksums are those of the official downloads (as listed by torchvision's ``mnist.py`` and
``cifar.py``). They apply to downloads only: a local copy may be recompressed, so local files
are validated by their content (magic number, counts, shapes, label range) instead.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resource:
    """One file to download: its name, the mirrors to try in order, and its md5."""

    filename: str
    mirrors: tuple[str, ...]  # base URLs, each ending in "/"
    md5: str

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(m + self.filename for m in self.mirrors)


@dataclass(frozen=True)
class IdxFiles:
    """The two IDX files (images, labels) of one split, by their official names (without .gz)."""

    images: str
    labels: str


# IDX data sets: split -> official file names (the .gz names add ".gz").
IDX_SPLITS: dict[str, IdxFiles] = {
    "train": IdxFiles("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": IdxFiles("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)

# name -> the four .gz downloads, keyed by their official file name without ".gz".
DOWNLOADS: dict[str, dict[str, Resource]] = {
    "mnist": {
        "train-images-idx3-ubyte": Resource(
            "train-images-idx3-ubyte.gz", MNIST_MIRRORS, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        "train-labels-idx1-ubyte": Resource(
            "train-labels-idx1-ubyte.gz", MNIST_MIRRORS, "d53e105ee54ea40749a09fcbcd1e9432"),
        "t10k-images-idx3-ubyte": Resource(
            "t10k-images-idx3-ubyte.gz", MNIST_MIRRORS, "9fb629c4189551a2d022fa330f9573f3"),
        "t10k-labels-idx1-ubyte": Resource(
            "t10k-labels-idx1-ubyte.gz", MNIST_MIRRORS, "ec29112dd5afa0611ce80d1b7f02629c"),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": Resource(
            "train-images-idx3-ubyte.gz", FASHION_MIRRORS, "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        "train-labels-idx1-ubyte": Resource(
            "train-labels-idx1-ubyte.gz", FASHION_MIRRORS, "25c81989df183df01b3e8a0aad5dffbe"),
        "t10k-images-idx3-ubyte": Resource(
            "t10k-images-idx3-ubyte.gz", FASHION_MIRRORS, "bef4ecab320f06d8554ea6380940ec79"),
        "t10k-labels-idx1-ubyte": Resource(
            "t10k-labels-idx1-ubyte.gz", FASHION_MIRRORS, "bb300cfdad3c16e7a12a480ee83cd310"),
    },
    "cifar10": {
        "cifar-10-python.tar.gz": Resource(
            "cifar-10-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/",),
            "c58f30108f718f92721af3b95e74349a"),
    },
}

# CIFAR-10 python version: the directory inside the archive and its batch files.
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_SPLITS: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
CIFAR_META = "batches.meta"
CIFAR_ROWS_PER_BATCH = 10_000  # official value; batches.meta's num_cases_per_batch overrides it

# cifar10-jpeg (no download: a local re-encoding): <root>/JPEG_DIR/JPEG_ZIP, or the folder
# <root>/JPEG_DIR/ holding train/ and test/ (see jpeg.py).
JPEG_DIR = "cifar10-jpeg"
JPEG_ZIP = "cifar10-jpeg.zip"

# Expected sizes of the official splits (a local copy with other counts is still accepted when
# internally consistent; these serve for documentation and the real-data tests).
OFFICIAL_SIZES: dict[str, dict[str, int]] = {
    "mnist": {"train": 60_000, "test": 10_000},
    "fashion-mnist": {"train": 60_000, "test": 10_000},
    "cifar10": {"train": 50_000, "test": 10_000},
    "cifar10-jpeg": {"train": 50_000, "test": 10_000},
}
