"""A cache of decoded IDX arrays as ``.npy`` files, so gzip is decoded once per source file.

Entries live in ``<cache_dir>/decoded/`` (never in a data root, which may be read-only) and are
keyed by the source's resolved path, size and modification time: a changed source is a miss.
A cached array is used only if its dtype and shape equal those in the source's IDX header (read
from the first bytes of the gzip stream); anything else, including an unreadable entry, is
decoded again and rewritten. Entries are written to a temporary file and renamed into place.
Failing to write the cache (read-only home, full disk) only logs a warning; a source that
cannot be read raises ``DataReadError`` naming it.

Other decoded sources (the JPEG files of ``cifar10-jpeg``, see ``jpeg``) use the same store
through ``keyed_entry``, ``load_entry`` and ``save_entry``, with a key of their own.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import zlib
from pathlib import Path

import numpy as np

from advlab.data.base import read_error
from advlab.data.idx import IDX_DTYPES, UBYTE, read_idx
from advlab.data.sources import cache_dir
from advlab.io import atomic_path

log = logging.getLogger(__name__)
_unwritable: set[Path] = set()  # cache directories that failed a write (warned about once)


def _is_gzip(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"\x1f\x8b"
    except OSError as err:
        raise read_error(path, err) from err


def _header_shape(path: Path, ndim: int) -> tuple[int, ...] | None:
    """The shape in the IDX header at the start of a gzip file, or None if unreadable."""
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(4 + 4 * ndim)
    except (OSError, EOFError, zlib.error):
        return None
    if len(head) < 4 + 4 * ndim or head[3] != ndim:
        return None
    return tuple(int(s) for s in np.frombuffer(head, dtype=">u4", count=ndim, offset=4))


def entry_path(source: Path) -> Path:
    """The cache file for ``source`` (keyed by resolved path, size and mtime)."""
    source = Path(source)
    st = source.stat()
    key = f"{source.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    digest = hashlib.sha256(key).hexdigest()[:24]
    return cache_dir() / "decoded" / f"{source.name.removesuffix('.gz')}-{digest}.npy"


def _cached(entry: Path) -> bool:
    """Whether ``entry`` exists; an unreadable cache directory counts as a miss."""
    try:
        return entry.is_file()
    except OSError as err:
        log.warning("ignoring unreadable cache entry %s (%s)", entry, err)
        return False


def _save_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def read_idx_cached(path: str | os.PathLike, *, ndim: int, dtype_code: int = UBYTE) -> np.ndarray:
    """``read_idx(path)`` for a gzip source through the ``.npy`` cache; raw sources directly.

    The result is validated exactly like ``read_idx`` on a miss, and against the source's
    header (dtype, shape) on a hit.
    """
    path = Path(path)
    if not _is_gzip(path):
        return read_idx(path, dtype_code=dtype_code, ndim=ndim)
    try:
        entry = entry_path(path)
    except OSError as err:
        raise read_error(path, err) from err
    if _cached(entry):
        cached = load_entry(entry, _header_shape(path, ndim),
                            IDX_DTYPES[dtype_code].newbyteorder("="), "the source header")
        if cached is not None:
            return cached
    array = read_idx(path, dtype_code=dtype_code, ndim=ndim)
    native = array.astype(array.dtype.newbyteorder("="), copy=False)
    save_entry(entry, native)
    return native


def keyed_entry(stem: str, key: bytes) -> Path:
    """The cache file ``<cache dir>/decoded/<stem>-<digest>.npy`` for a source described by
    ``key`` (bytes that change whenever the source does)."""
    return cache_dir() / "decoded" / f"{stem}-{hashlib.sha256(key).hexdigest()[:24]}.npy"


def load_entry(entry: Path, shape: tuple[int, ...] | None, dtype: np.dtype,
               what: str = "the source") -> np.ndarray | None:
    """The array cached at ``entry`` if it exists and has ``shape`` and ``dtype``, else None.

    A missing entry is a silent miss; an unreadable or mismatching one (``shape`` None: the
    source's shape is unknown) is logged and ignored, so the caller decodes and rewrites it.
    """
    if not _cached(entry):
        return None
    try:
        # mapped, not read: the header's shape is checked against the file's size (and
        # then the source's) before anything of that size is allocated
        cached = np.load(entry, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        log.warning("ignoring unreadable cache entry %s (%s)", entry, err)
        return None
    if shape is not None and cached.shape == tuple(shape) and cached.dtype == dtype:
        return np.array(cached)
    log.warning("ignoring cache entry %s: %s %s does not match %s %s",
                entry, cached.dtype, cached.shape, what, shape)
    return None


def save_entry(entry: Path, array: np.ndarray) -> None:
    """Write ``array`` to the cache file ``entry`` atomically; a failure only logs a warning."""
    try:
        _save_atomic(entry, array)
    except OSError as err:
        # Once per directory: an unwritable cache should not flood the log on every load.
        level = logging.DEBUG if entry.parent in _unwritable else logging.WARNING
        _unwritable.add(entry.parent)
        log.log(level, "could not write the decoded-array cache %s (%s)", entry, err)


def clear(directory: str | os.PathLike | None = None) -> int:
    """Remove all decoded-array cache entries; returns how many files were removed."""
    root = Path(directory) if directory is not None else cache_dir() / "decoded"
    if not root.is_dir():
        return 0
    n = 0
    for p in root.glob("*.npy"):
        p.unlink(missing_ok=True)
        n += 1
    return n

