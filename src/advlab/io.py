"""Atomic file writes and safe, code-free state files (safetensors + JSON metadata).

A *state file* is one safetensors file holding every tensor of a nested structure (model weights,
optimizer moments, RNG states) and the non-tensor rest as JSON in the safetensors metadata. It is
written to a temporary file and renamed, so a crash never leaves a half-written file, and it is
loaded without unpickling anything. Its header holds a SHA-256 digest of the metadata and the
tensors, checked on load: a file with flipped bytes is refused, naming it.

Every writer here honours the umask (the file gets the mode ``open`` would give it) and turns a
failed write (full disk, read-only file system, permissions) into a one-line ``WriteError`` /
``DiskFullError`` naming the file; the previous version of the file is then left as it was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import re
import secrets
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

_TENSOR = "__tensor__"
_META_KEY = "advlab"
DIGEST_KEY = "advlab-digest"  # sha256 of the metadata and tensors, checked on load
_warned_no_digest = False  # a file without a digest (older advlab) is reported once
log = logging.getLogger(__name__)


class WriteError(OSError, ValueError):
    """A file could not be written (read-only file system, no permission, a file where a
    directory should be): the message names the file and the reason, in one line, and says
    that the file's previous version (if any) was left as it was. Also a ``ValueError``, so
    every command reports it as a one-line error."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(code if code is not None else errno.EIO, message)

    def __str__(self) -> str:
        return str(self.strerror)


class DiskFullError(WriteError):
    """A write failed because the file system is full (ENOSPC, or a quota: EDQUOT)."""


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
# the errors of writing a file: a network or other error raised inside a writer passes as is
_WRITE_ERRNOS = _DISK_FULL | {errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO,
                              errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG,
                              errno.ENOENT}


def os_error(err: BaseException) -> OSError | None:
    """The ``OSError`` behind ``err``: itself, or the system error a safetensors message
    carries (``... No space left on device (os error 28)``); None for other errors."""
    if isinstance(err, OSError):
        return err
    if isinstance(err, SafetensorError):
        found = re.search(r"\(os error (\d+)\)", str(err))
        if found:
            code = int(found.group(1))
            return OSError(code, os.strerror(code))
    return None


def reason(err: OSError) -> str:
    """The system's description of ``err`` in lower case ("read-only file system")."""
    if err.errno is not None and err.errno in _DISK_FULL:
        return "the disk is full (no space left on device)"
    return (err.strerror or str(err) or type(err).__name__).lower()


def write_error(path: str | os.PathLike, err: OSError, existed: bool) -> WriteError:
    """The ``WriteError`` (``DiskFullError`` for a full disk) of a failed write of ``path``."""
    if isinstance(err, WriteError):
        return err
    kept = (f"the previous {Path(path).name} was left as it was" if existed
            else "nothing was written")
    cls = DiskFullError if err.errno in _DISK_FULL else WriteError
    return cls(f"cannot write {path}: {reason(err)}; {kept}", err.errno)


def _temporary(path: Path) -> Path:
    """Create an empty temporary file next to ``path`` and return its name. It is created
    with mode 0666 less the umask, as ``open`` creates files (``mkstemp`` would make it 0600,
    and the rename would give that mode to the final file)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, flags, 0o666))
        except FileExistsError:
            continue
        return tmp


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    The file gets the mode the umask gives new files. A write that fails for a system reason
    (full disk, read-only file system, permissions) raises ``WriteError`` (``DiskFullError``)
    naming ``path``; in every failure the temporary file is removed and ``path`` is left as
    it was."""
    path = Path(path)
    existed = path.exists()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temporary(path)
        yield tmp
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:
        err = os_error(e)
        if err is None or isinstance(e, WriteError) or err.errno not in _WRITE_ERRNOS:
            raise
        if isinstance(err, (FileExistsError, NotADirectoryError)) and tmp is None:
            raise WriteError(f"cannot write {path}: {_blocking_file(path.parent)} is a file, "
                             f"not a directory", errno.ENOTDIR) from e
        raise write_error(path, err, existed) from e
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)


def _blocking_file(directory: Path) -> Path:
    """The first ancestor of ``directory`` (itself included) that exists and is not a
    directory: what stops ``mkdir -p directory``."""
    for p in [*reversed(directory.parents), directory]:
        if p.exists() and not p.is_dir():
            return p
    return directory


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as standard JSON, atomically: NaN and ±inf (which ``json`` would write as
    the non-standard ``NaN``/``Infinity`` that strict parsers reject) become null."""
    text = json.dumps(_strict(obj), indent=2, sort_keys=False, default=_json_default)
    write_text(path, text + "\n")


def _strict(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (tensors and arrays as lists)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if isinstance(obj, torch.Tensor) or (hasattr(obj, "tolist") and hasattr(obj, "dtype")):
        return _strict(obj.tolist())
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def _split(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """Replace every tensor in a nested dict/list structure by a reference into ``tensors``."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "_"
        tensors[key] = obj.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError(f"state keys must be str or int at {prefix!r}")
        # JSON keys are strings: remember which keys were ints (optimizer state uses them).
        return {
            "__dict__": [[k, _split(v, tensors, f"{prefix}.{k}" if prefix else str(k))]
                         for k, v in obj.items()]
        }
    if isinstance(obj, (list, tuple)):
        return [_split(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    return obj


@dataclass(frozen=True)
class TensorRef:
    """A tensor of a state file read with :func:`load_state_meta`: its name, shape and dtype
    (as safetensors spells it, e.g. ``"F32"``), without its values."""

    key: str
    shape: tuple[int, ...]
    dtype: str


def _join(obj: Any, tensors: Mapping[str, Any]) -> Any:
    """Inverse of :func:`_split`; raises ValueError when the skeleton is not one it wrote."""
    if isinstance(obj, dict):
        if _TENSOR in obj:
            key = obj[_TENSOR]
            if not isinstance(key, str) or key not in tensors:
                raise ValueError(f"the metadata refers to tensor {key!r}, which the file does "
                                 f"not hold")
            return tensors[key]
        if "__dict__" in obj:
            pairs = obj["__dict__"]
            if not isinstance(pairs, list) or not all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], (str, int))
                for p in pairs
            ):
                raise ValueError(f"expected __dict__ to be a list of [key, value] pairs, got "
                                 f"{json.dumps(pairs)[:80]}")
            return {k: _join(v, tensors) for k, v in pairs}
        return {k: _join(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


def digest(tensors: Mapping[str, torch.Tensor], meta: str) -> str:
    """``sha256:<hex>`` of a state file's content: the advlab metadata ``meta`` and every
    tensor (name, dtype, shape, bytes) in name order. Stored in the file (``DIGEST_KEY``)
    and checked by :func:`load_state`, so flipped bytes never load as a silently worse model."""
    h = hashlib.sha256()
    h.update(meta.encode("utf-8"))
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"\0{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return f"sha256:{h.hexdigest()}"


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write a nested structure of tensors and JSON values to one safetensors file, atomically,
    with the digest of its content in the header (checked on load)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(state, tensors, "")
    meta = json.dumps(skeleton)
    with atomic_path(path) as tmp:
        mode = tmp.stat().st_mode  # as the umask gives it; safetensors re-creates the file 0600
        save_file(tensors, str(tmp), metadata={_META_KEY: meta,
                                               DIGEST_KEY: digest(tensors, meta)})
        os.chmod(tmp, stat.S_IMODE(mode))


def _check_digest(path: Path, tensors: Mapping[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Raise ``ValueError`` unless the content of ``path`` matches the digest stored in it; a
    file without one (written by an older advlab) is accepted with a single warning."""
    global _warned_no_digest
    stored = meta.get(DIGEST_KEY)
    if stored is None:
        if not _warned_no_digest:
            _warned_no_digest = True
            log.warning("%s holds no digest of its content (written by an older advlab): it "
                        "loads unchecked; files saved from now on carry one (further files "
                        "without a digest are not reported)", path)
        return
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", stored):
        raise ValueError(f"{path}: expected a digest 'sha256:<64 hex digits>' in the header, "
                         f"got {stored[:80]!r} (the file is corrupt)")
    if digest(tensors, meta[_META_KEY]) != stored:
        raise ValueError(f"{path}: the file is corrupt: its content does not match the digest "
                         f"stored with it (flipped bytes on disk or in a copy); restore it "
                         f"from a backup or write it again (retrain, or rerun the command)")


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by :func:`save_state` (no code is executed)."""
    return _load(Path(path), values=True)


def load_state_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The structure of a file written by :func:`save_state` read from its header only: the
    JSON values as they are, every tensor as a :class:`TensorRef` (name, shape, dtype). For
    reading an epoch count or a model's metadata without loading the weights."""
    return _load(Path(path), values=False)


def _header(path: Path) -> tuple[dict[str, TensorRef], dict[str, str]]:
    """The tensors (as ``TensorRef``) and the metadata of a safetensors file's header."""
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        n = int.from_bytes(head, "little")
        size = path.stat().st_size
        if n > size - 8 or n > 100_000_000:
            raise ValueError(f"header length {n} does not fit the file of {size} bytes")
        header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise ValueError("the header's __metadata__ is not a JSON object")
    refs, data = {}, size - 8 - n
    for key, info in header.items():
        if not isinstance(info, dict) or not {"shape", "dtype", "data_offsets"} <= set(info):
            raise ValueError(f"malformed header entry for tensor {key!r}")
        start, end = (int(o) for o in info["data_offsets"])
        if not 0 <= start <= end <= data:
            raise ValueError(f"tensor {key!r} lies at bytes {start}-{end} of a data section of "
                             f"{data} bytes (truncated file?)")
        refs[key] = TensorRef(key, tuple(int(d) for d in info["shape"]), str(info["dtype"]))
    return refs, meta


def _load(path: Path, values: bool) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no state file at {path}")
    try:
        if values:
            tensors: Mapping[str, Any] = load_file(str(path))
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        else:
            tensors, meta = _header(path)
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    if _META_KEY not in meta:
        raise ValueError(f"{path}: safetensors file without advlab metadata")
    if values:
        _check_digest(path, tensors, meta)
    try:
        skeleton = json.loads(meta[_META_KEY])
    except ValueError as e:
        raise ValueError(f"{path}: the advlab metadata is not valid JSON ({e})") from e
    if not isinstance(skeleton, dict):
        raise ValueError(f"{path}: expected the advlab metadata to be a JSON object, got "
                         f"{type(skeleton).__name__}")
    try:
        return _join(skeleton, tensors)
    except ValueError as e:
        raise ValueError(f"{path}: malformed advlab metadata: {e}") from e
