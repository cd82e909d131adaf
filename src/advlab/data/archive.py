"""Safe extraction of tar archives (the CIFAR-10 download).

Every member is checked before anything is written: only regular files and directories are
accepted, and each must land inside the target directory. Absolute names, names that climb
out (``../evil``), symbolic and hard links, devices and FIFOs are refused with a ``DataError``
naming the archive and the member, and then nothing at all is extracted. Files are written
with mode 0644 (no owner or permission bits from the archive) and never through a link.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from advlab.data.base import DataError


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "FIFO"
    return "special file"


def member_target(member: tarfile.TarInfo, dest: Path, archive: str | os.PathLike) -> Path:
    """Where ``member`` would be written under ``dest`` (already resolved); refuse if unsafe."""
    name = member.name
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{archive}: refusing member {name!r}: it is a {_member_kind(member)} "
                        "(only regular files and directories are extracted)")
    if (PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute()
            or PureWindowsPath(name).drive or name.startswith("\\")):
        raise DataError(f"{archive}: refusing member {name!r}: absolute path")
    target = Path(os.path.realpath(dest / name))
    if os.path.commonpath([dest, target]) != str(dest):
        raise DataError(f"{archive}: refusing member {name!r}: it resolves to {target}, "
                        f"outside the target directory {dest}")
    if target == dest and not member.isdir():
        raise DataError(f"{archive}: refusing member {name!r}: it would replace the target "
                        "directory itself")
    return target


MAX_EXTRACT_BYTES = 1 << 31  # 2 GiB: far above the CIFAR-10 archive's 178 MB
MAX_MEMBERS = 100_000
_GZIP_RATIO = 1032  # deflate expands at most about 1032-fold


def _size_bound(archive: Path, max_bytes: int) -> tuple[int, str]:
    """The most bytes ``archive`` can hold once extracted, and why: an uncompressed tar holds
    its members' bytes, a gzip one at most ~1032 times its size; ``max_bytes`` caps both."""
    size = archive.stat().st_size
    with open(archive, "rb") as f:
        magic = f.read(6)
    if magic[:2] == b"\x1f\x8b":
        bound, why = _GZIP_RATIO * size, f"a gzip file of {size} bytes inflates at most " \
                                          f"{_GZIP_RATIO}-fold"
    elif magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00":
        bound, why = max_bytes, "the extraction limit"
    else:
        bound, why = size, f"an uncompressed tar of {size} bytes"
    return (bound, why) if bound <= max_bytes else (max_bytes, "the extraction limit")


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike, *,
                 max_bytes: int = MAX_EXTRACT_BYTES,
                 max_members: int = MAX_MEMBERS) -> list[Path]:
    """Extract ``archive`` (any compression tarfile reads) into ``dest``; return the files written.

    All members are validated first (see the module docstring); a refused member raises
    ``DataError`` before any file is written. So does an archive whose members declare more
    bytes than it can hold (``max_bytes``, and for an uncompressed or gzip tar what its size
    allows) or more than ``max_members`` members: the headers are read one at a time, so a
    small archive cannot make advlab list or write what it declares.
    """
    dest = Path(os.path.realpath(dest))
    try:
        bound, why = _size_bound(Path(archive), max_bytes)
        with tarfile.open(archive, "r:*") as tar:
            plan, total = [], 0
            while (member := tar.next()) is not None:
                if len(plan) >= max_members:
                    raise DataError(f"{archive}: more than {max_members} members; refusing "
                                    "to extract it")
                plan.append((member, member_target(member, dest, archive)))
                total += member.size if member.isfile() else 0
                if total > bound:
                    raise DataError(f"{archive}: its members declare {total} bytes, more than "
                                    f"it can hold: at most {bound} ({why}); refusing to "
                                    "extract it")
            dest.mkdir(parents=True, exist_ok=True)
            written: list[Path] = []
            for member, target in plan:
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                if src is None:  # not reachable for regular files; kept as a guard
                    raise DataError(f"{archive}: cannot read member {member.name!r}")
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
                with src, os.fdopen(os.open(target, flags, 0o644), "wb") as out:
                    shutil.copyfileobj(src, out, length=1 << 20)
                written.append(target)
    except (tarfile.TarError, EOFError) as err:
        raise DataError(f"{archive}: not a readable tar archive ({err})") from err
    return written
