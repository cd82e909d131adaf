"""The generative-model registry, the interface every model shares, ``create`` and ``from_spec``.

A registered factory has the signature ``factory(data_shape, *, <architecture keywords>) ->
GenerativeModel``. ``create(name, dataset=...)`` resolves the data shape from the data set (or
``in_shape=``), binds and checks the keywords and records a JSON-serialisable ``spec`` from
which ``from_spec`` rebuilds the same architecture (the way checkpoints are reloaded).

Every model maps latent codes ``z`` (B, latent_dim) drawn from its prior to data (B, *data_shape):
images in [0, 1] (a sigmoid output) or unbounded 2-D points. The shared interface:

- ``decode(z)``: differentiable, in the model's current train/eval mode;
- ``sample(n, generator=None)``: ``decode`` of prior draws, in eval mode, without gradients;
- ``project(x, steps, lr, restarts, norm)``: ``argmin_z ||decode(z) - x||`` (see ``projection``);
- ``encode(x)`` for the autoencoders (AE, VAE).
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import torch
from torch import nn

from advlab.data.base import info as dataset_info
from advlab.inputs import check_floating, check_values
from advlab.registry import Registry

GENERATIVE: Registry[GenerativeModel] = Registry("generative model")

ARCHS = ("mlp", "conv")
# Keywords handled by ``create`` itself, valid for every model.
COMMON_KWARGS = ("in_shape",)


class GenerativeModel(nn.Module):
    """Base class: a decoder/generator from a ``latent_dim``-dimensional prior to data.

    Attributes: ``data_shape`` (one example, (C, H, W) or (D,)), ``latent_dim``, ``kind``
    ("image": outputs in [0, 1]; "points": unbounded), ``family`` ("autoencoder" or
    "adversarial"), ``spec`` (``{"name", "dataset", "kwargs"}``, set by ``create``).
    """

    family = "generative"

    def __init__(self, data_shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        self.latent_dim = int(latent_dim)
        self.kind = "image" if len(self.data_shape) == 3 else "points"
        self.spec: dict[str, Any] = {}

    # -- shapes ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_data(self, x: torch.Tensor, what: str = "x") -> None:
        """Raise ``ValueError`` unless ``x`` is a batch (B, *data_shape) of finite floats, inside
        [0, 1] for image models (pixels; the error gives the observed range and, for uint8
        input, the conversion). Points are unbounded: only finiteness is checked."""
        self.check_shape(x, what)
        pixels = self.kind == "image"
        check_floating(x, what, box=pixels, uint8_hint=pixels)
        check_values(x, what, box=pixels)

    def check_shape(self, x: torch.Tensor, what: str = "x") -> None:
        """Raise ``ValueError`` unless ``x`` is a batch (B, *data_shape); values unchecked (for
        the model's own outputs in training, where a NaN is the loop's divergence to report)."""
        if not isinstance(x, torch.Tensor) or x.dim() != len(self.data_shape) + 1 \
                or tuple(x.shape[1:]) != self.data_shape:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected {what} of shape (B, {', '.join(map(str, self.data_shape))})"
                             f", got {shape}")

    def check_latent(self, z: torch.Tensor) -> None:
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.latent_dim:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"expected latent codes of shape (B, {self.latent_dim}), got {shape}")

    # -- the shared interface ----------------------------------------------------------------
    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` codes from the prior N(0, I), on the model's device. (n, latent_dim)

        With ``generator`` the draw is made on the generator's device, then moved.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"expected a positive number of samples n, got {n!r}")
        if generator is None:
            return self.prior_from_normal(torch.randn(n, self.latent_dim, device=self.device))
        z = torch.randn(n, self.latent_dim, generator=generator, device=generator.device)
        return self.prior_from_normal(z.to(self.device))

    def prior_from_normal(self, eps: torch.Tensor) -> torch.Tensor:
        """Prior codes from standard normal draws ``eps`` (n, latent_dim): the map that
        ``prior_sample`` applies (the identity for the N(0, I) prior)."""
        return eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes (B, latent_dim) -> data (B, *data_shape), differentiable."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples (n, *data_shape): ``decode`` of prior draws, in eval mode, no grad."""
        was_training = self.training
        self.eval()
        try:
            return self.decode(self.prior_sample(n, generator))
        finally:
            self.train(was_training)

    def project(self, x: torch.Tensor, steps: int = 200, lr: float = 0.05, restarts: int = 4,
                norm: str = "l2", generator: torch.Generator | None = None,
                z_init: torch.Tensor | None = None):
        """The closest point of the model's range to ``x``: ``argmin_z ||decode(z) - x||``.

        Returns ``Projection(z, x_hat)`` (``z``: (B, latent_dim), ``x_hat = decode(z)``),
        the best of ``restarts`` random starts for every example. See ``projection.project``.
        """
        from advlab.generative.projection import project

        return project(self, x, steps=steps, lr=lr, restarts=restarts, norm=norm,
                       generator=generator, z_init=z_init)

    def extra_repr(self) -> str:
        return (f"name={self.spec.get('name')!r}, data_shape={self.data_shape}, "
                f"latent_dim={self.latent_dim}")


def available() -> list[str]:
    """Names of the registered generative models."""
    return GENERATIVE.available()


def _to_json(value: Any) -> Any:
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
    if isinstance(value, list | tuple):
        return tuple(_to_tuples(v) for v in value)
    return value


def _resolve_shape(dataset: str | None, in_shape: Any) -> tuple[int, ...]:
    if in_shape is None:
        if dataset is None:
            raise ValueError("expected a dataset name or in_shape=(C, H, W) / (D,), got neither")
        return dataset_info(dataset).shape
    shape = tuple(in_shape)
    if len(shape) not in (1, 3) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"expected in_shape as (C, H, W) or (D,) of positive ints, got {shape}")
    return shape


def create(name: str, dataset: str | None = None, **kwargs: Any) -> GenerativeModel:
    """Build the registered generative model ``name`` for ``dataset``'s data shape.

    ``in_shape=(C, H, W)`` or ``(D,)`` overrides the data set's shape; other keywords are the
    architecture's own (see each factory, e.g. ``latent_dim``, ``arch``, ``hidden``). Keywords
    set to ``None`` are ignored. Raises ``ValueError`` for an unknown name or keyword, or a data
    set the architecture cannot take.
    """
    factory = GENERATIVE.get(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if dataset is not None:
        dataset_info(dataset)  # unknown data set: ValueError listing the valid ones
    shape = _resolve_shape(dataset, kwargs.pop("in_shape", None))
    params = inspect.signature(factory).parameters
    arch_names = [p for p in params if p != "data_shape"]
    unknown = sorted(set(kwargs) - set(arch_names))
    if unknown:
        raise ValueError(f"unknown keyword(s) {', '.join(unknown)} for generative model "
                         f"{name!r}; valid: {', '.join(COMMON_KWARGS + tuple(arch_names))}")
    arch = {p: kwargs.get(p, params[p].default) for p in arch_names}
    arch_json = _to_json(arch)
    model = factory(shape, **{k: _to_tuples(v) for k, v in arch_json.items()})
    # Factories resolve "auto" choices (e.g. arch by data kind); record the resolved ones.
    resolved = getattr(model, "resolved_kwargs", {})
    arch_json.update(_to_json({k: v for k, v in resolved.items() if k in arch_json}))
    model.spec = {"name": name, "dataset": dataset,
                  "kwargs": {"in_shape": list(shape), **arch_json}}
    return model


def from_spec(spec: dict[str, Any]) -> GenerativeModel:
    """Rebuild the architecture described by ``model.spec`` (weights freshly initialized)."""
    if not isinstance(spec, dict) or not {"name", "dataset", "kwargs"} <= set(spec):
        raise ValueError(f"expected a dict with keys name, dataset, kwargs, got {spec!r}")
    return create(spec["name"], spec["dataset"], **spec["kwargs"])


def resolve_arch(arch: str | None, data_shape: tuple[int, ...], default_image: str,
                 what: str) -> str:
    """``arch`` checked against ``ARCHS``; None picks ``default_image`` for images, else mlp."""
    if arch is None:
        arch = default_image if len(data_shape) == 3 else "mlp"
    if arch not in ARCHS:
        raise ValueError(f"expected arch in {ARCHS}, got {arch!r}")
    if arch == "conv" and len(data_shape) != 3:
        raise ValueError(f"{what}: arch='conv' needs images (C, H, W), got data shape "
                         f"{tuple(data_shape)}; use arch='mlp' for points")
    return arch


def check_positive_int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"expected {what} as a positive int, got {value!r}")
    return value


def check_widths(widths: Any, what: str) -> tuple[int, ...]:
    if isinstance(widths, int) and not isinstance(widths, bool):
        widths = (widths,)
    widths = tuple(widths)
    if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise ValueError(f"expected {what} as positive ints, got {widths}")
    return widths
