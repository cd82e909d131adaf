"""Shared pieces of the benchmarks: timing, medians, markdown fragments."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
FRAGMENTS = ROOT / "docs" / "benchmarks"


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}")


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def write_fragment(name: str, title: str, command: str, body: str) -> Path:
    """Write one benchmark's markdown section (assembled into docs/BENCHMARKS.md by bench.run)."""
    FRAGMENTS.mkdir(parents=True, exist_ok=True)
    path = FRAGMENTS / f"{name}.md"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    path.write_text(f"## {title}\n\nMeasured {stamp} with `{command}` on {machine()}.\n\n"
                    f"{body.strip()}\n")
    return path


def require_data() -> None:
    if not os.environ.get("ADVLAB_DATA"):
        sys.exit("set ADVLAB_DATA to the data root (e.g. ../shared/data) to run this benchmark")
