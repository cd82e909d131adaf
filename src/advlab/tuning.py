"""The batch size at which this machine attacks a given model fastest: measured once, cached.

One large batch is not the fastest way through a gradient attack on a CPU: on the lab's 2-core
machine a batch of 1000 MNIST images through the Madry CNN is memory-bound, and the same images
in smaller batches take about half the time. ``auto_batch_size`` times one forward+backward
with respect to the input (the unit of work of every gradient attack) for a few candidate sizes
and returns the one with the least time per example. The answer is cached in a JSON file keyed
by the model (class, parameter shapes), the input shape, the device, the number of threads and
the torch version, so each machine measures each model once.

The measurement is announced in one log line naming the cache file and stops after about
``BUDGET`` (2) seconds with the best size seen. A cache file holding anything but batch sizes
(a 0, a string, a list, or no JSON at all) is reported once, naming it, its bad entries ignored
and the file rewritten.

The cache lives in ``$ADVLAB_CACHE`` if set, else ``~/.cache/advlab``; ``ADVLAB_BATCH_SIZE``
overrides the measurement with a fixed number (e.g. for exactly reproducible random starts
across machines: a random start is drawn per batch, so it depends on the batch boundaries).
"""

from __future__ import annotations

import hashlib
import json
import logging
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
# seconds: the whole measurement stops once it has taken this long (with the best size seen)
BUDGET = 2.0
CACHE_FILE = "batch_sizes.json"
_memo: dict[str, int] = {}
_warned_bad_cache = False  # a malformed cache file is reported once per process
log = logging.getLogger(__name__)


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
                      device: torch.device, reps: int,
                      deadline: float | None = None) -> tuple[float, bool]:
    """Median seconds per example of up to ``reps`` timed calls after a warm-up call, and
    whether to stop measuring (try no larger batch): the warm-up took more than ``SLOW_CALL``
    s (that call alone is then the measurement), or the clock passed ``deadline`` (the calls
    timed so far are the measurement, at least one)."""
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
        late = deadline is not None and time.perf_counter() > deadline
        if len(times) == 1 and (times[0] > SLOW_CALL or late):
            return times[0] / batch, True
        if late:
            break
    return statistics.median(times[1:]) / batch, late


def _valid(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _read_cache(path: Path) -> tuple[dict[str, int], bool]:
    """The valid entries of the cache file ``path`` and whether it held anything else (not
    JSON, not a mapping, or a value that is not a batch size >= 1): such a file is reported
    once (naming it), its bad entries ignored, and it is rewritten after the measurement."""
    global _warned_bad_cache
    try:
        if not path.is_file():
            return {}, False
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        known, problem = {}, f"unreadable ({e})"
    else:
        problem = None
        if not isinstance(known, dict):
            known, problem = {}, f"expected a JSON object, got {type(known).__name__}"
    good = {k: v for k, v in known.items() if _valid(v)}
    bad = sorted(set(known) - set(good))
    if bad and problem is None:
        problem = (f"expected batch sizes >= 1, got {known[bad[0]]!r}"
                   + (f" and {len(bad) - 1} more bad entries" if len(bad) > 1 else ""))
    if problem is not None and not _warned_bad_cache:
        _warned_bad_cache = True
        log.warning("ignoring the bad entries of the batch-size cache %s (%s); they are "
                    "measured again and the file rewritten", path, problem)
    return good, problem is not None


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
    path = cache_dir() / CACHE_FILE
    if best is None and cache:
        best = _read_cache(path)[0].get(key)
    if best is None:
        log.info("measuring the fastest attack batch size for this model on %s (about %g s, "
                 "once: the answer is cached in %s)", device, BUDGET,
                 path if cache else "memory")
        flags = [m.training for m in model.modules()]
        model.eval()
        deadline = time.perf_counter() + BUDGET
        try:
            with torch.inference_mode(False), torch.enable_grad():
                per = {}
                for b in sorted(candidates):
                    per[b], stop = _time_per_example(model, sample_shape, b, device, reps,
                                                     deadline)
                    if stop:
                        break
        finally:
            for m, f in zip(model.modules(), flags, strict=True):
                m.training = f
        best = min(per, key=per.get)
        if cache:
            known = _read_cache(path)[0]  # bad entries are dropped from the rewritten file
            known[key] = best
            try:
                write_json(path, known)
            except OSError:
                pass  # a read-only home still gets the measured answer, just not cached
    _memo[key] = int(best)
    return min(int(best), limit) if limit else int(best)
