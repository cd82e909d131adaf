"""The threat model as a value: a norm, a budget ε and the pixel box [0, 1].

All per-norm maths of the attacks lives here, in one place: per-sample norms, gradient
normalization (sign for ℓ∞, unit ℓ2 for ℓ2), random start inside the ball and projection onto
the ball intersected with the box. Attacks never branch on the norm themselves.

Shapes: ``x`` and ``delta`` are batches ``(B, ...)``; per-sample quantities are ``(B,)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from advlab.attacks.rng import SampleRNG

NORMS = ("linf", "l2")
BOX = (0.0, 1.0)  # the pixel box every attack stays inside
_TINY = 1e-12  # floor for norms we divide by (a zero gradient stays zero)


def check_norm(norm: object, valid: tuple[str, ...] = NORMS) -> str:
    """Return ``norm`` if valid, else raise ``ValueError`` listing the valid norms."""
    if norm not in valid:
        raise ValueError(f"expected norm in {', '.join(map(repr, valid))}, got {norm!r}")
    return norm  # type: ignore[return-value]


def _per_sample(t: Tensor) -> Tensor:
    return t.flatten(1)  # (B, D)


def _expand(v: Tensor, like: Tensor) -> Tensor:
    """A per-sample ``(B,)`` tensor viewed as ``(B, 1, ..., 1)`` to broadcast against ``like``."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def lp_norm(delta: Tensor, norm: str) -> Tensor:
    """Per-sample norm of ``delta`` ``(B, ...)`` -> ``(B,)``, for ``norm`` in 'linf', 'l2', 'l1'."""
    flat = _per_sample(delta)
    if norm == "linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    if norm == "l1":
        return flat.abs().sum(dim=1)
    raise ValueError(f"expected norm in 'linf', 'l2', 'l1', got {norm!r}")


def normalize_grad(grad: Tensor, norm: str) -> Tensor:
    """The steepest-ascent direction of unit ``norm``: sign(g) for ℓ∞, g / ‖g‖₂ for ℓ2."""
    if norm == "linf":
        return grad.sign()
    if norm == "l2":
        return grad / _expand(lp_norm(grad, "l2").clamp_min(_TINY), grad)
    raise ValueError(f"expected norm in {', '.join(map(repr, NORMS))}, got {norm!r}")


def project_ball(delta: Tensor, eps: float, norm: str) -> Tensor:
    """Project ``delta`` onto the ``norm`` ball of radius ``eps`` (per sample)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    if norm == "l2":
        scale = (eps / lp_norm(delta, "l2").clamp_min(_TINY)).clamp(max=1.0)
        return delta * _expand(scale, delta)
    raise ValueError(f"expected norm in {', '.join(map(repr, NORMS))}, got {norm!r}")


def clip_box(x: Tensor) -> Tensor:
    return x.clamp(*BOX)


@dataclass(frozen=True)
class ThreatModel:
    """Perturbations ``delta`` with ``‖delta‖_norm <= eps`` and ``x + delta`` inside [0, 1]."""

    norm: str = "linf"  # 'linf' or 'l2'
    eps: float = 8 / 255  # radius of the ball

    def __post_init__(self) -> None:
        check_norm(self.norm)
        if not isinstance(self.eps, (int, float)) or not math.isfinite(self.eps) or self.eps < 0:
            raise ValueError(f"expected eps to be a finite number >= 0, got {self.eps!r}")

    def project(self, x0: Tensor, x: Tensor) -> Tensor:
        """The point of the threat set around ``x0`` reached from ``x``: ball, then box.

        Clipping to the box after the ball projection only shrinks each coordinate of the
        perturbation, so the result stays inside the ball.
        """
        return clip_box(x0 + project_ball(x - x0, self.eps, self.norm))

    def step(self, x0: Tensor, x: Tensor, grad: Tensor, alpha: float) -> Tensor:
        """One projected steepest-ascent step of size ``alpha`` from ``x`` along ``grad``."""
        return self.project(x0, x + alpha * normalize_grad(grad, self.norm))

    def random_start(self, x0: Tensor, rng: SampleRNG | torch.Generator, key: int = 0) -> Tensor:
        """A point drawn uniformly from the ball around ``x0``, then clipped to the box.

        With a ``SampleRNG`` each point's draw depends on (seed, its index, ``key``) only; a
        ``torch.Generator`` draws the batch from its stream (``key`` unused).
        """
        def draw(fn: str, shape: tuple[int, ...], k: int) -> Tensor:  # fn: "rand" | "randn"
            if isinstance(rng, SampleRNG):
                return getattr(rng, fn)(shape, 2 * key + k, dtype=x0.dtype)
            return getattr(torch, fn)(shape, generator=rng, device=x0.device, dtype=x0.dtype)

        if self.norm == "linf":
            u = draw("rand", tuple(x0.shape), 0)
            delta = (2 * u - 1) * self.eps
        else:  # uniform in the l2 ball: uniform direction, radius eps * U^(1/D)
            g = draw("randn", tuple(x0.shape), 0)
            d = g[0].numel()
            r = draw("rand", (x0.shape[0],), 1)
            radius = self.eps * r.pow(1.0 / max(d, 1))
            delta = normalize_grad(g, "l2") * _expand(radius, g)
        return clip_box(x0 + delta)

    def norms(self, delta: Tensor) -> Tensor:
        """Per-sample size of ``delta`` in this threat model's norm, ``(B,)``."""
        return lp_norm(delta, self.norm)
