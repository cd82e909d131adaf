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


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Extract ``archive`` (any compression tarfile reads) into ``dest``; return the files written.

    All members are validated first (see the module docstring); a refused member raises
    ``DataError`` before any file is written.
    """
    dest = Path(os.path.realpath(dest))
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            plan = [(m, member_target(m, dest, archive)) for m in members]
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
