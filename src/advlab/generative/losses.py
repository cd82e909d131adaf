"""Adversarial losses as pure functions of critic outputs, and the WGAN-GP gradient penalty.

Discriminator outputs are logits ``l``, D = sigmoid(l). With softplus(a) = log(1 + e^a):
log D = -softplus(-l) and log(1 - D) = -softplus(l), so every loss below is numerically stable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

GENERATOR_LOSSES = ("non-saturating", "minimax", "wasserstein")


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                       real_label: float = 1.0) -> torch.Tensor:
    """-[log D(x) + log(1 - D(G(z)))], averaged over each batch: the GAN discriminator's
    binary cross-entropy (real = 1, fake = 0). Inputs (B,) logits; returns a scalar.

    ``real_label`` < 1 is one-sided label smoothing (Salimans et al. 2016, 'Improved Techniques
    for Training GANs', §3.4): the real examples' target becomes ``real_label`` (e.g. 0.9),
    -[a·log D(x) + (1 − a)·log(1 − D(x))]; the fakes' target stays 0.
    """
    if not 0.5 < real_label <= 1.0:
        raise ValueError(f"expected real_label in (0.5, 1], got {real_label!r}")
    real = F.softplus(-real_logits).mean()
    if real_label < 1.0:
        real = real_label * real + (1.0 - real_label) * F.softplus(real_logits).mean()
    return real + F.softplus(fake_logits).mean()


def generator_loss(fake_scores: torch.Tensor, kind: str = "non-saturating") -> torch.Tensor:
    """The generator's loss on the critic's scores of its samples (B,), a scalar.

    - "minimax": log(1 - D(G(z))), the original objective (its gradient vanishes when D
      rejects the samples confidently);
    - "non-saturating": -log D(G(z)), same fixed point, strong gradients early on;
    - "wasserstein": -critic(G(z)) (WGAN / WGAN-GP).
    """
    if kind == "minimax":
        return -F.softplus(fake_scores).mean()
    if kind == "non-saturating":
        return F.softplus(-fake_scores).mean()
    if kind == "wasserstein":
        return -fake_scores.mean()
    raise ValueError(f"expected a generator loss in {GENERATOR_LOSSES}, got {kind!r}")


def critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """The Wasserstein critic's loss E[c(G(z))] - E[c(x)] (minimized), a scalar."""
    return fake_scores.mean() - real_scores.mean()


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                     fake: torch.Tensor, weight: float = 10.0, alpha: torch.Tensor | None = None,
                     generator: torch.Generator | None = None, reduction: str = "mean"
                     ) -> torch.Tensor:
    """WGAN-GP's penalty ``weight * (||grad_x critic(x_hat)||_2 - 1)^2`` (Gulrajani et al. 2017).

    ``x_hat = alpha * real + (1 - alpha) * fake`` with ``alpha`` (B,) ~ U[0, 1] per example
    (drawn with ``generator`` unless given). ``critic`` maps (B, ...) to (B,) or (B, 1) scores.
    The gradient is taken with ``create_graph=True``, so the penalty trains the critic.
    ``reduction``: "mean" (a scalar) or "none" (B,). ``fake`` is detached from its generator.
    """
    if real.shape != fake.shape:
        raise ValueError(f"expected real and fake of the same shape, got {tuple(real.shape)} "
                         f"and {tuple(fake.shape)}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"expected reduction 'mean' or 'none', got {reduction!r}")
    b = real.shape[0]
    if alpha is None:
        if generator is None:
            alpha = torch.rand(b, device=real.device, dtype=real.dtype)
        else:
            alpha = torch.rand(b, generator=generator, device=generator.device,
                               dtype=real.dtype).to(real.device)
    if alpha.shape != (b,):
        raise ValueError(f"expected alpha of shape ({b},), got {tuple(alpha.shape)}")
    a = alpha.reshape(b, *([1] * (real.dim() - 1)))
    x_hat = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    norms = grad.flatten(1).norm(dim=1)  # (B,)
    penalty = weight * (norms - 1.0) ** 2
    return penalty.mean() if reduction == "mean" else penalty
