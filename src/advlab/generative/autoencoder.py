"""Autoencoders: ``ae`` (deterministic) and ``vae`` (Kingma & Welling 2014, arXiv:1312.6114).

Both have an encoder and a decoder, MLP (default; hidden 150, latent 32 as in the sources) or
convolutional (``arch="conv"``, images whose side is divisible by 4). The decoder's output
layer gives the parameters of p(x | z):

- ``likelihood="bernoulli"`` (default for images): logits; ``decode(z)`` is the Bernoulli
  mean sigmoid(logits) in [0, 1] and log p(x | z) = -BCE(logits, x), summed over pixels;
- ``likelihood="gaussian"`` (default for points): the mean (through a sigmoid for images) and
  a learned per-feature log-variance ``obs_logvar``.

The VAE's posterior q(z | x) = N(mu, diag(exp(logvar))), prior N(0, I);
ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z)), estimated with the reparameterization
z = mu + exp(logvar / 2) * eps, eps ~ N(0, I); the KL term is analytic.
The AE has no prior of its own: ``sample`` draws codes from a Gaussian fitted to the training
codes (``fit_prior``, called by the training loop after every epoch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from advlab.generative.base import (
    GENERATIVE,
    GenerativeModel,
    check_positive_int,
    check_widths,
    resolve_arch,
)
from advlab.generative.nets import conv_decoder, conv_encoder, mlp

LIKELIHOODS = ("bernoulli", "gaussian")
LOG_2PI = math.log(2 * math.pi)


class Autoencoder(GenerativeModel):
    """Encoder (B, *data_shape) -> (B, code_width); decoder (B, latent_dim) -> (B, *data_shape)
    output-layer parameters. Subclasses define how codes are read and how the loss is built."""

    family = "autoencoder"

    def __init__(self, data_shape: tuple[int, ...], latent_dim: int, encoder: nn.Module,
                 decoder: nn.Module, likelihood: str) -> None:
        super().__init__(data_shape, latent_dim)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"expected likelihood in {LIKELIHOODS}, got {likelihood!r}")
        self.likelihood = likelihood
        self.encoder = encoder
        self.decoder = decoder
        n_features = math.prod(self.data_shape)
        if likelihood == "gaussian":
            self.obs_logvar = nn.Parameter(torch.zeros(n_features))  # (D,) log sigma^2 of p(x|z)

    def decoder_output(self, z: torch.Tensor) -> torch.Tensor:
        """Pre-activation decoder output (logits or unsquashed means). (B, *data_shape)"""
        self.check_latent(z)
        return self.decoder(z).reshape(z.shape[0], *self.data_shape)

    def _mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out) if self.kind == "image" else out

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The mean of p(x | z): in [0, 1] for images. (B, *data_shape)"""
        return self._mean(self.decoder_output(z))

    def log_likelihood(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """log p(x | z) per example, summed over features, from the decoder output ``out``
        (..., B, *data_shape) for x (B, *data_shape). Returns (..., B)."""
        dims = tuple(range(-len(self.data_shape), 0))
        if self.likelihood == "bernoulli":
            x = x.expand_as(out)
            return -F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(dims)
        mean = self._mean(out).flatten(-len(self.data_shape))  # (..., B, D)
        logvar = self.obs_logvar
        sq = (x.flatten(1) - mean) ** 2
        return -0.5 * (sq / logvar.exp() + logvar + LOG_2PI).sum(-1)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """decode(encode(x)): the reconstruction (mean of p(x | z) at the code). (B, *shape)"""
        return self.decode(self.encode(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class AE(Autoencoder):
    """A deterministic autoencoder trained on -log p(x | encode(x)) (BCE or Gaussian NLL)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Gaussian fitted to the training codes: the distribution ``sample`` draws from.
        self.register_buffer("prior_loc", torch.zeros(self.latent_dim))  # (d,)
        self.register_buffer("prior_scale_tril", torch.eye(self.latent_dim))  # (d, d)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code of ``x``. (B, latent_dim)"""
        self.check_data(x)
        return self.encoder(x)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean reconstruction negative log-likelihood, and the terms to log."""
        nll = -self.log_likelihood(x, self.decoder_output(self.encode(x))).mean()
        return nll, {"recon_nll": nll.detach()}

    @torch.no_grad()
    def fit_prior(self, codes: torch.Tensor) -> None:
        """Set the sampling distribution to N(mean, cov) of ``codes`` (N, latent_dim)."""
        codes = codes.to(self.prior_loc).double()
        mean = codes.mean(0)
        cov = torch.cov(codes.T).reshape(self.latent_dim, self.latent_dim)
        cov = cov + 1e-6 * torch.eye(self.latent_dim, dtype=cov.dtype, device=cov.device)
        self.prior_loc.copy_(mean.float())
        self.prior_scale_tril.copy_(torch.linalg.cholesky(cov).float())

    def prior_from_normal(self, eps: torch.Tensor) -> torch.Tensor:
        # an elementwise product and a row sum, not a matrix product: a code's value then does
        # not depend on how many codes are mapped at once (matrix kernels round differently
        # for different batch sizes), so keyed starts are the same alone or in a batch
        return self.prior_loc + (eps.unsqueeze(1) * self.prior_scale_tril).sum(-1)


class VAE(Autoencoder):
    """Variational autoencoder; the encoder outputs (mu, logvar) of q(z | x)."""

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | x), each (B, latent_dim)."""
        self.check_data(x)
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean of ``x``'s code. (B, latent_dim)"""
        return self.posterior(x)[0]

    @staticmethod
    def kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(N(mu, exp(logvar)) || N(0, I)) per example, analytic. (B,)"""
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)

    def elbo_terms(self, x: torch.Tensor, generator: torch.Generator | None = None,
                   eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(x | z) with one reparameterized z ~ q(z | x), KL(q || p)), each (B,).

        eps is drawn as ``torch.randn(B, latent_dim, generator=generator)`` (on the
        generator's device when given), unless given (B, latent_dim): data-parallel training
        draws a global batch's noise on every process and passes each its rows.
        """
        mu, logvar = self.posterior(x)
        if eps is None:
            eps = _randn_like(mu, generator)
        elif eps.shape != mu.shape:
            raise ValueError(f"expected eps of shape {tuple(mu.shape)}, got {tuple(eps.shape)}")
        z = mu + (0.5 * logvar).exp() * eps
        return self.log_likelihood(x, self.decoder_output(z)), self.kl(mu, logvar)

    def elbo(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The evidence lower bound per example, one-sample estimate (nats). (B,)"""
        rec, kl = self.elbo_terms(x, generator)
        return rec - kl

    def loss(self, x: torch.Tensor, eps: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean negative ELBO, and its terms to log (reconstruction NLL, KL); ``eps``: the
        reparameterization noise (``elbo_terms``)."""
        rec, kl = self.elbo_terms(x, eps=eps)
        loss = (kl - rec).mean()
        return loss, {"recon_nll": -rec.mean().detach(), "kl": kl.mean().detach()}

    def iw_bound(self, x: torch.Tensor, k: int = 100, generator: torch.Generator | None = None,
                 chunk: int = 25) -> torch.Tensor:
        """Importance-weighted bound (Burda et al. 2016) with ``k`` samples, per example:
        log (1/k) sum_i p(x, z_i) / q(z_i | x), z_i ~ q(z | x). (B,) nats, <= log p(x).

        ``k = 1`` is the ELBO (with an MC estimate of the KL); samples are drawn ``chunk`` at a
        time to bound memory.
        """
        check_positive_int(k, "k")
        mu, logvar = self.posterior(x)
        std = (0.5 * logvar).exp()
        parts = []
        for start in range(0, k, chunk):
            m = min(chunk, k - start)
            eps = _randn_like(mu.expand(m, *mu.shape), generator)  # (m, B, d)
            z = mu + std * eps
            out = self.decoder(z.reshape(-1, self.latent_dim)).reshape(
                m, x.shape[0], *self.data_shape)
            log_px_z = self.log_likelihood(x, out)  # (m, B)
            log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
            log_qz = -0.5 * (eps.pow(2) + logvar + LOG_2PI).sum(-1)
            parts.append(log_px_z + log_pz - log_qz)
        log_w = torch.cat(parts)  # (k, B)
        return torch.logsumexp(log_w, 0) - math.log(k)


def _randn_like(t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return torch.randn_like(t)
    return torch.randn(t.shape, generator=generator, device=generator.device,
                       dtype=t.dtype).to(t.device)


def _build(cls, data_shape, latent_dim, arch, hidden, width, likelihood, code_factor, name):
    check_positive_int(latent_dim, "latent_dim")
    check_positive_int(width, "width")
    arch = resolve_arch(arch, data_shape, "mlp", name)
    if likelihood is None:
        likelihood = "bernoulli" if len(data_shape) == 3 else "gaussian"
    n = math.prod(data_shape)
    if arch == "mlp":
        hidden = check_widths(hidden, "hidden")
        encoder = nn.Sequential(nn.Flatten(1), mlp(n, hidden, code_factor * latent_dim))
        decoder = mlp(latent_dim, hidden[::-1], n)
    else:
        encoder = conv_encoder(data_shape, width, code_factor * latent_dim, norm="none",
                               what=name)
        decoder = conv_decoder(latent_dim, data_shape, width, norm="none", what=name)
    model = cls(data_shape, latent_dim, encoder, decoder, likelihood)
    model.resolved_kwargs = {"arch": arch, "likelihood": likelihood}
    return model


@GENERATIVE.register("ae")
def ae(data_shape: tuple[int, ...], *, latent_dim: int = 32, arch: str | None = None,
       hidden: Sequence[int] = (150,), width: int = 32, likelihood: str | None = None) -> AE:
    """Autoencoder. ``arch``: "mlp" (``hidden`` widths, mirrored in the decoder) or "conv"
    (``width`` channels in the first conv layer, images only); ``likelihood``: "bernoulli"
    (images) or "gaussian" (default for points)."""
    return _build(AE, data_shape, latent_dim, arch, hidden, width, likelihood, 1, "ae")


@GENERATIVE.register("vae")
def vae(data_shape: tuple[int, ...], *, latent_dim: int = 32, arch: str | None = None,
        hidden: Sequence[int] = (150,), width: int = 32, likelihood: str | None = None) -> VAE:
    """Variational autoencoder (keywords as for ``ae``); MLP 150 hidden units, 32 latents."""
    return _build(VAE, data_shape, latent_dim, arch, hidden, width, likelihood, 2, "vae")
