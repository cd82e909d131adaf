"""Scores of generative models: mode coverage on hand-built samples, the Fréchet distance against
a reference computation, the Inception-style score on known cases, classifier features and the
VAE bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from advlab import data, generative, models
from advlab.eval.generative import (
    classifier_features,
    frechet_distance,
    inception_score,
    iw_nll,
    mode_coverage,
    negative_elbo,
    sample_quality,
)


def test_mode_coverage_on_hand_built_samples():
    centers = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    sigma = 0.01
    samples = torch.tensor([
        [0.0, 0.0],  # mode 0, at the centre
        [0.029, 0.0],  # mode 0, just inside 3 sigma
        [1.0, 0.0299],  # mode 1, inside
        [0.031, 0.0],  # nearest mode 0 but outside 3 sigma: not high quality
        [0.5, 0.5],  # between modes
    ])
    cov = mode_coverage(samples, centers, sigma)
    assert cov.counts == [2, 1, 0]
    assert cov.modes_covered == 2 and cov.num_modes == 3
    assert cov.high_quality_fraction == pytest.approx(3 / 5)
    strict = mode_coverage(samples, centers, sigma, min_count=2)
    assert strict.modes_covered == 1
    wide = mode_coverage(samples, centers, sigma, threshold=4.0)
    assert wide.counts == [3, 1, 0]
    assert cov.to_dict()["counts"] == [2, 1, 0]


def test_mode_coverage_of_real_toy_data():
    """Real samples of the mixtures: every mode covered and 1 - exp(-4.5) = 98.9% of the points
    within 3 sigma (the mass of a 2-D isotropic Gaussian within 3 sigma of its mean)."""
    for name in ("ring8", "grid25"):
        centers, sigma = data.toy_modes(name)
        x = data.load(name, "test").x[:2500]
        cov = mode_coverage(x, centers, sigma)
        assert cov.modes_covered == len(centers)
        assert cov.high_quality_fraction == pytest.approx(1 - math.exp(-4.5), abs=0.006)


def test_mode_coverage_rejects_bad_input():
    with pytest.raises(ValueError, match="same D"):
        mode_coverage(torch.zeros(3, 2), torch.zeros(4, 3), 0.1)
    with pytest.raises(ValueError, match="sigma"):
        mode_coverage(torch.zeros(3, 2), torch.zeros(4, 2), 0.0)
    with pytest.raises(ValueError, match="min_count"):
        mode_coverage(torch.zeros(3, 2), torch.zeros(4, 2), 0.1, min_count=0)


def _reference_frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(ca @ cb).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * covmean))


def test_frechet_distance_matches_a_reference_computation():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 6, generator=g, dtype=torch.float64)
    b = torch.randn(300, 6, generator=g, dtype=torch.float64) @ torch.randn(
        6, 6, generator=g, dtype=torch.float64) + 0.5
    assert frechet_distance(a, b) == pytest.approx(_reference_frechet(a.numpy(), b.numpy()),
                                                   rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # a shift by d adds ||d||^2 exactly
    d = torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0, 0.0], dtype=torch.float64)
    assert frechet_distance(a, a + d) == pytest.approx(d.pow(2).sum().item(), rel=1e-9)
    with pytest.raises(ValueError, match="same F"):
        frechet_distance(a, b[:, :3])


def test_inception_score_known_cases():
    k = 10
    onehot = torch.eye(k).repeat(20, 1)  # confident and balanced: the maximum K
    assert inception_score(onehot, splits=1)[0] == pytest.approx(k, rel=1e-6)
    mean, std = inception_score(onehot, splits=10)
    assert mean == pytest.approx(k, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)
    same = torch.full((50, k), 1.0 / k)  # uninformative: the minimum 1
    assert inception_score(same, splits=5)[0] == pytest.approx(1.0)
    collapsed = torch.eye(k)[torch.zeros(100, dtype=torch.long)]  # one class only
    assert inception_score(collapsed, splits=1)[0] == pytest.approx(1.0)
    two = torch.eye(k)[torch.arange(100) % 2]  # two classes, confident
    assert inception_score(two, splits=1)[0] == pytest.approx(2.0, rel=1e-6)
    with pytest.raises(ValueError, match="splits"):
        inception_score(onehot, splits=0)


def test_classifier_features_are_the_input_of_the_last_linear_layer():
    torch.manual_seed(0)
    clf = models.create("mlp", dataset="digits", widths=(12, 7)).train()
    x = torch.rand(9, 1, 8, 8)
    feats, probs = classifier_features(clf, x, batch_size=4)
    assert clf.training  # mode restored
    body = clf.net
    with torch.no_grad():
        expected = body[:-1](x)  # everything but the last Linear
        logits = clf(x)
    assert feats.shape == (9, 7)
    assert torch.allclose(feats, expected.double(), atol=1e-6)
    assert torch.allclose(probs, logits.double().softmax(1), atol=1e-6)
    q = sample_quality(clf, x, torch.rand(9, 1, 8, 8), splits=3)
    assert 1.0 <= q.inception_score <= 10.0 and q.frechet_distance >= 0 and q.n == 9


def test_vae_bounds_agree_with_the_model():
    torch.manual_seed(0)
    vae = generative.create("vae", dataset="digits", latent_dim=4, hidden=(16,))
    x = data.load("digits", "test").x[:50]
    g = torch.Generator().manual_seed(1)
    nelbo = negative_elbo(vae, x, batch_size=16, generator=g)
    expected = -vae.elbo(x, generator=torch.Generator().manual_seed(1)).mean().item()
    # batches draw eps in another order, so compare with a tolerance of the noise
    assert nelbo == pytest.approx(expected, rel=0.05)
    nll = iw_nll(vae, x, k=50, generator=g)
    assert nll < nelbo
    with pytest.raises(ValueError, match="expected a VAE"):
        negative_elbo(generative.create("gan", dataset="digits"), x)
