"""Shared pieces of the benchmarks: timing, alternated medians, model runs, markdown fragments."""

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
FRAGMENTS = ROOT / "docs" / "benchmarks"
OUT = ROOT / "bench" / "out"
T = TypeVar("T")


def cli(doc: str, quick="smaller settings (smoke run)", **options: dict) -> argparse.Namespace:
    """The command line: ``--quick`` (``quick``: its help), ``--NAME`` for each of ``options``."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--quick", action="store_true", help=quick)
    for name, keywords in options.items():
        ap.add_argument("--" + name.replace("_", "-"), **keywords)
    return ap.parse_args()


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}")


def clocked(fn: Callable[[], T], clock: Callable[[], float] = time.perf_counter) -> tuple[float, T]:
    """(seconds by ``clock``, ``fn()``)."""
    t = clock()
    out = fn()
    return clock() - t, out


def rounds(fns: Sequence[Callable[[int], float]], reps: int) -> list[list[float]]:
    """The seconds of each ``fn(rep) -> seconds`` over ``reps`` runs, the functions alternating
    (ABAB...) so that the machine's load drifts hit all alike."""
    times: list[list[float]] = [[] for _ in fns]
    for r in range(reps):
        for fn, ts in zip(fns, times, strict=True):
            ts.append(fn(r))
    return times


def alternated(fns: Sequence[Callable[[int], float]], reps: int) -> list[float]:
    """The median of each function's seconds in ``rounds(fns, reps)``."""
    return [statistics.median(ts) for ts in rounds(fns, reps)]


def fwd_bwd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> None:
    """One forward+backward w.r.t. the input over ``x`` in batches: an attack step's floor
    (with the CPU convolution backward advlab's attacks use for this model)."""
    from advlab.attacks import backward

    with backward.using(backward.conv_backward(model, x.shape[1:], x.device)):
        for xb, yb in zip(x.split(batch), y.split(batch), strict=True):
            xb = xb.detach().requires_grad_(True)
            backward.grad(F.cross_entropy(model(xb), yb, reduction="sum"), xb)


def peak_kb() -> int:
    """Peak resident memory (kB) since this program's exec (``ru_maxrss`` counts the parent's)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def model_run(path: Path, hint: str) -> Path:
    """``path`` if it holds a trained model, else exit saying how to make one (or find the data)."""
    require_data()
    if not (path / "model.safetensors").is_file():
        sys.exit(f"no trained model in {path}: {hint} or pass --model-run")
    return path


def write_fragment(name: str, title: str, command: str, body: str, quick: bool = False) -> Path:
    """Write one benchmark's markdown section (assembled into docs/BENCHMARKS.md by bench.run);
    ``quick``: as NAME-quick.md (which bench.run leaves out), with ``--quick`` in the command."""
    FRAGMENTS.mkdir(parents=True, exist_ok=True)
    path = FRAGMENTS / f"{name}{'-quick' * quick}.md"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    path.write_text(f"## {title}\n\nMeasured {stamp} with `{command}{' --quick' * quick}` on "
                    f"{machine()}.\n\n{body.strip()}\n")
    return path


def require_data() -> None:
    if not os.environ.get("ADVLAB_DATA"):
        sys.exit("set ADVLAB_DATA to the data root (e.g. ../shared/data) to run this benchmark")
