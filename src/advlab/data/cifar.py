"""CIFAR-10, python version: pickled batches read with a restricted unpickler, then validated.

Each batch (``data_batch_1`` .. ``data_batch_5``, ``test_batch``) is a pickled dict with
``data``: a uint8 array (rows, 3072) of 32x32 images stored channel-first (1024 R, 1024 G,
1024 B), and ``labels``: ``rows`` ints in 0..9. ``batches.meta`` holds ``label_names`` and
``num_cases_per_batch`` (10000 in the official files).

Pickle can run arbitrary code, so the unpickler resolves only the three globals numpy needs to
rebuild the ``data`` array (``_reconstruct``, ``ndarray``, ``dtype``) and refuses everything
else before it is called.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import struct
from pathlib import Path
from typing import Any

import numpy as np

from advlab.data.base import CIFAR10_CLASSES, DataError, read_error
from advlab.data.resources import CIFAR_META, CIFAR_ROWS_PER_BATCH
from advlab.io import write_bytes

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

PIXELS = 3 * 32 * 32

# (module, name) as written in the pickle -> the object it may resolve to. The official batches
# were pickled under numpy 1.x ("numpy.core"); numpy 2 writes "numpy._core".
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _BoundedArray(np.ndarray):
    """The arrays a restricted pickle rebuilds: their declared size is checked against the
    file's before numpy allocates it (``__setstate__`` gives the real shape)."""

    _limit = 0  # bytes: the size of the pickle being read

    def __setstate__(self, state) -> None:
        shape, dtype = (state[1], state[2]) if len(state) == 5 else (state[0], state[1])
        _check_size(shape, dtype, self._limit)
        super().__setstate__(state)


def _check_size(shape: Any, dtype: Any, limit: int) -> None:
    """Raise ``UnpicklingError`` unless an array of ``shape`` and ``dtype`` can be held by a
    pickle of ``limit`` bytes (its values must be in it); object arrays are refused."""
    shape = (shape,) if isinstance(shape, int) else shape
    if not isinstance(shape, tuple) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise pickle.UnpicklingError(f"expected an array shape of integers >= 0, got {shape!r}")
    try:
        dt = np.dtype(dtype.decode("latin1") if isinstance(dtype, bytes) else dtype)
    except (TypeError, ValueError) as err:
        raise pickle.UnpicklingError(f"not a numpy dtype: {dtype!r} ({err})") from None
    if dt.hasobject:
        raise pickle.UnpicklingError("refusing an array of Python objects (dtype object): a "
                                     "CIFAR-10 batch holds only numbers")
    size = math.prod(shape) * dt.itemsize  # Python ints: no overflow
    if size > limit:
        raise pickle.UnpicklingError(f"the pickle declares an array of shape {shape} "
                                     f"({size} bytes), more than its {limit} bytes can hold")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only ``ALLOWED_GLOBALS``; any other global is an error.

    Arrays are rebuilt as ``_BoundedArray`` (checked against ``limit``, the pickle's size, so
    a small file cannot make numpy allocate what it declares); ``restricted_load`` turns them
    back into plain arrays."""

    def __init__(self, file: Any, *, limit: int, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.limit = limit

    def find_class(self, module: str, name: str) -> Any:
        try:
            found = ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: a CIFAR-10 batch only needs "
                + ", ".join(f"{m}.{n}" for m, n in ALLOWED_GLOBALS)
            ) from None
        if found is _reconstruct:
            bounded = type("_BoundedArray", (_BoundedArray,), {"_limit": self.limit})

            def reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
                _check_size(shape, dtype, self.limit)
                return _reconstruct(bounded, shape, dtype)

            return reconstruct
        return found


def _check_lengths(raw: bytes) -> None:
    """Raise ``UnpicklingError`` when an opcode of the pickle ``raw`` declares more bytes than
    the file holds (a string, bytes or frame length): the C unpickler would allocate the
    declared size before reading."""
    try:
        for op, arg, pos in pickletools.genops(io.BytesIO(raw)):
            if op.name == "FRAME" and arg > len(raw) - pos:
                raise ValueError(f"a frame of {arg} bytes at byte {pos}")
    except ValueError as err:  # genops: "expected N bytes in a bytes8, but only M remain"
        raise pickle.UnpicklingError(f"a length in the pickle exceeds the file ({err})") \
            from None


def _plain(obj: Any) -> Any:
    """``obj`` with every ``_BoundedArray`` in dicts, lists and tuples as a plain ndarray."""
    if isinstance(obj, _BoundedArray):
        return obj.view(np.ndarray)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def restricted_load(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` with ``RestrictedUnpickler`` (Python 2 strings decoded as latin-1).

    Every size the pickle declares (string and frame lengths, array shapes) is checked
    against the file's size before anything of that size is allocated."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:  # permissions, I/O error, a directory where the file should be
        raise read_error(path, err) from err
    try:
        _check_lengths(raw)
        return _plain(RestrictedUnpickler(io.BytesIO(raw), limit=len(raw),
                                          encoding="latin1").load())
    except pickle.UnpicklingError as err:
        raise DataError(f"{path}: {err}") from err
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError) as err:
        raise DataError(f"{path}: not a readable CIFAR-10 pickle ({type(err).__name__}: {err})"
                        ) from err


def _field(batch: dict, key: str, path: Path) -> Any:
    # encoding="latin1" gives str keys; accept bytes keys too (batches re-pickled elsewhere).
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    raise DataError(f"{path}: CIFAR-10 pickle has no {key!r} entry "
                    f"(keys: {sorted(map(str, batch))})")


def read_batch(path: str | os.PathLike, rows: int = CIFAR_ROWS_PER_BATCH
               ) -> tuple[np.ndarray, np.ndarray]:
    """One batch as (images uint8 (rows, 3, 32, 32), labels int64 (rows,)), validated."""
    path = Path(path)
    batch = restricted_load(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    data = _field(batch, "data", path)
    labels = _field(batch, "labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise DataError(f"{path}: expected 'data' to be a uint8 array, got "
                        f"{getattr(data, 'dtype', type(data).__name__)}")
    if data.shape != (rows, PIXELS):
        raise DataError(f"{path}: expected 'data' of shape ({rows}, {PIXELS}), got {data.shape}")
    try:
        labels = np.asarray(labels)
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: 'labels' is not a list of integers ({err})") from err
    if labels.shape != (rows,) or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: expected {rows} integer labels, got shape {labels.shape} "
                        f"dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    bad = (labels < 0) | (labels >= len(CIFAR10_CLASSES))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: label {int(labels[i])} at index {i} is out of range "
                        f"0..{len(CIFAR10_CLASSES) - 1}")
    return data.reshape(rows, 3, 32, 32), labels


def read_meta(path: str | os.PathLike) -> int:
    """Validate ``batches.meta`` (label names) and return its ``num_cases_per_batch``."""
    path = Path(path)
    meta = restricted_load(path)
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(meta).__name__}")
    names = tuple(_field(meta, "label_names", path))
    if names != CIFAR10_CLASSES:
        raise DataError(f"{path}: expected label_names {CIFAR10_CLASSES}, got {names}")
    rows = _field(meta, "num_cases_per_batch", path)
    if not isinstance(rows, int) or isinstance(rows, bool) or rows <= 0:
        raise DataError(f"{path}: expected a positive num_cases_per_batch, got {rows!r}")
    return rows


def read_split(directory: str | os.PathLike, batches: tuple[str, ...]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate validated ``batches`` of ``directory``: (uint8 (N, 3, 32, 32), int64 (N,)).

    Rows per batch come from ``batches.meta`` when present, else the official 10000.
    """
    directory = Path(directory)
    meta = directory / CIFAR_META
    try:
        has_meta = meta.is_file()
    except OSError as err:
        raise read_error(meta, err) from err
    rows = read_meta(meta) if has_meta else CIFAR_ROWS_PER_BATCH
    parts = [read_batch(directory / b, rows) for b in batches]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler, so str/bytes can be overridden
    """Pickles like Python 2's cPickle, protocol 2: str and bytes as py2 ``str`` (BINSTRING)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes | str) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def _dumps_official(obj: dict) -> bytes:
    """``obj`` pickled as the official files are: py2 protocol 2, numpy 1.x global names."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def write_batch(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray,
                batch_label: str = "batch") -> Path:
    """Write a batch in the official CIFAR-10 python format (for tests and small fixtures).

    ``images`` uint8 (N, 3, 32, 32), ``labels`` (N,).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != (3, 32, 32):
        raise ValueError(f"expected uint8 images of shape (N, 3, 32, 32), got {images.dtype} "
                         f"{images.shape}")
    batch = {"batch_label": batch_label, "labels": [int(v) for v in labels],
             "data": np.ascontiguousarray(images.reshape(len(images), PIXELS)),
             "filenames": [f"img_{i}.png" for i in range(len(images))]}
    path = Path(path)
    write_bytes(path, _dumps_official(batch))
    return path


def write_meta(path: str | os.PathLike, rows: int) -> Path:
    """Write a ``batches.meta`` with the CIFAR-10 class names and ``rows`` cases per batch."""
    meta = {"num_cases_per_batch": int(rows), "label_names": list(CIFAR10_CLASSES),
            "num_vis": PIXELS}
    path = Path(path)
    write_bytes(path, _dumps_official(meta))
    return path
