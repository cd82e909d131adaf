"""Adversarial generators: ``gan``, ``dcgan`` and ``wgan-gp``.

Each model holds a ``generator`` (codes -> data) and a ``critic`` (data -> one score per
example: the discriminator's logit for ``gan``/``dcgan``, the Wasserstein critic's value for
``wgan-gp``). The losses live in ``losses``; the training recipe (k discriminator steps per
generator step, learning rates) in ``advlab.generative.train``.

- ``gan``: Goodfellow et al. 2014 (arXiv:1406.2661), fully connected (``arch="mlp"``) or
  DCGAN-style conv (``arch="conv"``).
- ``dcgan``: Radford et al. 2016 (arXiv:1511.06434): transposed-conv generator with batch
  norm, strided-conv discriminator with batch norm and LeakyReLU; images whose side is divisible
  by 4 (28x28 grey, 32x32 colour, 8x8 digits).
- ``wgan-gp``: Gulrajani et al. 2017 (arXiv:1704.00028): the critic has no batch norm (the
  gradient penalty is per example); MLP for points, conv for images by default.

Generator outputs are in [0, 1] for images (sigmoid) and unbounded for points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from advlab.generative.base import (
    GENERATIVE,
    GenerativeModel,
    check_positive_int,
    check_widths,
    resolve_arch,
)
from advlab.generative.nets import conv_decoder, conv_encoder, mlp

OBJECTIVES = ("gan", "wgan-gp")


class AdversarialModel(GenerativeModel):
    """A generator (B, latent_dim) -> (B, *data_shape) and a critic (B, *data_shape) -> (B,).

    ``objective`` is "gan" (the critic outputs discriminator logits) or "wgan-gp".
    """

    family = "adversarial"

    def __init__(self, data_shape: tuple[int, ...], latent_dim: int, generator: nn.Module,
                 critic: nn.Module, objective: str) -> None:
        super().__init__(data_shape, latent_dim)
        if objective not in OBJECTIVES:
            raise ValueError(f"expected objective in {OBJECTIVES}, got {objective!r}")
        self.objective = objective
        self.generator = generator
        self.critic = critic

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The generator G(z): (B, latent_dim) -> (B, *data_shape), in [0, 1] for images."""
        self.check_latent(z)
        out = self.generator(z).reshape(z.shape[0], *self.data_shape)
        return torch.sigmoid(out) if self.kind == "image" else out

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The critic's score per example (a logit for "gan"). (B,)"""
        self.check_shape(x)  # training scores the generator's own output: a NaN is divergence
        return self.critic(x).reshape(x.shape[0])


def _mlp_critic(data_shape, hidden, activation):
    return nn.Sequential(nn.Flatten(1), mlp(math.prod(data_shape), hidden, 1, activation))


def _build(data_shape, latent_dim, arch, hidden, width, objective, name, g_norm, d_norm,
           default_arch, depth=1):
    check_positive_int(latent_dim, "latent_dim")
    check_positive_int(width, "width")
    arch = resolve_arch(arch, data_shape, default_arch, name)
    # LeakyReLU in discriminators of images (DCGAN); ReLU everywhere for points.
    d_act = "leaky" if len(data_shape) == 3 else "relu"
    if arch == "mlp":
        hidden = check_widths(hidden, "hidden")
        generator = mlp(latent_dim, hidden, math.prod(data_shape))
        critic = _mlp_critic(data_shape, hidden[::-1], d_act)
    else:
        generator = conv_decoder(latent_dim, data_shape, width, norm=g_norm, what=name,
                                 depth=depth)
        critic = conv_encoder(data_shape, width, 1, norm=d_norm, what=name, depth=depth)
    model = AdversarialModel(data_shape, latent_dim, generator, critic, objective)
    model.resolved_kwargs = {"arch": arch}
    _init_weights(model)
    return model


def _init_weights(model: nn.Module) -> None:
    """DCGAN initialization for conv layers: N(0, 0.02) weights, BN scale N(1, 0.02)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


@GENERATIVE.register("gan")
def gan(data_shape: tuple[int, ...], *, latent_dim: int | None = None, arch: str | None = None,
        hidden: Sequence[int] | None = None, width: int = 64) -> AdversarialModel:
    """Goodfellow et al.'s GAN. ``arch="mlp"`` (default): generator MLP through ``hidden``,
    discriminator MLP through ``hidden`` reversed (defaults: images latent 100, hidden
    (256, 512); points latent 2, hidden (128, 128, 128)); ``arch="conv"``: DCGAN-style."""
    if latent_dim is None:
        latent_dim = 100 if len(data_shape) == 3 else 2
    if hidden is None:
        hidden = (256, 512) if len(data_shape) == 3 else (128, 128, 128)
    model = _build(data_shape, latent_dim, arch, hidden, width, "gan", "gan", "batch", "batch",
                   "mlp")
    model.resolved_kwargs.update(latent_dim=latent_dim, hidden=list(check_widths(hidden, "")))
    return model


D_NORMS = ("batch", "spectral", "none")


@GENERATIVE.register("dcgan")
def dcgan(data_shape: tuple[int, ...], *, latent_dim: int = 100, width: int = 64,
          d_norm: str = "batch", depth: int = 1) -> AdversarialModel:
    """Radford et al.'s DCGAN for images: generator Linear -> (2 width, H/4, W/4) (or
    (4 width, H/8, W/8) for 32x32) -> transposed convs with batch norm and ReLU -> sigmoid;
    discriminator strided convs with LeakyReLU 0.2 -> Linear logit.

    ``d_norm`` normalizes the discriminator: "batch" (Radford et al.), "spectral" (Miyato et
    al. 2018, arXiv:1802.05957: every conv and linear weight divided by its largest singular
    value, estimated by one power iteration per training forward; no batch norm) or "none".
    ``depth`` > 1 adds ``depth - 1`` 3x3 stride-1 conv layers at each resolution of both
    networks (``advlab.generative.nets``): more capacity at the same image size.
    """
    if len(data_shape) != 3:
        raise ValueError(f"dcgan: needs images (C, H, W), got data shape {tuple(data_shape)}; "
                         f"use 'gan' or 'wgan-gp' (MLP) for points")
    if d_norm not in D_NORMS:
        raise ValueError(f"dcgan: expected d_norm in {D_NORMS}, got {d_norm!r}")
    model = _build(data_shape, latent_dim, "conv", (), width, "gan", "dcgan", "batch",
                   "batch" if d_norm == "batch" else "none", "conv", depth)
    if d_norm == "spectral":
        _spectral_normalize(model.critic)
    model.resolved_kwargs.update(d_norm=d_norm)
    return model


def _spectral_normalize(module: nn.Module) -> None:
    """Spectral normalization (a weight parametrization) of every conv and linear layer."""
    for m in list(module.modules()):
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.utils.parametrizations.spectral_norm(m)


@GENERATIVE.register("wgan-gp")
def wgan_gp(data_shape: tuple[int, ...], *, latent_dim: int | None = None,
            arch: str | None = None, hidden: Sequence[int] | None = None,
            width: int = 64) -> AdversarialModel:
    """Gulrajani et al.'s WGAN-GP. Default ``arch``: "conv" for images (generator with batch
    norm, critic without), "mlp" for points (hidden (128, 128, 128), latent 2); images have
    latent 128 by default."""
    if latent_dim is None:
        latent_dim = 128 if len(data_shape) == 3 else 2
    if hidden is None:
        hidden = (512, 512, 512) if len(data_shape) == 3 else (128, 128, 128)
    model = _build(data_shape, latent_dim, arch, hidden, width, "wgan-gp", "wgan-gp", "batch",
                   "none", "conv")
    model.resolved_kwargs.update(latent_dim=latent_dim, hidden=list(check_widths(hidden, "")))
    return model
