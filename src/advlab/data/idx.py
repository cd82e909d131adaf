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
import math
import os
import zlib
from pathlib import Path

import numpy as np

from advlab.data.base import DataError, read_error
from advlab.io import write_bytes

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


# Deflate expands at most about 1032-fold (a 258-byte match per 2 bits): a gzip file of n
# bytes cannot hold more than this many times n bytes, whatever its header claims.
MAX_DEFLATE_RATIO = 1032
SHOWN_TRAILING = 1 << 20  # trailing bytes inflated to count them; beyond: "more than"
_MAX_HEADER = 4 + 4 * 255


def _read_raw(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise read_error(path, err) from err


def gunzip(raw: bytes, source: str | os.PathLike, max_out: int) -> tuple[bytes, bool]:
    """The first ``max_out`` bytes of the gzip data ``raw`` (one or more members), and whether
    there is more: a gzip bomb is never inflated past ``max_out``. Corrupt or truncated gzip
    data raises ``DataError`` naming ``source``."""
    out: list[bytes] = []
    got, rest = 0, raw
    try:
        while rest:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            chunk = d.decompress(rest, max_out - got + 1)
            out.append(chunk)
            got += len(chunk)
            if got > max_out:
                return b"".join(out)[:max_out], True
            while not d.eof and d.unconsumed_tail:
                chunk = d.decompress(d.unconsumed_tail, max_out - got + 1)
                out.append(chunk)
                got += len(chunk)
                if got > max_out:
                    return b"".join(out)[:max_out], True
            if not d.eof:
                raise EOFError("compressed file ended before the end-of-stream marker was "
                               "reached")
            rest = d.unused_data.lstrip(b"\x00")  # zero padding after a member is allowed
            if rest and rest[:2] != _GZIP_MAGIC:
                raise OSError(f"{len(rest)} bytes after the gzip stream are not gzip data")
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{source}: corrupt gzip data ({err})") from err
    return b"".join(out), False


def read_bytes(path: str | os.PathLike, max_out: int | None = None) -> bytes:
    """The content of ``path``, gunzipped if it is gzip data (detected by its magic bytes), at
    most ``max_out`` bytes of it (default: what deflate can expand the file to). A file that
    cannot be read (permissions, I/O error) raises ``DataReadError`` naming it.
    """
    path = Path(path)
    raw = _read_raw(path)
    if raw[:2] != _GZIP_MAGIC:
        return raw
    limit = MAX_DEFLATE_RATIO * len(raw) if max_out is None else max_out
    content, more = gunzip(raw, path, limit)
    if more:
        raise DataError(f"{path}: the gzip data inflates to more than {limit} bytes")
    return content


def _parse_header(content: bytes, source: str | os.PathLike, dtype_code: int | None,
                  ndim: int | None) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of the IDX header at the start of ``content``, checked
    against what the caller expects (``DataError`` naming ``source`` otherwise)."""
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
    return shape, IDX_DTYPES[code], header


def parse_idx(content: bytes, *, source: str | os.PathLike = "<bytes>",
              dtype_code: int | None = UBYTE, ndim: int | None = None) -> np.ndarray:
    """Decode IDX ``content``: an array of the header's shape (a read-only view of ``content``).

    ``dtype_code`` / ``ndim`` (None = any) are what the caller expects; anything else is a
    ``DataError`` naming ``source``.
    """
    shape, dtype, header = _parse_header(content, source, dtype_code, ndim)
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
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
    """Read and validate an IDX file (gzip or raw); see ``parse_idx``.

    A gzip file is inflated only as far as its header says the data goes: a header that
    declares more than the file can hold, or a stream that goes on past the data (a gzip
    bomb), is a ``DataError`` before the rest is inflated."""
    path = Path(path)
    raw = _read_raw(path)
    if raw[:2] != _GZIP_MAGIC:
        return parse_idx(raw, source=path, dtype_code=dtype_code, ndim=ndim)
    head, _ = gunzip(raw, path, _MAX_HEADER)
    shape, dtype, header = _parse_header(head, path, dtype_code, ndim)
    expected = header + math.prod(shape) * dtype.itemsize
    if expected > header + MAX_DEFLATE_RATIO * len(raw):
        raise DataError(f"{path}: the IDX header declares shape {shape} ({expected - header} "
                        f"bytes of data), more than {len(raw)} bytes of gzip data can hold "
                        f"(deflate expands at most {MAX_DEFLATE_RATIO}-fold)")
    content, more = gunzip(raw, path, expected + SHOWN_TRAILING)
    if more:
        raise DataError(f"{path}: trailing garbage: more than {SHOWN_TRAILING} bytes after the "
                        f"{expected - header} bytes of data announced by the header (shape "
                        f"{shape})")
    return parse_idx(content, source=path, dtype_code=dtype_code, ndim=ndim)


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
    write_bytes(path, gzip.compress(data, compresslevel=6, mtime=0) if compress else data)
    return path
