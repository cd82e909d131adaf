"""Keep freed tensor memory in the process on Linux: no page faults in attack loops.

An attack calls the model thousands of times on batches of one size, and every call allocates
and frees the same large activations. glibc's ``malloc`` serves an allocation above its mmap
threshold (128 KiB at start, raised only past the size of a larger block freed before) with
a fresh ``mmap`` and returns it to the system when freed, so the next call maps it again and
the kernel zero-fills every page on first touch. A forward-only loop never frees a block larger
than the ones it allocates, so the threshold never rises above them: on the lab's 2-core
machine Square's 300 queries of 500 MNIST points through ``wong-cnn`` took 1.25 million minor
page faults and 2.2 s of system time, about half of the attack's time (5.4 s against 2.7 s
with the setting below, the same result).

``tune()`` sets glibc's mmap threshold to its largest value (32 MiB: smaller blocks come from
the heap and are reused) and the trim threshold to twice that (the heap keeps up to 64 MiB of
free memory at its top instead of returning it) with ``mallopt``, the fixed form of the
adjustment glibc makes on its own after freeing a large block. It is called once per process
by ``Attack.__call__`` and by the command line. The cost is memory held, not leaked: a freed
block stays in the process for the next allocation. ``ADVLAB_MALLOC=off`` leaves the defaults
(e.g. beside an allocator of your own, or to compare); elsewhere than Linux with glibc it does
nothing. ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the environment are
glibc's own way to the same setting and are left to take precedence.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64 bits)
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # as glibc's own dynamic adjustment sets it
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # malloc.h
_state: dict[str, bool | None] = {"tuned": None}  # None: not tried yet in this process
log = logging.getLogger(__name__)


def _enabled() -> bool:
    value = os.environ.get("ADVLAB_MALLOC", "auto").strip().lower() or "auto"
    if value not in ("auto", "off"):
        raise ValueError(f"expected ADVLAB_MALLOC to be auto or off, got {value!r}")
    if value == "off":
        return False
    # the user set glibc's own variables: theirs stand
    return not any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"))


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()  # only glibc has it (musl does not)
        return libc
    except (OSError, AttributeError):
        return None


def tune() -> bool:
    """Set glibc's mmap and trim thresholds once per process; whether they are set."""
    if _state["tuned"] is not None:
        return bool(_state["tuned"])
    tuned = False
    if _enabled():
        libc = _glibc()
        if libc is not None:
            tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
                bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            if tuned:
                log.debug("glibc malloc: mmap threshold %d MiB, trim threshold %d MiB "
                          "(ADVLAB_MALLOC=off keeps the defaults)", MMAP_THRESHOLD >> 20,
                          TRIM_THRESHOLD >> 20)
    _state["tuned"] = tuned
    return tuned


def tuned() -> bool | None:
    """Whether ``tune`` set the thresholds in this process (None: not called yet)."""
    return _state["tuned"]
