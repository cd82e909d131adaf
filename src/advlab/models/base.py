"""The model registry, the ``Classifier`` wrapper every model shares, and ``create``/``from_spec``.

A registered factory has the signature ``factory(in_shape, num_classes, *, <architecture
keywords>) -> nn.Module`` and returns the network body, which maps normalized inputs to logits.
``create`` resolves the input shape and class count from the data set, binds and checks the
keywords, wraps the body in a ``Classifier`` (optional ``Normalize`` first layer) and records a
JSON-serialisable ``spec`` from which ``from_spec`` rebuilds the same architecture.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import numbers
from typing import Any

import torch
from torch import nn

from advlab.data.base import info as dataset_info
from advlab.models.layers import Normalize, UnsupportedInput
from advlab.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")

# Transforms applied to a built model (e.g. the Lipschitz defense's spectral bounds), recorded in
# ``spec["transforms"]`` as ``[{"name", "params"}]`` so that ``from_spec`` rebuilds the same
# module tree. ``transform(model, **params) -> model`` appends its own entry to the spec. The
# packages below define transforms and are imported on demand when a spec names one.
TRANSFORMS: Registry[nn.Module] = Registry("model transform")
TRANSFORM_PROVIDERS = ("advlab.defenses",)

# Per-channel statistics of each data set's training images in [0, 1], used when
# ``normalize=True`` and no ``mean``/``std`` are given. Keyed by family (``DatasetInfo.family``):
# a re-encoding of a set (cifar10-jpeg) takes its family's statistics and defaults.
NORMALIZATION_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "digits": ((0.3053,), (0.3760,)),
}
# Data sets whose models normalize their input unless told otherwise.
NORMALIZE_BY_DEFAULT = frozenset({"cifar10"})

# Keywords handled by ``create`` itself, valid for every model.
COMMON_KWARGS = ("in_shape", "in_features", "num_classes", "normalize", "mean", "std")


class Classifier(nn.Module):
    """A classifier on pixels in [0, 1]: ``normalize`` (``Normalize`` or identity), then ``net``.

    Attributes: ``input_shape`` (one example's shape, (C, H, W) or (D,)), ``num_classes``,
    ``spec`` (``{"name", "dataset", "kwargs"}``, JSON-serialisable, see ``from_spec``).
    """

    def __init__(
        self,
        net: nn.Module,
        input_shape: tuple[int, ...],
        num_classes: int,
        normalize: Normalize | None = None,
        spec: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.normalize = normalize if normalize is not None else nn.Identity()
        self.net = net
        self.input_shape = tuple(input_shape)
        self.num_classes = int(num_classes)
        self.spec = spec if spec is not None else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, *input_shape) -> logits (B, num_classes)
        if x.dim() != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected input of shape (B, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(x.shape)}"
            )
        return self.net(self.normalize(x))

    def extra_repr(self) -> str:
        return f"name={self.spec.get('name')!r}, input_shape={self.input_shape}"


def available() -> list[str]:
    """Names of the registered models."""
    return MODELS.available()


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (not buffers) of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _to_json(value: Any) -> Any:
    """Tuples to lists, recursively; anything not JSON-serialisable raises ``ValueError``."""
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    try:
        json.dumps(value)
    except TypeError as err:
        raise ValueError(f"expected a JSON-serialisable keyword value, got {value!r}") from err
    return value


def _to_tuples(value: Any) -> Any:
    """Lists to tuples, recursively (the inverse of ``_to_json`` for factory arguments)."""
    if isinstance(value, list | tuple):
        return tuple(_to_tuples(v) for v in value)
    return value


def _resolve_shape(
    dataset: str | None, in_shape: Any, in_features: Any, num_classes: Any
) -> tuple[tuple[int, ...], int]:
    if in_shape is not None and in_features is not None:
        raise ValueError(
            f"expected at most one of in_shape and in_features, got in_shape={in_shape} "
            f"and in_features={in_features}"
        )
    if in_features is not None:
        in_shape = (in_features,)
    ds = dataset_info(dataset) if dataset is not None else None
    if ds is None and (in_shape is None or num_classes is None):
        raise ValueError(
            "expected a dataset name, or both in_shape (or in_features) and num_classes; "
            f"got dataset=None, in_shape={in_shape}, num_classes={num_classes}"
        )
    shape = tuple(in_shape) if in_shape is not None else ds.shape
    classes = num_classes if num_classes is not None else ds.num_classes
    if len(shape) not in (1, 3) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape
    ):
        raise ValueError(f"expected in_shape as (C, H, W) or (D,) of positive ints, got {shape}")
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 2:
        raise ValueError(f"expected num_classes as an int >= 2 (a classifier needs at least "
                         f"two classes), got {classes!r}")
    return shape, classes


def _statistics(value: Any, what: str) -> tuple[float, ...]:
    """``mean`` or ``std`` as a non-empty tuple of finite floats (``std``: all > 0).

    A list or tuple of numbers, or one number (one value for every channel).
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value
    ):
        raise ValueError(f"expected {what} as a list of numbers (one per channel, or one for "
                         f"all channels), got {value!r}")
    if not value:
        raise ValueError(f"expected {what} as a non-empty list of numbers, got {value!r}")
    floats = tuple(float(v) for v in value)
    if what == "std":
        if not all(math.isfinite(v) and v > 0 for v in floats):
            raise ValueError(f"expected std as finite numbers > 0, got {list(floats)}")
    elif not all(math.isfinite(v) for v in floats):
        raise ValueError(f"expected {what} as finite numbers, got {list(floats)}")
    return floats


def _resolve_normalize(
    dataset: str | None, shape: tuple[int, ...], normalize: Any, mean: Any, std: Any
) -> tuple[bool, tuple[float, ...] | None, tuple[float, ...] | None]:
    family = dataset_info(dataset).family if dataset is not None else None
    if normalize is None:
        normalize = mean is not None or std is not None or family in NORMALIZE_BY_DEFAULT
    if not isinstance(normalize, bool):
        raise ValueError(f"expected normalize as a bool, got {normalize!r}")
    if not normalize:
        if mean is not None or std is not None:
            raise ValueError(f"expected no mean/std with normalize=False, got {mean=}, {std=}")
        return False, None, None
    if (mean is None) != (std is None):
        raise ValueError(f"expected both mean and std or neither, got {mean=}, {std=}")
    if mean is None:
        if family not in NORMALIZATION_STATS:
            raise ValueError(
                f"normalize=True needs mean and std: no default statistics for dataset "
                f"{dataset!r} (defaults exist for {', '.join(NORMALIZATION_STATS)})"
            )
        mean, std = NORMALIZATION_STATS[family]
    mean, std = _statistics(mean, "mean"), _statistics(std, "std")
    if len(mean) != len(std) or len(mean) not in (1, shape[0]):
        raise ValueError(
            f"expected mean and std of equal length, 1 or {shape[0]} (channels of {shape}), "
            f"got lengths {len(mean)} and {len(std)}"
        )
    return True, mean, std


def create(name: str, dataset: str | None = "mnist", **kwargs: Any) -> Classifier:
    """Build the registered model ``name`` for ``dataset``'s input shape and classes.

    Keywords valid for every model: ``in_shape=(C, H, W)`` or ``(D,)`` / ``in_features=D``
    and ``num_classes`` (an int >= 2) override the data set's; ``normalize`` (a bool, default:
    on for the cifar10 family: cifar10, cifar10-jpeg), ``mean``, ``std`` (default: the
    statistics of the data set's family; lists of finite numbers, one per channel or one for
    all, std > 0). Other keywords are the architecture's own (see each factory). Keywords
    set to ``None`` are ignored.
    Raises ``ValueError`` for an unknown name or keyword, an invalid value, or a data set the
    model cannot take.
    """
    factory = MODELS.get(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    shape, classes = _resolve_shape(
        dataset, kwargs.pop("in_shape", None), kwargs.pop("in_features", None),
        kwargs.pop("num_classes", None),
    )
    normalize, mean, std = _resolve_normalize(
        dataset, shape, kwargs.pop("normalize", None), kwargs.pop("mean", None),
        kwargs.pop("std", None),
    )

    params = inspect.signature(factory).parameters
    arch_names = [p for p in params if p not in ("in_shape", "num_classes")]
    unknown = sorted(set(kwargs) - set(arch_names))
    if unknown:
        raise ValueError(
            f"unknown keyword(s) {', '.join(unknown)} for model {name!r}; valid: "
            f"{', '.join(COMMON_KWARGS + tuple(arch_names))}"
        )
    arch = {p: kwargs.get(p, params[p].default) for p in arch_names}
    arch_json = _to_json(arch)
    try:
        net = factory(shape, classes, **{k: _to_tuples(v) for k, v in arch_json.items()})
    except UnsupportedInput as err:
        raise ValueError(
            f"model {name!r} does not support dataset {dataset!r} (input shape {shape}): {err}"
        ) from err

    spec_kwargs: dict[str, Any] = {"in_shape": list(shape), "num_classes": classes,
                                   "normalize": normalize}
    if normalize:
        spec_kwargs.update(mean=list(mean), std=list(std))
    spec_kwargs.update(arch_json)
    spec = {"name": name, "dataset": dataset, "kwargs": spec_kwargs}
    norm = Normalize(mean, std) if normalize else None
    return Classifier(net, shape, classes, normalize=norm, spec=spec)


def from_spec(spec: dict[str, Any]) -> Classifier:
    """Rebuild the architecture described by ``model.spec`` (weights freshly initialized)."""
    if not isinstance(spec, dict) or not {"name", "dataset", "kwargs"} <= set(spec):
        raise ValueError(f"expected a dict with keys name, dataset, kwargs, got {spec!r}")
    model = create(spec["name"], spec["dataset"], **spec["kwargs"])
    transforms = spec.get("transforms") or []
    if transforms:
        for provider in TRANSFORM_PROVIDERS:
            importlib.import_module(provider)
    for t in transforms:
        model = TRANSFORMS.get(t["name"])(model, **t.get("params", {}))
    return model
