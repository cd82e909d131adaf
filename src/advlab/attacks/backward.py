"""Which convolution backward computes input gradients on a CPU: measured once per model.

Every gradient attack spends most of its time in the backward pass of the model's convolutions
with respect to the input. On a CPU PyTorch runs both directions with oneDNN by default, and
oneDNN's backward is not always the fastest: on the lab's machine PyTorch's own (im2col +
matrix product) backward takes an input gradient of the strided ``wong-cnn`` in 0.70× the time
and of ``lenet5`` in 0.53×, while for ``madry-cnn`` and ``resnet-small`` oneDNN is faster.
The forward pass stays with oneDNN either way (it is faster there for every model measured).

``conv_backward(model, sample_shape, device)`` times one forward+backward of a batch of 256
random inputs both ways (a warm-up, then five alternated calls each, the fastest of each
counts; CPU time of the thread when torch runs one) and answers
``"native"`` only when that is at least ``MARGIN`` faster: a choice that is close either way
stays with PyTorch's default, so it does not flip between runs. The answer is cached per
machine (``cpu_backward.json`` beside the batch-size cache, keyed like it by the model's
architecture, the input shape, the threads and the torch version) and announced in one log
line the first time. Both ways compute the same gradient up to float rounding (about 1e-6).

Under torchrun a process uses the cached answer, or oneDNN where none is cached (the processes
could measure different answers and their results then differ by rounding).

``ADVLAB_CPU_BACKWARD`` = ``auto`` (the default), ``onednn`` or ``native`` overrides the
measurement, e.g. for bitwise-reproducible runs across machines. Models without convolutions,
models on a GPU, compiled models (``torch.compile`` fixes the backward graph when it traces)
and plain callables are never measured (``"onednn"``: nothing to choose).

``Attack.__call__`` holds the choice for the model it attacks (``using``); ``grad`` is
``torch.autograd.grad`` under it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor, nn

from advlab.io import write_json
from advlab.modes import eval_mode
from advlab.tuning import _key, cache_dir

CHOICES = ("onednn", "native")
MARGIN = 0.85  # native is chosen when it takes at most this fraction of oneDNN's time
CACHE_FILE = "cpu_backward.json"
_BATCH = 256
_REPS = 5
_SLOW_CALL = 2.0  # seconds: a model this slow per call is not measured (oneDNN kept)
_memo: dict[str, str] = {}
_native: ContextVar[bool] = ContextVar("advlab_native_conv_backward", default=False)
log = logging.getLogger(__name__)


def _override() -> str | None:
    value = os.environ.get("ADVLAB_CPU_BACKWARD", "auto").strip().lower() or "auto"
    if value not in ("auto", *CHOICES):
        raise ValueError(f"expected ADVLAB_CPU_BACKWARD to be one of auto, onednn, native, got "
                         f"{value!r}")
    return None if value == "auto" else value


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def _compiled(model: nn.Module) -> bool:
    """Whether ``torch.compile`` runs any part of the model (a compiled module, or a compiled
    forward set on an instance as ``--compile`` does): its backward graph is fixed when
    traced, with the strides of oneDNN's results, and must not be switched."""
    return any(isinstance(m, torch._dynamo.eval_frame.OptimizedModule)
               or hasattr(m.__dict__.get("forward"), "_torchdynamo_orig_callable")
               for m in model.modules())


def _read(path) -> dict[str, str]:
    """The valid entries of the cache file; anything else is dropped (and the file rewritten
    by the next measurement)."""
    try:
        known = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        return {}
    return {k: v for k, v in known.items() if v in CHOICES}


def _seconds(model: nn.Module, x: Tensor, native: bool) -> float:
    # one thread: its CPU time, which other processes on the machine do not inflate; several:
    # the wall clock (the CPU time of one thread would miss the others' work)
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    xa = x.clone().requires_grad_(True)
    start = clock()
    out = model(xa)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, Tensor) and out.requires_grad:
        with _mkldnn(not native):
            torch.autograd.grad(out.float().logsumexp(1).sum(), xa)
    return clock() - start


def _measure(model: nn.Module, sample_shape: Sequence[int], device: torch.device,
             dtype: torch.dtype) -> tuple[str, float, float]:
    """(choice, oneDNN seconds, native seconds) of one forward+backward of ``_BATCH`` inputs."""
    x = torch.rand(_BATCH, *sample_shape, device=device, dtype=dtype)
    with eval_mode(model), torch.inference_mode(False), torch.enable_grad():
        if _seconds(model, x, False) > _SLOW_CALL:  # the warm-up: too slow to measure
            return "onednn", float("nan"), float("nan")
        _seconds(model, x, True)
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(_REPS):
            for native in (False, True):
                times[native].append(_seconds(model, x, native))
    onednn, native = min(times[False]), min(times[True])
    return ("native" if native <= MARGIN * onednn else "onednn"), onednn, native


def conv_backward(model: object, sample_shape: Sequence[int], device: torch.device | str,
                  dtype: torch.dtype = torch.float32, *, cache: bool = True) -> str:
    """``"onednn"`` or ``"native"``: the convolution backward that takes input gradients of
    ``model`` fastest on this CPU (see the module)."""
    device = torch.device(device)
    forced = _override()
    if (not isinstance(model, nn.Module) or device.type != "cpu" or _compiled(model)
            or not torch.backends.mkldnn.is_available()):
        return "onednn"
    if forced is not None:
        return forced
    if not _has_conv(model):
        return "onednn"
    key = _key(model, sample_shape, device) + f"|{dtype}"
    choice = _memo.get(key)
    path = cache_dir() / CACHE_FILE
    if choice is None and cache:
        choice = _read(path).get(key)
    if choice is None and _distributed():
        # processes of one torchrun job could measure different answers, and their results
        # would then differ by rounding: without a cached answer they keep PyTorch's default
        choice = "onednn"
    if choice is None:
        choice, t_onednn, t_native = _measure(model, sample_shape, device, dtype)
        log.info("input gradients of this model on the CPU: %s convolution backward "
                 "(forward+backward of %d inputs: %.1f ms with oneDNN, %.1f ms native; "
                 "measured once, cached in %s; ADVLAB_CPU_BACKWARD overrides)", choice,
                 _BATCH, 1e3 * t_onednn, 1e3 * t_native, path if cache else "memory")
        if cache:
            known = _read(path)
            known[key] = choice
            try:
                write_json(path, known)
            except OSError:
                pass  # a read-only home still gets the measured answer, just not cached
    _memo[key] = choice
    return choice


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@contextmanager
def _mkldnn(enabled: bool) -> Iterator[None]:
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


@contextmanager
def using(choice: str) -> Iterator[None]:
    """Within: ``grad`` takes input gradients with the convolution backward ``choice``."""
    token = _native.set(choice == "native")
    try:
        yield
    finally:
        _native.reset(token)


def grad(outputs: Tensor, inputs: Tensor, **kwargs) -> tuple[Tensor, ...]:
    """``torch.autograd.grad`` with the convolution backward chosen for the attacked model."""
    if not _native.get():
        return torch.autograd.grad(outputs, inputs, **kwargs)
    with _mkldnn(False):
        return torch.autograd.grad(outputs, inputs, **kwargs)
