"""Where data sets are looked for: the data roots, their directory layouts, and the cache dir.

Roots, in order:

1. an explicit ``root`` argument (then nothing else is searched);
2. the data directory: ``set_data_dir(path)`` (the CLI's ``--data-dir``) if set, else the
   ``ADVLAB_DATA`` environment variable;
3. the default cache directory, ``$XDG_CACHE_HOME/advlab`` or ``~/.cache/advlab``.

Under a root, advlab's layout is ``<root>/<name>/<official file names>``; torchvision's layouts
(``<root>/MNIST/raw/``, ``<root>/FashionMNIST/raw/``, ``<root>/cifar-10-batches-py/``) are found
too. Nothing here writes into a data root.

A root given as ``root``, ``--data-dir`` or ``ADVLAB_DATA`` that exists but is not a directory
is an error naming it (``DataError``); one that does not exist is named in the not-found
message. A file or directory that cannot be inspected (permissions) is a ``DataReadError``.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from advlab.data.base import DataError, DatasetNotFoundError, info, read_error
from advlab.data.resources import CIFAR_DIR

ENV_VAR = "ADVLAB_DATA"

_data_dir: Path | None = None  # set by set_data_dir (the CLI's --data-dir); wins over ADVLAB_DATA


def check_root(root: object, what: str = "root") -> None:
    """Refuse a data root that is not ``None``, a ``str`` or an ``os.PathLike``."""
    if root is not None and not isinstance(root, str | os.PathLike):
        raise ValueError(f"expected {what} as a directory path (str or os.PathLike) or None, "
                         f"got {root!r}")


def set_data_dir(path: str | os.PathLike | None) -> None:
    """Use ``path`` as the data directory (over ``ADVLAB_DATA``); ``None`` clears the setting.

    The path is checked when data is looked for (``search_roots``, ``download_root``), not here.
    """
    global _data_dir
    check_root(path, "the data directory")
    _data_dir = None if path is None else Path(path).expanduser()


def data_dir() -> Path | None:
    """The configured data directory: ``set_data_dir`` first, then ``ADVLAB_DATA``, else None."""
    if _data_dir is not None:
        return _data_dir
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser() if env else None


def cache_dir() -> Path:
    """advlab's cache directory: ``$XDG_CACHE_HOME/advlab``, else ``~/.cache/advlab``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "advlab"


ROOT_ORIGIN = "root argument"
CACHE_ORIGIN = "default cache dir"


def _configured() -> tuple[Path, str] | None:
    configured = data_dir()
    if configured is None:
        return None
    origin = "set_data_dir / --data-dir" if _data_dir is not None else f"${ENV_VAR}"
    return _checked(configured, origin), origin


def search_roots(root: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    """The roots to search, in order, each with where it came from (for error messages).

    Raises ``ValueError`` for a ``root`` that is not a path, ``DataError`` for a given root
    (``root``, the data directory) that exists but is not a directory.
    """
    check_root(root)
    if root is not None:
        return [(_checked(root, ROOT_ORIGIN), ROOT_ORIGIN)]
    roots: list[tuple[Path, str]] = []
    configured = _configured()
    if configured is not None:
        roots.append(configured)
    roots.append((_absolute(cache_dir()), CACHE_ORIGIN))
    return roots


def download_root(root: str | os.PathLike | None = None) -> Path:
    """Where downloads go: ``root`` if given, else the data directory if set, else the cache.

    Checked as in ``search_roots`` (a missing root is fine: it is created by the download).
    """
    check_root(root)
    if root is not None:
        return _checked(root, ROOT_ORIGIN)
    configured = _configured()
    return configured[0] if configured is not None else _absolute(cache_dir())


def _checked(root: str | os.PathLike, origin: str) -> Path:
    """``root`` made absolute; ``DataError`` if it exists and is not a directory."""
    path = _absolute(root)
    kind = path_kind(path)
    if kind not in (None, "directory"):
        raise DataError(f"{origin}: {path} is {kind}, expected a directory")
    return path


def path_kind(path: Path) -> str | None:
    """What ``path`` is: "directory", "a file", "not a directory" (any other kind), or None if
    it does not exist. Raises ``DataReadError`` if it cannot be inspected (permissions)."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise read_error(path, err) from err
    except ValueError:  # e.g. an embedded NUL byte: no such file can exist
        return None
    if stat.S_ISDIR(mode):
        return "directory"
    return "a file" if stat.S_ISREG(mode) else "not a directory"


def _absolute(path: str | os.PathLike) -> Path:
    # Relative paths (e.g. ADVLAB_DATA=../shared/data) are taken from the current directory.
    return Path(os.path.abspath(Path(path).expanduser()))


# name -> (relative directory, layout name), in search order within one root.
LAYOUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "mnist": (("mnist", "advlab"), ("MNIST/raw", "torchvision")),
    "fashion-mnist": (("fashion-mnist", "advlab"), ("FashionMNIST/raw", "torchvision")),
    "cifar10": ((f"cifar10/{CIFAR_DIR}", "advlab"), ("cifar10", "advlab, flat"),
                (CIFAR_DIR, "torchvision")),
}


@dataclass(frozen=True)
class Located:
    """The files of one split found in one directory."""

    directory: Path
    layout: str
    files: dict[str, Path]  # requested name -> existing path


def _variants(name: str, gz: bool) -> tuple[str, ...]:
    # An uncompressed copy is preferred: it is read without decompression.
    return (name, name + ".gz") if gz else (name,)


def locate_in(name: str, files: tuple[str, ...], directory: Path, *,
              gz: bool) -> tuple[dict[str, Path] | None, str]:
    """The ``files`` in ``directory`` (with ``.gz`` variants if ``gz``), or None and why not.

    Raises ``DataReadError`` if the directory or a file in it cannot be inspected.
    """
    if path_kind(directory) != "directory":
        return None, "no such directory"
    found: dict[str, Path] = {}
    missing: list[str] = []
    for f in files:
        path = next((directory / v for v in _variants(f, gz)
                     if path_kind(directory / v) == "a file"), None)
        if path is None:
            missing.append(f + ("[.gz]" if gz else ""))
        else:
            found[f] = path
    if missing:
        return None, "missing " + ", ".join(missing)
    return found, "ok"


def locate(name: str, split: str, files: tuple[str, ...], root: str | os.PathLike | None = None,
           *, gz: bool) -> Located:
    """Find ``files`` of a data set in the first root and layout that holds all of them.

    Raises ``DatasetNotFoundError`` listing every directory looked at and why it did not match.
    """
    info(name)  # unknown names: ValueError listing the valid ones
    looked: list[str] = []
    notes: list[str] = []
    for base, origin in search_roots(root):
        for rel, layout in LAYOUTS[name]:
            directory = base / rel
            found, why = locate_in(name, files, directory, gz=gz)
            if found is not None:
                return Located(directory, layout, found)
            looked.append(f"  {directory}  ({layout} layout, from {origin}): {why}")
        if origin != CACHE_ORIGIN and path_kind(base) is None:  # a root given by the user
            notes.append(f"Note: the data root {base} (from {origin}) does not exist.\n")
    raise DatasetNotFoundError(
        f"dataset {name!r} (split {split!r}) not found. Looked in:\n" + "\n".join(looked) +
        "\n" + "".join(notes) +
        f"Fetch it with `advlab data prepare {name}` or data.load({name!r}, download=True), "
        f"or point root=, --data-dir or ${ENV_VAR} at a directory that holds it."
    )
