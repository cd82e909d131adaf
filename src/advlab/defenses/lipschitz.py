r"""Lipschitz-constrained classifiers: spectral bounds per layer, the network's bound, certificates.

``make_lipschitz(model, bound)`` reparametrizes the weight of every ``nn.Linear`` and
``nn.Conv2d`` as ``W · min(1, bound / σ(W))``, σ the operator norm (largest singular value) of
the layer *as a linear map*: for a convolution that is the map on its actual input (channels,
height, width, stride, padding, dilation, groups), iterated with ``conv2d`` and its adjoint
``conv_transpose2d`` — not the norm of the reshaped kernel, which is neither an upper nor a
lower bound. As in Miyato et al. 2018 (spectral normalization,
[https://arxiv.org/abs/1802.05957]) the singular vectors persist in buffers and take
``power_iterations`` power steps per training forward. Power iteration estimates σ from below,
and bounded training flattens the top of the spectrum (many singular values pile up at the
bound), which slows its convergence: with one step per forward (Miyato's setting) the true
norms of a digits MLP ended 5–10% above the bound, with 10 steps (the default here) about 2%.
So in eval mode the vectors are first converged by Lanczos (``top_singular``), once per version
of the weights (an optimizer step or a load bumps it): the deployed model is deterministic and
its layers' true norms are within float error of the bound. The transformed model trains in
the ordinary loop and is saved and loaded with the ordinary weights: ``model.spec["transforms"]``
records the transform, which ``advlab.models.from_spec`` replays.

``lipschitz_bound(model)`` is an upper bound on the ℓ2 Lipschitz constant of the logits, the
product of per-layer bounds of a sequential network (``Classifier`` = normalize then net; nested
``nn.Sequential``): linear layers by their exact spectral norm (SVD), convolutions by Lanczos
on the operator in float64 (the Ritz value converges to σ from below; converged to 1e-12
relative, it matches the dense operator's SVD in the tests), ReLU / LeakyReLU(|slope| <= 1) /
Tanh / Flatten / Identity / Dropout (eval) 1, Sigmoid 1/4, ``Normalize`` 1/min(std), eval-mode
batch norm max |γ|/√(var + ε), max pooling √m and average pooling √(m / window) where m is the
largest number of windows one input lies in (1 and 1/k for non-overlapping k×k windows).
Residual blocks and other modules raise ``ValueError``: their bound is not a product.

``certified_accuracy(model, x, y, eps)``: the logit margin z_y − max_{j≠y} z_j is a √2·L-
Lipschitz function of the input (each difference z_y − z_j is, with L the bound above), so a
margin larger than √2·L·ε proves that no ℓ2 perturbation of norm ≤ ε changes the prediction
(Tsuzuku, Sato and Sugiyama 2018, [https://arxiv.org/abs/1802.04034]).

The ``lipschitz`` defense (objective) wraps the model with ``make_lipschitz`` before training
(``prepare_model``) and minimizes the cross-entropy of ``scale · (z + √2·L·margin_eps·(1 − e_y))``
(Tsuzuku et al.'s Lipschitz-margin training; margin_eps = 0 gives plain cross-entropy).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from advlab.defenses.common import check_dataset, check_int, check_number, mode
from advlab.defenses.registry import build, register
from advlab.models import TRANSFORMS, Normalize
from advlab.train.objective import StepOutput

LANCZOS_MAX_STEPS = 300  # Lanczos steps of ``top_singular`` (it stops earlier once converged)
LANCZOS_RTOL = 1e-12


def _normalize(t: Tensor) -> Tensor:
    return t / t.norm().clamp_min(1e-30)


@dataclass(frozen=True)
class ConvGeometry:
    """What makes a ``Conv2d`` a linear map: its input shape and sliding-window settings."""

    in_shape: tuple[int, int, int]  # (C, H, W) of one input
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    @staticmethod
    def of(conv: nn.Conv2d, in_shape: tuple[int, ...]) -> ConvGeometry:
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise ValueError(f"expected a Conv2d with integer zero padding, got padding="
                             f"{conv.padding!r}, padding_mode={conv.padding_mode!r}")
        return ConvGeometry(tuple(in_shape[-3:]), tuple(conv.stride), tuple(conv.padding),
                            tuple(conv.dilation), conv.groups)

    def conv(self, w: Tensor, v: Tensor) -> Tensor:
        """The operator: (N, C, H, W) -> (N, C', H', W')."""
        return F.conv2d(v, w, None, self.stride, self.padding, self.dilation, self.groups)

    def adjoint(self, w: Tensor, u: Tensor) -> Tensor:
        """The adjoint (transpose) of ``conv``, landing exactly on the input shape."""
        h, wd = self.in_shape[1:]
        k = w.shape[2:]
        out_pad = []
        for size, o, s, p, d, kk in zip((h, wd), u.shape[2:], self.stride, self.padding,
                                        self.dilation, k, strict=True):
            out_pad.append(size - ((o - 1) * s - 2 * p + d * (kk - 1) + 1))
        return F.conv_transpose2d(u, w, None, self.stride, self.padding, tuple(out_pad),
                                  self.groups, self.dilation)


def top_singular(op: Callable[[Tensor], Tensor], adjoint: Callable[[Tensor], Tensor],
                 v0: Tensor, *, max_steps: int = LANCZOS_MAX_STEPS,
                 rtol: float = LANCZOS_RTOL) -> tuple[float, Tensor]:
    """Largest singular value σ of a linear map and its right singular vector, by Lanczos on
    the Gram operator ``adjoint(op(v))`` with full reorthogonalization, from ``v0`` (any shape
    ``op`` accepts). The Ritz value never exceeds σ² and converges much faster than power
    iteration when the top of the spectrum is flat (as in spectrally bounded layers)."""
    shape = v0.shape
    q = v0.flatten() / v0.norm().clamp_min(1e-300)
    basis: list[Tensor] = [q]
    alphas: list[Tensor] = []
    betas: list[Tensor] = []
    lam, vec = 0.0, torch.ones(1, dtype=q.dtype, device=q.device)
    for j in range(min(max_steps, q.numel())):
        w = adjoint(op(q.view(shape))).flatten()
        alphas.append(q @ w)
        mat = torch.stack(basis)  # (j + 1, D)
        for _ in range(2):  # classical Gram-Schmidt twice: stable enough
            w = w - mat.T @ (mat @ w)
        t = torch.diag(torch.stack(alphas))
        if betas:
            off = torch.stack(betas)
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        evals, evecs = torch.linalg.eigh(t)
        new, vec = evals[-1].item(), evecs[:, -1]
        beta = w.norm()
        converged = j >= 2 and abs(new - lam) <= rtol * abs(new)
        lam = new
        if converged or beta <= 1e-13 * max(abs(new), 1e-300):
            break
        betas.append(beta)
        q = w / beta
        basis.append(q)
    v = (torch.stack(basis[:vec.numel()]).T @ vec).view(shape)
    return math.sqrt(max(lam, 0.0)), v / v.norm().clamp_min(1e-300)


def conv_operator_norm(weight: Tensor, geometry: ConvGeometry, *,
                       max_steps: int = LANCZOS_MAX_STEPS, rtol: float = LANCZOS_RTOL,
                       v0: Tensor | None = None) -> float:
    """The largest singular value of the convolution as a linear map (Lanczos in float64 on
    the operator ``conv`` / ``conv_transpose``, see ``top_singular``). Seeded, deterministic."""
    w = weight.detach().double()
    if v0 is None:
        g = torch.Generator(device=w.device).manual_seed(0)
        v0 = torch.randn((1, *geometry.in_shape), generator=g, device=w.device,
                         dtype=torch.float64)
    sigma, _ = top_singular(lambda v: geometry.conv(w, v), lambda u: geometry.adjoint(w, u),
                            v0.detach().double().reshape(1, *geometry.in_shape),
                            max_steps=max_steps, rtol=rtol)
    return sigma


def conv_operator_matrix(weight: Tensor, geometry: ConvGeometry) -> Tensor:
    """The dense (D_out, D_in) matrix of the convolution (for tests on tiny layers)."""
    d_in = math.prod(geometry.in_shape)
    basis = torch.eye(d_in, dtype=weight.dtype, device=weight.device)
    out = geometry.conv(weight, basis.reshape(d_in, *geometry.in_shape))  # (D_in, C', H', W')
    return out.reshape(d_in, -1).T


class SpectralBound(nn.Module):
    """Parametrization ``W -> W · min(1, bound / σ)``, σ the layer's operator norm estimated by
    persistent power iteration (``power_iterations`` steps per forward in train mode)."""

    def __init__(self, weight: Tensor, bound: float, power_iterations: int = 10,
                 geometry: ConvGeometry | None = None) -> None:
        super().__init__()
        check_number("bound", bound, positive=True)
        check_int("power_iterations", power_iterations)  # >= 1: 0 would never update u, v
        self.bound = float(bound)
        self.power_iterations = int(power_iterations)
        self.geometry = geometry  # None for a linear layer
        g = torch.Generator(device=weight.device).manual_seed(0)
        in_shape = (1, *geometry.in_shape) if geometry else (weight.shape[1],)
        v = _normalize(torch.randn(in_shape, generator=g, device=weight.device))
        self.register_buffer("v", v.to(weight.dtype))  # input-side singular vector
        self.register_buffer("u", _normalize(self._op(weight.detach(), self.v)))  # output side
        self._converged_for: tuple[int, int] | None = None  # weights the vectors converged for
        self.converge(weight.detach())

    def _op(self, w: Tensor, v: Tensor) -> Tensor:
        return self.geometry.conv(w, v) if self.geometry else w @ v

    def _adjoint(self, w: Tensor, u: Tensor) -> Tensor:
        return self.geometry.adjoint(w, u) if self.geometry else w.T @ u

    @torch.no_grad()
    def _iterate(self, w: Tensor, n: int) -> None:
        u, v = self.u, self.v
        for _ in range(n):
            v = _normalize(self._adjoint(w, u))
            u = _normalize(self._op(w, v))
        self.u.copy_(u)
        self.v.copy_(v)

    def sigma(self, w: Tensor) -> Tensor:
        """uᵀ W v with the stored vectors: a differentiable estimate of σ (scalar)."""
        return (self.u.clone() * self._op(w, self.v.clone())).sum()

    @torch.no_grad()
    def converge(self, w: Tensor) -> None:
        """Replace the stored singular vectors by converged ones for ``w`` (Lanczos)."""
        _, v = top_singular(lambda t: self._op(w.double(), t),
                            lambda t: self._adjoint(w.double(), t), self.v.double())
        self.v.copy_(v.to(self.v.dtype))
        self.u.copy_(_normalize(self._op(w, self.v)))

    def forward(self, w: Tensor) -> Tensor:
        if self.training:
            self._converged_for = None
            self._iterate(w.detach(), self.power_iterations)
        else:
            # Eval mode: converge once per version of the weights (each optimizer step or
            # load bumps the version), so a deployed model is bounded by its true norms.
            key = (w.data_ptr(), w._version)
            if self._converged_for != key:
                self.converge(w.detach())
                self._converged_for = key
        return w * (self.bound / self.sigma(w).clamp_min(self.bound))

    def extra_repr(self) -> str:
        kind = "conv" if self.geometry else "linear"
        return f"{kind}, bound={self.bound}, power_iterations={self.power_iterations}"


def _input_shapes(model: nn.Module, input_shape: tuple[int, ...],
                  kinds: tuple[type, ...]) -> dict[nn.Module, tuple[int, ...]]:
    """One example's input shape at every submodule of type ``kinds`` (one dummy forward)."""
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def record(mod: nn.Module, args: tuple[Tensor, ...]) -> None:
        shapes.setdefault(mod, tuple(args[0].shape[1:]))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules()
             if isinstance(m, kinds)]
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None else torch.float32
    try:
        with mode(model, False), torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device, dtype=dtype))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _model_input_shape(model: nn.Module, input_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    shape = input_shape or getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError("expected input_shape=(C, H, W) or (D,) for a model without "
                         ".input_shape, got None")
    return tuple(shape)


def is_lipschitz(model: nn.Module) -> bool:
    """True when some layer of ``model`` carries a ``SpectralBound`` parametrization."""
    return any(isinstance(m, SpectralBound) for m in model.modules())


def make_lipschitz(model: nn.Module, bound: float = 1.0, *, power_iterations: int = 10,
                   input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """Bound the operator norm of every ``Linear`` and ``Conv2d`` of ``model`` by ``bound``
    (in place; returns ``model``). The model's ``spec`` records the transform."""
    check_number("bound", bound, positive=True)
    check_int("power_iterations", power_iterations)
    if is_lipschitz(model):
        raise ValueError("expected a model without spectral bounds, got one already made "
                         "Lipschitz (make_lipschitz was applied twice)")
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    shapes = (_input_shapes(model, _model_input_shape(model, input_shape), (nn.Conv2d,))
              if convs else {})
    for m in layers:
        geometry = ConvGeometry.of(m, shapes[m]) if isinstance(m, nn.Conv2d) else None
        if isinstance(m, nn.Conv2d) and m not in shapes:
            raise ValueError(f"the layer {m} is not used by the model's forward pass")
        par = SpectralBound(m.weight, bound, power_iterations, geometry)
        parametrize.register_parametrization(m, "weight", par)
    spec = getattr(model, "spec", None)
    if isinstance(spec, dict) and spec:
        entry = {"name": "lipschitz",
                 "params": {"bound": float(bound), "power_iterations": int(power_iterations)}}
        model.spec = {**spec, "transforms": [*spec.get("transforms", []), entry]}
    return model


TRANSFORMS.add("lipschitz", make_lipschitz)


# --- the network's bound --------------------------------------------------------------------

_ONE = (nn.ReLU, nn.Tanh, nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
        nn.Unflatten)


def _windows_per_input(kernel: Any, stride: Any, dilation: Any = 1) -> int:
    """The largest number of pooling windows one input position lies in (2-D)."""
    k, s, d = (nn.modules.utils._pair(v) for v in (kernel, stride or kernel, dilation))
    return math.prod(math.ceil(((kk - 1) * dd + 1) / ss) for kk, ss, dd in zip(k, s, d))


def layer_bound(module: nn.Module, in_shape: Callable[[nn.Module], tuple[int, ...]],
                nominal: bool = False) -> float:
    """An upper bound on the ℓ2 Lipschitz constant of one layer (see the module docstring).

    ``nominal=True`` takes a spectrally bounded layer's declared ``bound`` instead of computing
    its norm (cheap; used by the training objective)."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        par = _spectral(module)
        if nominal and par is not None:
            return par.bound
        with torch.no_grad():
            w = module.weight.detach()  # the effective weight (parametrization applied)
            if isinstance(module, nn.Linear):
                return float(torch.linalg.matrix_norm(w.double(), ord=2))
            geometry = ConvGeometry.of(module, in_shape(module))
            return conv_operator_norm(w, geometry, v0=par.v if par is not None else None)
    if isinstance(module, _ONE):
        return 1.0
    if isinstance(module, nn.LeakyReLU):
        return max(1.0, abs(module.negative_slope))
    if isinstance(module, nn.Sigmoid):
        return 0.25
    if isinstance(module, Normalize):
        return float(1.0 / module.std.min())
    if isinstance(module, nn.MaxPool2d):
        return math.sqrt(_windows_per_input(module.kernel_size, module.stride, module.dilation))
    if isinstance(module, nn.AvgPool2d):
        pad = nn.modules.utils._pair(module.padding)
        if module.divisor_override or (not module.count_include_pad and any(pad)):
            raise ValueError(f"cannot bound {module}: only the plain k×k mean is supported")
        window = math.prod(nn.modules.utils._pair(module.kernel_size))
        return math.sqrt(_windows_per_input(module.kernel_size, module.stride) / window)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.training or module.running_var is None:
            raise ValueError(f"cannot bound {module} in train mode (its scale depends on the "
                             f"batch); call model.eval() first")
        scale = 1 / (module.running_var + module.eps).sqrt()
        if module.weight is not None:
            scale = scale * module.weight.detach().abs()
        return float(scale.max())
    if isinstance(module, nn.Sequential):
        return math.prod(layer_bound(m, in_shape, nominal) for m in module)
    if hasattr(module, "normalize") and hasattr(module, "net"):  # advlab Classifier
        return layer_bound(module.normalize, in_shape, nominal) * layer_bound(
            module.net, in_shape, nominal)
    raise ValueError(f"cannot bound the Lipschitz constant of {type(module).__name__}: "
                     f"supported are sequential networks of Linear, Conv2d, ReLU, LeakyReLU, "
                     f"Tanh, Sigmoid, pooling, Flatten, Dropout, batch norm (eval) and Normalize")


def _spectral(module: nn.Module) -> SpectralBound | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return next((p for p in module.parametrizations.weight if isinstance(p, SpectralBound)),
                None)


def lipschitz_bound(model: nn.Module, *, nominal: bool = False,
                    input_shape: tuple[int, ...] | None = None) -> float:
    """Upper bound on the ℓ2 Lipschitz constant of ``model``'s logits (product of layers).

    Evaluated on the effective weights in eval mode (batch norm uses running statistics).
    ``nominal=True`` uses each spectrally bounded layer's declared bound instead of its norm.
    """
    cache: dict[nn.Module, tuple[int, ...]] = {}

    def in_shape(module: nn.Module) -> tuple[int, ...]:
        if not cache:
            cache.update(_input_shapes(model, _model_input_shape(model, input_shape),
                                       (nn.Conv2d,)))
        return cache[module]

    with mode(model, False):
        return layer_bound(model, in_shape, nominal)


# --- certificates ---------------------------------------------------------------------------

def logit_margin(logits: Tensor, y: Tensor) -> Tensor:
    """z_y − max_{j≠y} z_j per example, (B,); negative when misclassified."""
    true = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    others = logits.scatter(1, y.unsqueeze(1), -torch.inf)
    return true - others.amax(dim=1)


@torch.no_grad()
def certified_radius(model: nn.Module, x: Tensor, y: Tensor, *, lipschitz: float | None = None,
                     batch_size: int = 1000) -> Tensor:
    """margin / (√2·L) per example (N,): no ℓ2 perturbation smaller than it changes the
    prediction; <= 0 for misclassified examples. ``lipschitz`` defaults to the model's bound."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"expected as many labels as inputs, got {y.shape[0]} and {x.shape[0]}")
    lip = lipschitz_bound(model) if lipschitz is None else float(lipschitz)
    p = next(model.parameters(), None)
    device = p.device if p is not None else x.device
    with mode(model, False):
        margins = torch.cat([logit_margin(model(xb.to(device)), yb.to(device)).cpu()
                             for xb, yb in zip(x.split(batch_size), y.split(batch_size),
                                               strict=True)])
    return margins / (math.sqrt(2) * lip)


def certified_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: float, *,
                       lipschitz: float | None = None, batch_size: int = 1000) -> float:
    """Fraction of ``x`` whose prediction is ``y`` and provably stays so within ℓ2 radius ε
    (margin > √2·L·ε)."""
    check_number("eps", eps)
    radius = certified_radius(model, x, y, lipschitz=lipschitz, batch_size=batch_size)
    return (radius > eps).float().mean().item() if radius.numel() else float("nan")


# --- the training objective -----------------------------------------------------------------

@dataclass(frozen=True)
class LipschitzMargin:
    """Cross-entropy of a spectrally bounded model with Tsuzuku et al.'s margin (see module)."""

    name: str = "lipschitz"
    bound: float = 1.0  # operator-norm bound of every linear and conv layer
    power_iterations: int = 10  # per training forward
    margin_eps: float = 0.0  # ℓ2 radius the training margin aims to certify
    scale: float = 1.0  # logits are multiplied by it inside the cross-entropy only

    def __post_init__(self) -> None:
        check_number("bound", self.bound, positive=True)
        check_int("power_iterations", self.power_iterations)
        check_number("margin_eps", self.margin_eps)
        check_number("scale", self.scale, positive=True)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Called by the training code on the fresh model before the optimizer is built."""
        return make_lipschitz(model, self.bound, power_iterations=self.power_iterations)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
        logits = model(x)  # (B, K)
        z = logits
        if self.margin_eps > 0:
            lip = lipschitz_bound(model, nominal=True)
            push = math.sqrt(2) * lip * self.margin_eps
            z = logits + push * (1 - F.one_hot(y, logits.shape[1]).to(logits.dtype))
        loss = F.cross_entropy(self.scale * z, y)
        margin = logit_margin(logits.detach(), y)
        return StepOutput(loss=loss, logits=logits.detach(),
                          metrics={"margin": margin.mean()})


@register("lipschitz")
def lipschitz(dataset: str | None = None, **params) -> LipschitzMargin:
    """Spectral bounds on every layer (``make_lipschitz``) and Lipschitz-margin cross-entropy."""
    check_dataset(dataset)  # no per-data-set defaults, but a misspelt name is still an error
    return build(LipschitzMargin, "lipschitz", params)
