"""Make anyone's classifier fit advlab's model contract: pixels in [0, 1] (B, ...) -> logits (B, K).

Attacks, budgets ε and the pixel box all live in [0, 1] pixel space. A model trained on
normalised inputs, on inputs in another range ([-1, 1], [0, 255]) or returning a dict or a
tuple is wrapped once, and every attack and evaluation then runs on it unchanged::

    net = advlab.wrap(model, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    net = advlab.wrap(model, bounds=(-1, 1), output="logits")   # inputs in [-1, 1], a dict
    x = net.to_unit(x_model_units); eps = net.eps_to_unit(8 / 255 * 2)

The wrapper computes ``model((lo + (hi − lo)·u − mean) / std)`` for pixels ``u`` in [0, 1]:
``bounds=(lo, hi)`` is the range of the model's inputs, ``mean``/``std`` are in the model's
units (the usual torchvision values when ``bounds`` is (0, 1)). ``bounds`` maps [0, 1]
linearly, so a budget given in the model's units is ε / (hi − lo) in pixels, for every ℓp norm.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

Channels = float | Sequence[float] | None


def _channels(name: str, value: Channels, *, positive: bool = False) -> tuple[float, ...] | None:
    """``value`` as a tuple of finite floats (one per channel, or one for all), or None."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        value = value.flatten().tolist()
    values = (value,) if isinstance(value, (int, float)) else tuple(value)
    ok = values and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                        and math.isfinite(v) and (v > 0 or not positive) for v in values)
    if not ok:
        valid = "finite numbers > 0" if positive else "finite numbers"
        raise ValueError(f"expected {name} to be a number or a sequence of {valid} (one per "
                         f"channel), got {value!r}")
    return tuple(float(v) for v in values)


def _bounds(bounds: Sequence[float] | None) -> tuple[float, float] | None:
    if bounds is None:
        return None
    try:
        lo, hi = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"expected bounds to be a pair (lo, hi), got {bounds!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"expected bounds (lo, hi) of finite numbers with lo < hi, "
                         f"got {bounds!r}")
    return lo, hi


def _reference(model: Callable) -> Tensor | None:
    """The model's first floating-point parameter (else buffer): its dtype and device."""
    if not isinstance(model, nn.Module):
        return None
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t
    return None


class WrappedModel(nn.Module):
    """A classifier on pixels in [0, 1]: maps to the model's input range, normalises, casts to
    the model's dtype, calls it and returns its logits (B, K) in the input's dtype.

    Build it with :func:`wrap`. ``to_unit``/``from_unit`` convert data and adversarial examples
    between the model's units and pixels; ``eps_to_unit`` converts a budget.
    """

    def __init__(self, model: Callable[..., Any], mean: tuple[float, ...] | None,
                 std: tuple[float, ...] | None, bounds: tuple[float, float] | None,
                 output: str | int | None) -> None:
        super().__init__()
        self.model = model  # a submodule when an nn.Module, so .eval() and .to() reach it
        self.bounds = bounds
        self.output = output
        self._said_tuple = False
        ref = _reference(model)
        kw = {"dtype": ref.dtype, "device": ref.device} if ref is not None else {}
        self.normalised = mean is not None or std is not None
        # (C,) per channel, or (1,) for all; reshaped against the input in forward
        self.register_buffer("mean", torch.tensor(mean or (0.0,), **kw))
        self.register_buffer("std", torch.tensor(std or (1.0,), **kw))

    @property
    def scale(self) -> float:
        """hi − lo: one pixel-space unit in the model's units (1 without ``bounds``)."""
        return 1.0 if self.bounds is None else self.bounds[1] - self.bounds[0]

    def to_unit(self, x: Tensor) -> Tensor:
        """Inputs in the model's units [lo, hi] -> pixels in [0, 1]."""
        return x if self.bounds is None else (x - self.bounds[0]) / self.scale

    def from_unit(self, u: Tensor) -> Tensor:
        """Pixels in [0, 1] (an adversarial example) -> the model's units [lo, hi]."""
        return u if self.bounds is None else self.bounds[0] + self.scale * u

    def eps_to_unit(self, eps: float) -> float:
        """A budget ε in the model's units -> in pixels: ε / (hi − lo) (any ℓp norm)."""
        return eps / self.scale

    def train(self, mode: bool = True) -> WrappedModel:
        """Set train/eval mode. A ``torch.export`` program refuses ``.train()``: its behaviour
        was fixed when it was exported, so only its flags are set."""
        self.training = mode
        if isinstance(self.model, nn.Module):
            try:
                self.model.train(mode)
            except NotImplementedError:
                for m in self.model.modules():
                    m.training = mode
        return self

    def forward(self, u: Tensor) -> Tensor:  # (B, ...) pixels in [0, 1] -> (B, K)
        ref = _reference(self.model)
        x = self.from_unit(u if ref is None else u.to(ref.dtype))
        if self.normalised:
            c = max(self.mean.numel(), self.std.numel())
            if c > 1 and (x.dim() < 2 or x.shape[1] != c):
                raise ValueError(f"expected inputs (B, {c}, ...) for the {c} channels of "
                                 f"mean/std, got {tuple(x.shape)}")
            view = (-1, *([1] * (x.dim() - 2))) if x.dim() >= 2 else (-1,)
            x = (x - self.mean.to(x.dtype).reshape(view)) / self.std.to(x.dtype).reshape(view)
        out = self._logits(self.model(x))
        return out.to(u.dtype) if isinstance(out, Tensor) and out.is_floating_point() else out

    def _logits(self, out: Any) -> Tensor:
        if isinstance(out, Mapping):
            if self.output is None:
                raise ValueError(f"expected the model to return logits, got a dict with keys "
                                 f"{_keys(out)}: pass output=KEY (the CLI's --output-key KEY) "
                                 f"to name the logits")
            if self.output not in out:
                raise ValueError(f"expected the model's output to hold the key "
                                 f"{self.output!r}, got keys {_keys(out)}")
            return out[self.output]
        if isinstance(out, (tuple, list)):
            if isinstance(self.output, int) and not isinstance(self.output, bool):
                if not -len(out) <= self.output < len(out):
                    raise ValueError(f"expected output index in [0, {len(out) - 1}] for the "
                                     f"model's {type(out).__name__} of {len(out)}, "
                                     f"got {self.output}")
                return out[self.output]
            if self.output is not None:
                raise ValueError(f"expected a dict output for output={self.output!r}, got a "
                                 f"{type(out).__name__}: pass an integer index or no output")
            if not out:
                raise ValueError(f"expected logits from the model, got an empty "
                                 f"{type(out).__name__}")
            if not self._said_tuple:
                self._said_tuple = True
                log.info("the model returns a %s of %d; its first element is taken as the "
                         "logits (pass output=INDEX for another)", type(out).__name__, len(out))
            return out[0]
        if self.output is not None:
            raise ValueError(f"expected a dict (or tuple) output for output={self.output!r}, "
                             f"got {type(out).__name__}")
        return out

    def extra_repr(self) -> str:
        parts = [f"model={type(self.model).__name__}"]
        if self.bounds is not None:
            parts.append(f"bounds=({self.bounds[0]:g}, {self.bounds[1]:g})")
        if self.normalised:
            parts.append(f"mean={tuple(self.mean.tolist())}, std={tuple(self.std.tolist())}")
        if self.output is not None:
            parts.append(f"output={self.output!r}")
        ref = _reference(self.model)
        if ref is not None:
            parts.append(f"dtype={ref.dtype}, device={ref.device}")
        if not isinstance(self.model, nn.Module):
            parts.append(f"callable={self.model!r}")
        return ", ".join(parts)


def _keys(out: Mapping) -> str:
    keys = list(out)
    return ", ".join(map(repr, keys[:10])) + (" ..." if len(keys) > 10 else "")


def wrap(model: Callable[..., Any], *, mean: Channels = None, std: Channels = None,
         bounds: Sequence[float] | None = None, output: str | int | None = None
         ) -> WrappedModel:
    """``model`` as a classifier on pixels in [0, 1] (B, ...) -> logits (B, K).

    Args:
        model: an ``nn.Module`` (or any callable) mapping the model's inputs to its outputs.
        mean, std: per-channel sequences (channel axis 1) or floats: the model was trained on
            ``(x − mean) / std``, with ``x`` in the model's units; normalised inside.
        bounds: ``(lo, hi)``, the model's input range (e.g. (-1, 1) or (0, 255)); pixels
            ``u`` become ``lo + (hi − lo)·u``. Convert data with ``to_unit``, adversarial
            examples back with ``from_unit``, and a budget with ``eps_to_unit`` (ε / (hi − lo)).
        output: for a model returning a dict, the key of the logits; for a tuple or list,
            an index (default: its first element, said once in the log).

    The model keeps its device and dtype: inputs are cast to its parameters' dtype (a float64
    model works) and the logits come back in the input's dtype.
    """
    if not callable(model):
        raise ValueError(f"expected model to be an nn.Module or a callable, "
                         f"got {type(model).__name__}")
    mean_t, std_t = _channels("mean", mean), _channels("std", std, positive=True)
    if mean_t and std_t and len(mean_t) != len(std_t) and 1 not in (len(mean_t), len(std_t)):
        raise ValueError(f"expected mean and std of the same length (one per channel), got "
                         f"{len(mean_t)} and {len(std_t)}")
    if output is not None and (isinstance(output, bool) or not isinstance(output, (str, int))):
        raise ValueError(f"expected output to be a dict key (str) or a tuple index (int), "
                         f"got {output!r}")
    return WrappedModel(model, mean_t, std_t, _bounds(bounds), output)
