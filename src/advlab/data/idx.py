"""The IDX format of MNIST and Fashion-MNIST, gzip-compressed or raw, read with full validation.

An IDX file is a 4-byte magic number ``00 00 <dtype code> <ndim>``, then ``ndim`` big-endian
uint32 sizes, then the values in row-major order. The readers accept exactly that: a wrong
magic, an unexpected dtype code or rank, fewer bytes than the header announces (truncated)
or more (trailing garbage) raise ``DataError`` naming the file, and so does a file that
cannot be read (``DataReadError``: "cannot read <path>: permission denied"). Compression is
detected from the content (gzip magic ``1f 8b``), so ``x-ubyte.gz`` and ``x-ubyte`` are both
read.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from advlab.data.base import DataError, read_error

# IDX dtype codes -> big-endian numpy dtypes.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: str | os.PathLike) -> bytes:
    """The content of ``path``, gunzipped if it is gzip data (detected by its magic bytes).

    A file that cannot be read (permissions, I/O error) raises ``DataReadError`` naming it.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise read_error(path, err) from err
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise DataError(f"{path}: corrupt gzip data ({err})") from err


def parse_idx(content: bytes, *, source: str | os.PathLike = "<bytes>",
              dtype_code: int | None = UBYTE, ndim: int | None = None) -> np.ndarray:
    """Decode IDX ``content``: an array of the header's shape (a read-only view of ``content``).

    ``dtype_code`` / ``ndim`` (None = any) are what the caller expects; anything else is a
    ``DataError`` naming ``source``.
    """
    if len(content) < 4:
        raise DataError(f"{source}: not an IDX file (only {len(content)} bytes, "
                        "expected at least a 4-byte header)")
    if content[0] != 0 or content[1] != 0:
        raise DataError(f"{source}: bad IDX magic number 0x{content[:4].hex()} "
                        "(expected it to start with 00 00)")
    code, rank = content[2], content[3]
    if code not in IDX_DTYPES:
        raise DataError(f"{source}: unknown IDX dtype code 0x{code:02x}; "
                        f"valid codes: {', '.join(f'0x{c:02x}' for c in IDX_DTYPES)}")
    if dtype_code is not None and code != dtype_code:
        raise DataError(f"{source}: expected IDX dtype code 0x{dtype_code:02x}, got 0x{code:02x}")
    if ndim is not None and rank != ndim:
        raise DataError(f"{source}: expected a {ndim}-dimensional IDX array, got {rank} dimensions")
    header = 4 + 4 * rank
    if len(content) < header:
        raise DataError(f"{source}: truncated IDX header ({len(content)} bytes, "
                        f"{header} needed for {rank} dimensions)")
    shape = tuple(int(s) for s in np.frombuffer(content, dtype=">u4", count=rank, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(content) - header
    if actual < expected:
        raise DataError(f"{source}: truncated IDX data: header says shape {shape} "
                        f"({expected} bytes of data), file holds {actual}")
    if actual > expected:
        raise DataError(f"{source}: trailing garbage: {actual - expected} bytes after the "
                        f"{expected} bytes of data announced by the header (shape {shape})")
    return np.frombuffer(content, dtype=dtype, offset=header).reshape(shape)


def read_idx(path: str | os.PathLike, *, dtype_code: int | None = UBYTE,
             ndim: int | None = None) -> np.ndarray:
    """Read and validate an IDX file (gzip or raw); see ``parse_idx``."""
    return parse_idx(read_bytes(path), source=path, dtype_code=dtype_code, ndim=ndim)


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array`` (its dtype must be one of ``IDX_DTYPES``)."""
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    code = next((c for c, d in IDX_DTYPES.items() if d.newbyteorder("=") == native), None)
    if code is None:
        raise ValueError(f"expected an array of dtype uint8, int8, int16, int32, float32 or "
                         f"float64, got {array.dtype}")
    if array.ndim > 255:
        raise ValueError(f"expected at most 255 dimensions, got {array.ndim}")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file; gzip it if ``compress`` (default: name ends in ``.gz``)."""
    path = Path(path)
    data = encode_idx(array)
    if compress is None:
        compress = path.suffix == ".gz"
    path.write_bytes(gzip.compress(data, compresslevel=6, mtime=0) if compress else data)
    return path
