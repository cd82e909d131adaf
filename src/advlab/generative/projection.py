"""Projection onto a generator's range: ``z* = argmin_z ||G(z) - x||`` by gradient descent.

This is the "projection" step of the latent-space defenses (Defense-GAN, Samangouei et al.
2018, arXiv:1805.06605; the invert-and-classify schemes of the sources): ``restarts`` random
starts z_0 ~ prior, each refined by ``steps`` Adam steps on the distance, keeping for every
example the code with the smallest distance seen (over steps and restarts).

Everything is batched: the B examples and R restarts form one (R * B, latent_dim) tensor of
codes. Adam updates each coordinate from its own gradient and the summed loss gives every code
its own gradient, so the examples do not interact. The model's parameters get no gradient and
the model runs in eval mode (batch norm uses its running statistics).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

NORMS = ("l2", "l1", "linf")


class Projection(NamedTuple):
    z: torch.Tensor  # (B, latent_dim) the best code found for each example
    x_hat: torch.Tensor  # (B, *data_shape) decode(z), detached


def distance(x: torch.Tensor, x_hat: torch.Tensor, norm: str = "l2") -> torch.Tensor:
    """Per-example distance ||x_hat - x|| in the ``norm`` ("l2", "l1", "linf"). (B,)"""
    if norm not in NORMS:
        raise ValueError(f"expected norm in {NORMS}, got {norm!r}")
    diff = (x_hat - x).flatten(1)
    if norm == "l2":
        return diff.norm(dim=1)
    if norm == "l1":
        return diff.abs().sum(1)
    return diff.abs().amax(1)


def _objective(x: torch.Tensor, x_hat: torch.Tensor, norm: str) -> torch.Tensor:
    """The per-example quantity minimized: squared L2 (same argmin, smooth), L1, or Linf."""
    if norm == "l2":
        return (x_hat - x).flatten(1).pow(2).sum(1)
    return distance(x, x_hat, norm)


def project(model, x: torch.Tensor, steps: int = 200, lr: float = 0.05, restarts: int = 4,
            norm: str = "l2", generator: torch.Generator | None = None,
            z_init: torch.Tensor | None = None) -> Projection:
    """Project ``x`` (B, *data_shape) onto the range of ``model.decode``.

    ``steps``: Adam steps per restart (0 keeps the best random start); ``lr``: Adam's step
    size in latent units; ``restarts``: random starts per example drawn from the model's prior
    with ``generator`` (or ``z_init`` (restarts, B, latent_dim) given explicitly); ``norm``:
    "l2" (minimizes the squared distance), "l1" or "linf". Returns ``Projection(z, x_hat)``.
    """
    model.check_data(x)
    if norm not in NORMS:
        raise ValueError(f"expected norm in {NORMS}, got {norm!r}")
    for name, value, low in (("steps", steps, 0), ("restarts", restarts, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"expected {name} as an int >= {low}, got {value!r}")
    if not lr > 0:
        raise ValueError(f"expected a positive lr, got {lr!r}")
    b, d = x.shape[0], model.latent_dim
    if b == 0:  # an empty batch (e.g. no point left to attack) projects to nothing
        with torch.no_grad():
            z = torch.zeros(0, d, device=x.device)
            return Projection(z, model.decode(z))
    if z_init is None:
        z0 = model.prior_sample(restarts * b, generator).reshape(restarts, b, d)
    else:
        if tuple(z_init.shape) != (restarts, b, d):
            raise ValueError(f"expected z_init of shape ({restarts}, {b}, {d}), got "
                             f"{tuple(z_init.shape)}")
        z0 = z_init.to(x.device)
    x_rep = x.detach().unsqueeze(0).expand(restarts, *x.shape).reshape(restarts * b,
                                                                          *x.shape[1:])
    z = z0.reshape(restarts * b, d).clone().requires_grad_(True)
    best_z = z.detach().clone()
    best = torch.full((restarts * b,), float("inf"), device=x.device)
    opt = torch.optim.Adam([z], lr=lr)
    was_training = model.training
    model.eval()
    try:
        for step in range(steps + 1):
            with torch.enable_grad():  # also when the caller runs under torch.no_grad()
                per_example = _objective(x_rep, model.decode(z), norm)  # (R * B,)
                total = per_example.sum()
            with torch.no_grad():
                better = per_example < best
                best = torch.where(better, per_example.detach(), best)
                best_z = torch.where(better.unsqueeze(1), z.detach(), best_z)
            if step == steps:
                break
            (grad,) = torch.autograd.grad(total, z)
            z.grad = grad
            opt.step()
        with torch.no_grad():
            pick = best.reshape(restarts, b).argmin(0)  # (B,) best restart per example
            z_best = best_z.reshape(restarts, b, d)[pick, torch.arange(b, device=x.device)]
            x_hat = model.decode(z_best)
    finally:
        model.train(was_training)
    return Projection(z_best, x_hat)
