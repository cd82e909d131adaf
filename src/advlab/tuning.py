"""The batch size at which this machine attacks a given model fastest: measured once, cached.

One large batch is not the fastest way through a gradient attack on a CPU: on the lab's 2-core
machine a batch of 1000 MNIST images through the Madry CNN is memory-bound, and the same images
in smaller batches take about half the time. ``auto_batch_size`` times one forward+backward
with respect to the input (the unit of work of every gradient attack) for a few candidate sizes
and returns the one with the least time per example. The answer is cached in a JSON file keyed
by the model (class, parameter shapes), the input shape, the device, the number of threads and
the torch version, so each machine measures each model once.

The cache lives in ``$ADVLAB_CACHE`` if set, else ``~/.cache/advlab``; ``ADVLAB_BATCH_SIZE``
overrides the measurement with a fixed number (e.g. for exactly reproducible random starts
across machines: a random start is drawn per batch, so it depends on the batch boundaries).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from advlab.io import write_json

CANDIDATES = (50, 100, 250, 500, 1000)
# seconds: a call slower than this (a defense that runs an optimization in every forward, e.g.
# a projection onto a generator's range) is measured once, and no larger batch is tried
SLOW_CALL = 2.0
_memo: dict[str, int] = {}


def cache_dir() -> Path:
    root = os.environ.get("ADVLAB_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "advlab"


def _key(model: nn.Module, sample_shape: Sequence[int], device: torch.device) -> str:
    h = hashlib.sha256()
    h.update(type(model).__qualname__.encode())
    for name, p in model.state_dict().items():
        h.update(f"{name}:{tuple(p.shape)};".encode())
    h.update(f"{tuple(sample_shape)}|{device.type}|{torch.get_num_threads()}|"
             f"{torch.__version__}".encode())
    return h.hexdigest()[:20]


def _time_per_example(model: nn.Module, sample_shape: Sequence[int], batch: int,
                      device: torch.device, reps: int) -> tuple[float, bool]:
    """Median seconds per example of ``reps`` timed calls after a warm-up call, and whether
    the model is slow (the warm-up took more than ``SLOW_CALL`` s: then that call alone is
    the measurement, and larger batches are not tried)."""
    x = torch.rand(batch, *sample_shape, device=device)
    times = []
    for _ in range(reps + 1):  # the first call warms up allocator and kernels
        xa = x.clone().requires_grad_(True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        out = model(xa)
        # a model whose output does not depend on x through autograd (a non-differentiable
        # defense) is timed all the same; the attack itself reports what it finds
        if out.requires_grad:
            torch.autograd.grad(out.logsumexp(1).sum(), xa, materialize_grads=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
        if len(times) == 1 and times[0] > SLOW_CALL:
            return times[0] / batch, True
    return statistics.median(times[1:]) / batch, False


def auto_batch_size(model: nn.Module, sample_shape: Sequence[int],
                    device: torch.device | str = "cpu", *, limit: int | None = None,
                    candidates: Sequence[int] = CANDIDATES, reps: int = 3,
                    cache: bool = True) -> int:
    """The candidate batch size with the least forward+backward time per example (see module).

    ``limit`` caps the answer (e.g. the number of points to attack: no point measuring 1000
    when 120 remain). The model is put in eval mode for the measurement and restored after.
    Candidates are tried from the smallest; after a call slower than ``SLOW_CALL`` seconds the
    larger ones are skipped (for an expensive model they cost minutes and gain nothing).
    """
    override = os.environ.get("ADVLAB_BATCH_SIZE")
    if override:
        if not override.isdigit() or int(override) < 1:
            raise ValueError(f"expected ADVLAB_BATCH_SIZE to be an integer >= 1, got "
                             f"{override!r}")
        return min(int(override), limit) if limit else int(override)
    device = torch.device(device)
    key = _key(model, sample_shape, device)
    best = _memo.get(key)
    path = cache_dir() / "batch_sizes.json"
    if best is None and cache and path.is_file():
        try:
            best = json.loads(path.read_text()).get(key)
        except (OSError, ValueError):
            best = None  # an unreadable cache is measured again and rewritten
    if best is None:
        flags = [m.training for m in model.modules()]
        model.eval()
        try:
            with torch.inference_mode(False), torch.enable_grad():
                per = {}
                for b in sorted(candidates):
                    per[b], slow = _time_per_example(model, sample_shape, b, device, reps)
                    if slow:
                        break
        finally:
            for m, f in zip(model.modules(), flags, strict=True):
                m.training = f
        best = min(per, key=per.get)
        if cache:
            try:
                known = json.loads(path.read_text()) if path.is_file() else {}
            except (OSError, ValueError):
                known = {}
            known[key] = best
            try:
                write_json(path, known)
            except OSError:
                pass  # a read-only home still gets the measured answer, just not cached
    _memo[key] = int(best)
    return min(int(best), limit) if limit else int(best)
