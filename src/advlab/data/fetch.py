"""Downloads: urllib only, md5-verified, atomic.

A download streams into a temporary file in the target directory while its md5 is computed;
only a file with the expected checksum is renamed (``os.replace``) to its final name. A failed,
interrupted or mismatching download leaves nothing behind. Mirrors are tried in order.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from advlab.data.base import DataError
from advlab.data.resources import Resource
from advlab.io import atomic_path

log = logging.getLogger(__name__)

CHUNK = 1 << 20
TIMEOUT_S = 60.0

# The opener, a module attribute so tests can replace it (offline tests use file:// URLs).
urlopen: Callable[..., BinaryIO] = urllib.request.urlopen


def md5sum(path: str | os.PathLike) -> str:
    """The hex md5 of a file."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: str | os.PathLike, md5: str | None, *,
             timeout: float = TIMEOUT_S) -> Path:
    """Fetch ``url`` to ``dest`` atomically; raise ``DataError`` if the md5 does not match.

    Network errors propagate as ``OSError`` (``urllib.error.URLError`` is one); in every failure
    case the temporary file is removed and ``dest`` is left untouched.
    """
    dest = Path(dest)
    with atomic_path(dest) as tmp:  # the file gets the mode the umask gives new files
        h = hashlib.md5()
        with open(tmp, "wb") as out, urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                h.update(chunk)
                out.write(chunk)
        got = h.hexdigest()
        if md5 is not None and got != md5.lower():
            raise DataError(f"{url}: md5 mismatch (expected {md5}, got {got}); "
                            "the download was discarded")
    return dest


def fetch(resource: Resource, directory: str | os.PathLike) -> Path:
    """Download ``resource`` into ``directory`` from its first mirror that works."""
    dest = Path(directory) / resource.filename
    errors: list[str] = []
    for url in resource.urls:
        log.info("downloading %s", url)
        try:
            return download(url, dest, resource.md5)
        except (OSError, DataError) as err:  # URLError and HTTPError are OSErrors
            log.warning("download of %s failed: %s", url, err)
            errors.append(f"  {url}: {err}")
    raise DataError(f"could not download {resource.filename} into {directory}:\n"
                    + "\n".join(errors))

