"""``cifar10-jpeg``: CIFAR-10 as JPEG files in an ImageFolder tree, zipped or not, decoded once.

The source is a local re-encoding of CIFAR-10 with no official download: the 60,000 images as
32x32 RGB JPEG files (quality 75) in torchvision's ImageFolder layout, the official split kept,

    train/<class>/<name>.jpg     5,000 per class
    test/<class>/<name>.jpg      1,000 per class

with one folder per CIFAR-10 class (airplane ... truck). In each root of
``sources.search_roots`` it is looked for as ``<root>/cifar10-jpeg/cifar10-jpeg.zip``, then as
the folder ``<root>/cifar10-jpeg/`` holding ``train/`` and ``test/``. A zip whose tree sits
under one top folder (``CIFAR-10-images/train/...``, as a repository archive is) is read too.

Labels are the class folders' positions in ``CIFAR10_CLASSES`` (the ``cifar10`` order); within
a class, images come in the order of their file names (numbers by value). Nothing is extracted:
zip members are read in memory, at most ``MAX_IMAGE_BYTES`` each. A zip that cannot be read
(truncated, corrupt, a bad CRC), a missing, empty or unexpected class folder, a file that is
not a JPEG, or an image that is not 32x32 raises ``DataError`` naming the file (and member).

Decoding (Pillow, one image at a time into one preallocated batch) takes about 11 s for the
full set; each split is then cached as a uint8 ``.npy`` under ``<cache dir>/decoded/`` (see
``cache``), keyed by the source's path, size and modification time and by every image's name
and CRC-32 and size (zip) or size and modification time (folder): a changed source is a miss.
"""

from __future__ import annotations

import io
import logging
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from advlab.data.base import CIFAR10_CLASSES, DataError, DatasetNotFoundError, read_error
from advlab.data.cache import keyed_entry, load_entry, save_entry
from advlab.data.resources import JPEG_DIR, JPEG_ZIP
from advlab.data.sources import ENV_VAR, path_kind, search_roots

log = logging.getLogger(__name__)

NAME = "cifar10-jpeg"
SIZE = 32  # pixels, height and width
SUFFIXES = (".jpg", ".jpeg")
MAX_IMAGE_BYTES = 1 << 20  # a 32x32 JPEG is about 1 KB; a member declaring more is refused
CACHE_VERSION = 1  # bump when decoding changes: entries of older versions are then misses
SPLIT_NAMES = ("train", "test")

NOT_DOWNLOADABLE = (
    f"{NAME} is a local JPEG re-encoding of CIFAR-10 with no official download: put "
    f"{JPEG_ZIP} (or its train/ and test/ folders) in <root>/{JPEG_DIR}/, the root being "
    f"--data-dir, ${ENV_VAR} or the cache dir (for the official pixels use cifar10, which "
    "`advlab data prepare cifar10` downloads)"
)


@dataclass(frozen=True)
class Source:
    """A copy of the set: a zip file or a folder holding ``train/`` and ``test/``."""

    path: Path
    kind: str  # "zip" or "folder"


def locate(split: str, root: str | os.PathLike | None = None, *,
           download: bool = False) -> Source:
    """The first copy holding ``split`` in the search roots (the zip first in each root).

    Raises ``DatasetNotFoundError``, one line naming every path looked for and how to get a
    copy (``download``: the caller asked for a download, so the line starts with why not).
    """
    looked: list[str] = []
    for base, _ in search_roots(root):
        directory = base / JPEG_DIR
        if path_kind(directory / JPEG_ZIP) == "a file":
            return Source(directory / JPEG_ZIP, "zip")
        if path_kind(directory / split) == "directory":
            return Source(directory, "folder")
        looked.append(f"{directory / JPEG_ZIP} or {directory / split}/")
    where = "; ".join(looked)
    if download:
        raise DatasetNotFoundError(f"{NOT_DOWNLOADABLE}. No copy found: expected {where}")
    raise DatasetNotFoundError(f"dataset {NAME!r} (split {split!r}) not found: expected "
                               f"{where}. {NOT_DOWNLOADABLE}")


def read_split(source: Source, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split as (images uint8 (N, 3, 32, 32), labels int64 (N,)), through the cache."""
    if source.kind == "zip":
        return _read_zip(source.path, split)
    return _read_folder(source.path, split)


# --- listing ---------------------------------------------------------------------------------

def _hidden(rel: str) -> bool:
    """A name that tools add beside the data (``.DS_Store``, ``__MACOSX/``): skipped."""
    return any(p.startswith(".") or p == "__MACOSX" for p in rel.split("/"))


def _order(name: str) -> tuple[int, int, str]:
    """Sort key: numeric names ("2.jpg" before "10.jpg") by value, then any other by name."""
    stem = name.rsplit(".", 1)[0]
    return (0, int(stem), name) if re.fullmatch(r"\d+", stem) else (1, 0, name)


def index(entries: Iterable[tuple[str, object]], where: str, split: str
          ) -> list[tuple[object, int]]:
    """``(handle, label)`` of each image of one split, in class order then file-name order.

    ``entries``: ``(path relative to the split folder, handle)`` of every file under it.
    Raises ``DataError`` (naming ``where``) for a file outside a class folder, a folder that is
    not a CIFAR-10 class, a file that is not ``.jpg``/``.jpeg``, or a class with no image.
    """
    classes = {c: i for i, c in enumerate(CIFAR10_CLASSES)}
    per_class: dict[str, list[tuple[str, object]]] = {c: [] for c in CIFAR10_CLASSES}
    for rel, handle in entries:
        if _hidden(rel):
            continue
        parts = rel.split("/")
        if len(parts) != 2:
            raise DataError(f"{where}: expected {split}/<class>/<image>.jpg, got {split}/{rel}")
        cls, name = parts
        if cls not in classes:
            raise DataError(f"{where}: {split}/{rel}: expected a class folder "
                            f"({', '.join(CIFAR10_CLASSES)}), got {cls}/")
        if not name.lower().endswith(SUFFIXES):
            raise DataError(f"{where}: expected JPEG files ({', '.join(SUFFIXES)}), got "
                            f"{split}/{rel}")
        per_class[cls].append((name, handle))
    missing = [c for c, files in per_class.items() if not files]
    if missing:
        raise DataError(f"{where}: expected a folder of images per class in {split}/, missing "
                        f"or empty: {', '.join(missing)}")
    return [(handle, classes[c]) for c in CIFAR10_CLASSES
            for _, handle in sorted(per_class[c], key=lambda e: _order(e[0]))]


def _zip_prefix(names: list[str]) -> str:
    """``""`` when the tree starts at the zip's top, else its one top folder + "/"."""
    visible = [n for n in names if not _hidden(n)]
    if any(n.startswith(tuple(s + "/" for s in SPLIT_NAMES)) for n in visible):
        return ""
    tops = {n.split("/", 1)[0] for n in visible if "/" in n}
    return tops.pop() + "/" if len(tops) == 1 else ""


# --- decoding --------------------------------------------------------------------------------

def decode(raw: bytes, where: str) -> np.ndarray:
    """The pixels (32, 32, 3) uint8 of the JPEG file ``raw``; ``DataError`` naming ``where``."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw), formats=("JPEG",)) as im:
            size = im.size
            if size == (SIZE, SIZE):  # checked before any pixel is decoded
                return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{where}: not a readable JPEG image "
                        f"({' '.join(str(err).split()) or type(err).__name__})") from err
    raise DataError(f"{where}: expected a {SIZE}x{SIZE} image, got {size[0]}x{size[1]}")


def _decode_all(handles: list, read: Callable[[object], bytes],
                where: Callable[[object], str]) -> np.ndarray:
    """(N, 3, 32, 32) uint8: each file read and decoded into one preallocated batch."""
    out = np.empty((len(handles), SIZE, SIZE, 3), dtype=np.uint8)  # (N, H, W, C)
    for i, h in enumerate(handles):  # one file at a time: I/O and Pillow, not arithmetic
        out[i] = decode(read(h), where(h))
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))  # (N, C, H, W)


def _cached_or_decoded(key: bytes, split: str, handles: list,
                       read: Callable[[object], bytes],
                       where: Callable[[object], str]) -> np.ndarray:
    entry = keyed_entry(f"{NAME}-{split}", key)
    shape = (len(handles), 3, SIZE, SIZE)
    images = load_entry(entry, shape, np.dtype(np.uint8))
    if images is None:
        log.info("decoding %d %s images of %s (once; cached in %s)", len(handles), split,
                 NAME, entry.parent)
        images = _decode_all(handles, read, where)
        save_entry(entry, images)
    return images


def _key(source: Path, split: str, items: Iterable[object]) -> bytes:
    st = source.stat()
    head = f"{CACHE_VERSION}\0{source.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{split}"
    return "\0".join([head, *map(repr, items)]).encode()


# --- a zip -----------------------------------------------------------------------------------

def _read_zip(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise DataError(f"{path}: not a readable zip file ({err}; truncated or corrupt?)") \
            from err
    except OSError as err:
        raise read_error(path, err) from err
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        prefix = _zip_prefix([i.filename for i in infos]) + split + "/"
        members = [(i.filename[len(prefix):], i) for i in infos if i.filename.startswith(prefix)]
        if not members:
            raise DataError(f"{path}: expected members {prefix}<class>/<image>.jpg, found no "
                            f"{prefix} folder")
        labelled = index(members, str(path), split)
        for info, _ in labelled:
            if info.file_size > MAX_IMAGE_BYTES:
                raise DataError(f"{path}: member {info.filename} declares {info.file_size} "
                                f"bytes, expected a JPEG file of at most {MAX_IMAGE_BYTES}")
        handles = [info for info, _ in labelled]
        key = _key(path, split, ((i.filename, i.CRC, i.file_size) for i in handles))

        def read(info: zipfile.ZipInfo) -> bytes:
            try:
                return zf.read(info)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
                raise DataError(f"{path}: member {info.filename} cannot be read ({err}; "
                                "a corrupt zip?)") from err
            except OSError as err:
                raise read_error(path, err) from err

        images = _cached_or_decoded(key, split, handles, read,
                                    lambda info: f"{path}: member {info.filename}")
    return images, np.array([label for _, label in labelled], dtype=np.int64)


# --- a folder --------------------------------------------------------------------------------

def _read_folder(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    top = directory / split
    entries: list[tuple[str, os.DirEntry]] = []
    try:
        for cls in os.scandir(top):
            if not cls.is_dir():
                entries.append((cls.name, cls))
                continue
            for f in os.scandir(cls.path):
                entries.append((f"{cls.name}/{f.name}" + ("/" if f.is_dir() else ""), f))
    except OSError as err:
        raise read_error(top, err) from err
    labelled = index(entries, str(top), split)
    handles = [f for f, _ in labelled]
    stats = []
    for f in handles:
        try:
            st = f.stat()
        except OSError as err:
            raise read_error(f.path, err) from err
        if st.st_size > MAX_IMAGE_BYTES:
            raise DataError(f"{f.path}: holds {st.st_size} bytes, expected a JPEG file of at "
                            f"most {MAX_IMAGE_BYTES}")
        stats.append((os.path.relpath(f.path, top), st.st_size, st.st_mtime_ns))
    key = _key(top, split, stats)

    def read(f: os.DirEntry) -> bytes:
        try:
            with open(f.path, "rb") as fh:
                return fh.read()
        except OSError as err:
            raise read_error(f.path, err) from err

    images = _cached_or_decoded(key, split, handles, read, lambda f: f.path)
    return images, np.array([label for _, label in labelled], dtype=np.int64)
