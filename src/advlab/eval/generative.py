"""Scores of generative models: pure, batched functions.

- VAE likelihood bounds: test-set negative ELBO and the importance-weighted bound (k = 100),
  in nats per example (``negative_elbo``, ``iw_nll``).
- Sample quality without Inception weights: the Fréchet distance between Gaussians fitted to
  classifier features (``frechet_distance``; FID when the features are Inception's) and the
  Inception-style score ``exp(E_x KL(p(y|x) || p(y)))`` (``inception_score``), both from an
  advlab classifier trained on the same data set (``classifier_features``); compute them on
  held-out real images too (``sample_quality``) for the ceiling.
- 2-D mixtures: modes covered and the fraction of high-quality samples (``mode_coverage``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

# -- likelihood bounds of a VAE ----------------------------------------------------------------


@torch.no_grad()
def negative_elbo(model, x: torch.Tensor, batch_size: int = 1000,
                  generator: torch.Generator | None = None) -> float:
    """Mean negative ELBO of ``model`` (a ``VAE``) on ``x`` (N, *data_shape), nats per example.

    One reparameterized sample per example (the KL term is exact); eval mode.
    """
    return -_batched_mean(model, x, batch_size, lambda xb: model.elbo(xb, generator))


@torch.no_grad()
def iw_nll(model, x: torch.Tensor, k: int = 100, batch_size: int = 500,
           generator: torch.Generator | None = None) -> float:
    """Mean negative importance-weighted bound with ``k`` samples (Burda et al. 2016), nats per
    example: an upper bound on -log p(x), tighter than the negative ELBO as ``k`` grows."""
    return -_batched_mean(model, x, batch_size, lambda xb: model.iw_bound(xb, k, generator))


def _batched_mean(model, x, batch_size, fn) -> float:
    if not hasattr(model, "elbo"):
        raise ValueError(f"expected a VAE (a model with elbo/iw_bound), got "
                         f"{type(model).__name__}")
    model.check_data(x)
    if x.shape[0] == 0:
        raise ValueError("expected at least one example, got an empty x")
    was_training = model.training
    model.eval()
    device = model.device
    try:
        total = sum(fn(x[i:i + batch_size].to(device)).double().sum().item()
                    for i in range(0, x.shape[0], batch_size))
    finally:
        model.train(was_training)
    return total / x.shape[0]


# -- classifier-based sample quality ------------------------------------------------------------


def _last_linear(classifier: nn.Module) -> nn.Linear:
    last = None
    for m in classifier.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise ValueError("expected a classifier ending in an nn.Linear layer (its input is the "
                         "feature vector), found no nn.Linear")
    return last


@torch.no_grad()
def classifier_features(classifier: nn.Module, x: torch.Tensor, batch_size: int = 1000
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features and softmax probabilities of ``classifier`` on ``x``.

    The features are the input of the classifier's last ``nn.Linear`` layer (for ``lenet5``
    the 84 units before the logits). Eval mode, batched; returned on the CPU as float64:
    (N, F) features and (N, K) probabilities.
    """
    head = _last_linear(classifier)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda m, inp, out: captured.append(inp[0].flatten(1)))
    was_training = classifier.training
    classifier.eval()
    device = next(classifier.parameters()).device
    feats, probs = [], []
    try:
        for i in range(0, max(x.shape[0], 1), batch_size):  # no points: one empty batch
            captured.clear()
            logits = classifier(x[i:i + batch_size].to(device))
            feats.append(captured[-1].double().cpu())
            probs.append(logits.double().softmax(1).cpu())
    finally:
        hook.remove()
        classifier.train(was_training)
    return torch.cat(feats), torch.cat(probs)


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N_a, F) and (N_b, F):
    ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    tr((S_a S_b)^(1/2)) is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix S_a^(1/2) S_b S_a^(1/2) (float64), which has the same spectrum.
    """
    if feats_a.dim() != 2 or feats_b.dim() != 2 or feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"expected two (N, F) feature sets with the same F, got "
                         f"{tuple(feats_a.shape)} and {tuple(feats_b.shape)}")
    if min(feats_a.shape[0], feats_b.shape[0]) < 2:
        raise ValueError("expected at least 2 examples in each feature set")
    a, b = feats_a.double(), feats_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    cov_a = cov_a.reshape(a.shape[1], a.shape[1])
    cov_b = cov_b.reshape(b.shape[1], b.shape[1])
    sqrt_a = _psd_sqrt(cov_a)
    eig = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0)
    value = (mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * eig.sqrt().sum()
    return float(value.clamp(min=0))


def _psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def inception_score(probs: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) from class probabilities (N, K), as (mean, std) over
    ``splits`` equal parts (Salimans et al. 2016). It lies in [1, K]: K when every sample is
    classified with certainty and the classes are equally frequent."""
    if probs.dim() != 2:
        raise ValueError(f"expected probabilities of shape (N, K), got {tuple(probs.shape)}")
    n = probs.shape[0]
    if not isinstance(splits, int) or splits < 1 or splits > n:
        raise ValueError(f"expected splits in 1..{n} (the number of samples), got {splits!r}")
    p = probs.double().clamp(min=1e-12)
    scores = []
    for part in torch.tensor_split(p, splits):
        py = part.mean(0, keepdim=True)
        kl = (part * (part.log() - py.log())).sum(1).mean()
        scores.append(math.exp(kl.item()))
    t = torch.tensor(scores, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=False)) if splits > 1 else 0.0


@dataclass(frozen=True)
class SampleQuality:
    inception_score: float  # classifier-based, mean over splits
    inception_score_std: float
    frechet_distance: float  # against the reference set's features
    n: int  # number of samples scored


def sample_quality(classifier: nn.Module, samples: torch.Tensor, reference: torch.Tensor,
                   splits: int = 10, batch_size: int = 1000) -> SampleQuality:
    """Inception-style score of ``samples`` and their Fréchet distance to ``reference`` (real
    images, e.g. the test set), with ``classifier``'s features and softmax. Passing held-out
    real images as ``samples`` gives the ceiling."""
    feats, probs = classifier_features(classifier, samples, batch_size)
    ref_feats, _ = classifier_features(classifier, reference, batch_size)
    is_mean, is_std = inception_score(probs, splits)
    return SampleQuality(is_mean, is_std, frechet_distance(feats, ref_feats), samples.shape[0])


# -- 2-D mixtures --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModeCoverage:
    modes_covered: int  # modes with at least min_count high-quality samples
    num_modes: int
    high_quality_fraction: float  # samples within `threshold` sigmas of their nearest mode
    counts: list[int]  # high-quality samples per mode

    def to_dict(self) -> dict:
        return {"modes_covered": self.modes_covered, "num_modes": self.num_modes,
                "high_quality_fraction": self.high_quality_fraction, "counts": self.counts}


def mode_coverage(samples: torch.Tensor, centers: torch.Tensor, sigma: float,
                  threshold: float = 3.0, min_count: int = 1) -> ModeCoverage:
    """The mode-collapse measures of the Unrolled GAN / VEEGAN / PacGAN 2-D experiments.

    Each sample (N, 2) is assigned to its nearest mode centre (K, 2); it is *high quality*
    when that distance is below ``threshold * sigma`` (3 standard deviations). A mode is
    *covered* when at least ``min_count`` high-quality samples are assigned to it. The
    default ``min_count = 1`` is the rule of PacGAN's reference code for the VEEGAN protocol
    (2,500 samples per evaluation); pass a larger one for a stricter count.
    """
    if samples.dim() != 2 or centers.dim() != 2 or samples.shape[1] != centers.shape[1]:
        raise ValueError(f"expected samples (N, D) and centers (K, D) with the same D, got "
                         f"{tuple(samples.shape)} and {tuple(centers.shape)}")
    if not sigma > 0 or not threshold > 0:
        raise ValueError(f"expected sigma > 0 and threshold > 0, got {sigma}, {threshold}")
    if not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"expected min_count as an int >= 1, got {min_count!r}")
    s = samples.detach().double().cpu()
    c = centers.detach().double().cpu()
    dist, nearest = torch.cdist(s, c).min(1)  # (N,)
    good = dist < threshold * sigma
    counts = torch.bincount(nearest[good], minlength=c.shape[0])
    return ModeCoverage(modes_covered=int((counts >= min_count).sum()), num_modes=c.shape[0],
                        high_quality_fraction=float(good.double().mean()) if len(s) else 0.0,
                        counts=counts.tolist())
