"""Data sets by name: ``load`` (find, validate, convert) and ``prepare`` (download when asked).

Every name of ``advlab.data.base.INFOS`` has a loader in ``LOADERS``; ``load`` dispatches to it.
Images come back as float32 (N, C, H, W) in [0, 1] and labels as int64; see ``sources`` for
where files are looked for and ``resources`` for what is downloaded from where.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from advlab.data import jpeg
from advlab.data.archive import safe_extract
from advlab.data.base import (
    DataError,
    DataReadError,
    DatasetInfo,
    DatasetNotFoundError,
    TensorSet,
    info,
    read_error,
)
from advlab.data.cache import read_idx_cached
from advlab.data.cifar import read_split
from advlab.data.digits import load_digits
from advlab.data.fetch import fetch, md5sum
from advlab.data.idx import read_idx
from advlab.data.resources import CIFAR_DIR, CIFAR_SPLITS, DOWNLOADS, IDX_SPLITS
from advlab.data.sources import LAYOUTS, check_root, download_root, locate, locate_in
from advlab.data.toy import TOY_NAMES, load_toy
from advlab.registry import Registry

log = logging.getLogger(__name__)

SPLITS = ("train", "test")

# name -> loader(split=, root=, download=, n=) -> TensorSet
LOADERS: Registry[TensorSet] = Registry("dataset")
# name -> preparer(target root) -> directory holding the files
PREPARERS: dict[str, Callable[[Path], Path]] = {}


def load(name: str, split: str = "train", root: str | os.PathLike | None = None,
         download: bool = False, n: int | None = None) -> TensorSet:
    """Load the ``split`` ("train" or "test") of the data set ``name`` as a ``TensorSet``.

    ``root``: a directory to search instead of the data directory and cache (see ``sources``).
    ``download``: fetch the files if they are not found (only then is the network used); a bool.
    ``n``: number of points for the generated sets (ring8, grid25), at most
    ``toy.MAX_POINTS``; other sets do not take it (use ``data.subset``).
    Raises ``DatasetNotFoundError`` (listing where it looked), ``DataError`` (bad or unreadable
    files, a root that is not a directory) or ``ValueError`` (bad arguments).
    """
    info(name)  # unknown names: ValueError listing the valid ones
    if split not in SPLITS:
        raise ValueError(f"expected split 'train' or 'test', got {split!r}")
    check_root(root)
    if not isinstance(download, bool):
        raise ValueError(f"expected download as a bool (True or False), got {download!r}")
    return LOADERS.get(name)(split=split, root=root, download=download, n=n)


def prepare(name: str, root: str | os.PathLike | None = None) -> Path | None:
    """Make ``name`` available offline: download (md5-checked) the files that are missing.

    Files go to ``<root>/<name>/`` (CIFAR-10: ``<root>/cifar10/cifar-10-batches-py/``), where
    root is the argument, else the data directory, else the cache dir. Files already there are
    validated and kept; an invalid one raises ``DataError`` (it is not overwritten). Returns
    the directory, or None for sets that need no download (digits, ring8, grid25).
    A set with no download (``info(name).local_only``: cifar10-jpeg) is looked for as ``load``
    does and decoded into the cache; returns the copy found (its zip or folder), and raises
    ``DatasetNotFoundError`` saying where to put it when there is none.
    """
    meta = info(name)
    check_root(root)
    if meta.local_only:
        return _check_local(name, root)
    if not meta.needs_download:
        log.info("%s needs no download", name)
        return None
    target = download_root(root)
    existing = _complete_copy(name, target)
    if existing is not None:
        log.info("%s is present and valid in %s", name, existing)
        return existing
    try:
        return PREPARERS[name](target)
    except PermissionError as err:
        raise DataError(f"cannot write {name} into {target} ({err}); pass a writable "
                        "root to download into") from err


def _complete_copy(name: str, target_root: Path) -> Path | None:
    """A directory under ``target_root`` (any layout) with all files of both splits, validated."""
    if name == "cifar10":
        files, gz = _cifar_files(), False
    else:
        files = tuple(f for s in SPLITS for f in (IDX_SPLITS[s].images, IDX_SPLITS[s].labels))
        gz = True
    for rel, _ in LAYOUTS[name]:
        found, _ = locate_in(name, files, target_root / rel, gz=gz)
        if found is None:
            continue
        try:  # an invalid copy is reported, never overwritten
            for split in SPLITS:
                if name == "cifar10":
                    read_split(target_root / rel, CIFAR_SPLITS[split])
                else:
                    read_idx_split(found, split, info(name))
        except DataReadError:
            raise  # the file may be sound: it needs reading rights, not removing
        except DataError as err:
            raise DataError(f"{err}; remove it and run prepare again") from err
        return target_root / rel
    return None


def _check_local(name: str, root) -> Path:
    """The copy of a local-only set that ``load`` reads, both splits decoded (and cached)."""
    sources = {split: jpeg.locate(split, root, download=True) for split in SPLITS}
    for split, source in sources.items():
        jpeg.read_split(source, split)
    log.info("%s is present and valid in %s", name, sources["train"].path)
    return sources["train"].path


def _reject_n(name: str, n: int | None) -> None:
    if n is not None:
        raise ValueError(f"n= is only for generated data sets ({', '.join(TOY_NAMES)}), got "
                         f"n={n} for {name!r}; use data.subset(ds, n) instead")


def _find_or_fetch(name: str, split: str, files: tuple[str, ...], root, download: bool, *,
                   gz: bool):
    try:
        return locate(name, split, files, root, gz=gz)
    except DatasetNotFoundError:
        if not download:
            raise
    prepare(name, root)
    return locate(name, split, files, download_root(root), gz=gz)


def _images_to_tensor(images: np.ndarray, meta: DatasetInfo) -> torch.Tensor:
    """uint8 (N, H, W) or (N, C, H, W) -> float32 (N, C, H, W) in [0, 1]."""
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0)
    return x.reshape(len(images), *meta.shape)


def _check_labels(labels: np.ndarray, meta: DatasetInfo, source: Path) -> None:
    bad = (labels < 0) | (labels >= meta.num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{source}: label {int(labels[i])} at index {i} is out of range "
                        f"0..{meta.num_classes - 1}")


def read_idx_split(files: dict[str, Path], split: str, meta: DatasetInfo
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The validated (uint8 images (N, H, W), int64 labels (N,)) of one IDX split."""
    names = IDX_SPLITS[split]
    img_path, lab_path = files[names.images], files[names.labels]
    images = read_idx_cached(img_path, ndim=3)
    labels = read_idx_cached(lab_path, ndim=1)
    if images.shape[1:] != meta.shape[1:]:
        raise DataError(f"{img_path}: expected images of size {meta.shape[1:]}, "
                        f"got {images.shape[1:]}")
    if len(images) != len(labels):
        raise DataError(f"count mismatch: {img_path} holds {len(images)} images but "
                        f"{lab_path} holds {len(labels)} labels")
    if len(images) == 0:
        raise DataError(f"{img_path}: holds no images")
    _check_labels(labels, meta, lab_path)
    return images, labels.astype(np.int64)


def _load_idx(name: str):
    def loader(split: str, root, download: bool, n: int | None) -> TensorSet:
        _reject_n(name, n)
        meta = info(name)
        names = IDX_SPLITS[split]
        found = _find_or_fetch(name, split, (names.images, names.labels), root, download,
                               gz=True)
        images, labels = read_idx_split(found.files, split, meta)
        return TensorSet(_images_to_tensor(images, meta), torch.from_numpy(labels), meta, split)

    return loader


def _prepare_idx(name: str):
    def preparer(target_root: Path) -> Path:
        target = target_root / name
        target.mkdir(parents=True, exist_ok=True)
        for stem, resource in DOWNLOADS[name].items():
            found, _ = locate_in(name, (stem,), target, gz=True)
            if found is not None:
                try:
                    read_idx(found[stem], ndim=3 if "images" in stem else 1)
                    log.info("%s is present and valid", found[stem])
                    continue
                except DataReadError:
                    raise
                except DataError as err:
                    raise DataError(f"{err}; remove it and run prepare again") from err
            path = fetch(resource, target)
            read_idx(path, ndim=3 if "images" in stem else 1)  # md5 matched: content is sound
        return target

    return preparer


def _cifar_files() -> tuple[str, ...]:
    return CIFAR_SPLITS["train"] + CIFAR_SPLITS["test"]


def _load_cifar(split: str, root, download: bool, n: int | None) -> TensorSet:
    _reject_n("cifar10", n)
    meta = info("cifar10")
    found = _find_or_fetch("cifar10", split, CIFAR_SPLITS[split], root, download, gz=False)
    images, labels = read_split(found.directory, CIFAR_SPLITS[split])
    return TensorSet(_images_to_tensor(images, meta), torch.from_numpy(labels), meta, split)


def _prepare_cifar(target_root: Path) -> Path:
    target = target_root / "cifar10"
    target.mkdir(parents=True, exist_ok=True)
    final = target / CIFAR_DIR
    if final.exists():  # a complete copy was returned by prepare before getting here
        _, why = locate_in("cifar10", _cifar_files(), final, gz=False)
        raise DataError(f"{final} exists but is incomplete ({why}); remove it and run "
                        "prepare again")
    resource = DOWNLOADS["cifar10"]["cifar-10-python.tar.gz"]
    archive = target / resource.filename
    try:
        digest = md5sum(archive) if archive.is_file() else None
    except OSError as err:
        raise read_error(archive, err) from err
    if digest is not None and digest != resource.md5:
        log.warning("%s failed its checksum (md5 %s, expected %s: a partial or corrupt "
                    "download?); downloading it again", archive, digest, resource.md5)
    if digest != resource.md5:
        archive = fetch(resource, target)
    staging = Path(tempfile.mkdtemp(dir=target, prefix=".extract-"))
    try:
        safe_extract(archive, staging)
        extracted = staging / CIFAR_DIR
        if not extracted.is_dir():
            raise DataError(f"{archive}: has no {CIFAR_DIR}/ directory")
        for split in SPLITS:
            read_split(extracted, CIFAR_SPLITS[split])
        os.replace(extracted, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


for _name in ("mnist", "fashion-mnist"):
    LOADERS.add(_name, _load_idx(_name))
    PREPARERS[_name] = _prepare_idx(_name)
LOADERS.add("cifar10", _load_cifar)
PREPARERS["cifar10"] = _prepare_cifar


def _load_cifar_jpeg(split: str, root, download: bool, n: int | None) -> TensorSet:
    _reject_n(jpeg.NAME, n)  # download=True: a not-found error starts with why there is none
    meta = info(jpeg.NAME)
    images, labels = jpeg.read_split(jpeg.locate(split, root, download=download), split)
    return TensorSet(_images_to_tensor(images, meta), torch.from_numpy(labels), meta, split)


LOADERS.add(jpeg.NAME, _load_cifar_jpeg)


def _load_digits(split: str, root, download: bool, n: int | None) -> TensorSet:
    _reject_n("digits", n)
    return load_digits(split)


def _load_toy(name: str):
    def loader(split: str, root, download: bool, n: int | None) -> TensorSet:
        return load_toy(name, split, n)

    return loader


LOADERS.add("digits", _load_digits)
for _name in TOY_NAMES:
    LOADERS.add(_name, _load_toy(_name))
