"""Soundness checks: each one fires on a model built to fool it and passes an honest model."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from advlab.attacks import create
from advlab.attacks.threat import ThreatModel
from advlab.eval import reliable, soundness_checks
from advlab.eval.checks import (
    check_deterministic,
    check_fgsm_eps,
    check_gradients,
    check_logits,
    check_more_steps,
    check_transfer,
    check_unbounded,
    input_gradients,
)
from test_eval_robust import Landscape


@pytest.fixture(scope="module")
def digits_models():
    """Two honest MLPs on sklearn digits (different seeds) and 150 held-out test digits."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1200], perm[1200:1350]
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(seed)
        for _ in range(12):
            for idx in torch.randperm(len(tr), generator=g).split(100):
                opt.zero_grad()
                nn.functional.cross_entropy(m(x[tr[idx]]), y[tr[idx]]).backward()
                opt.step()
        models.append(m.eval())
    with torch.no_grad():
        assert (models[0](x[te]).argmax(1) == y[te]).float().mean() > 0.85
    return models[0], models[1], x[te], y[te]


class Quantized(nn.Module):
    """Rounds its input to 5 grey levels first: gradients are exactly zero (masked)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * 4) / 4)


class Scaled(nn.Module):
    """Multiplies the logits: x1000 saturates the softmax, so the CE gradient underflows."""

    def __init__(self, net: nn.Module, factor: float) -> None:
        super().__init__()
        self.net, self.factor = net, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * self.net(x)


class Softmaxed(Scaled):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).softmax(dim=1)


class Noisy(Scaled):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x + self.factor * torch.randn_like(x))


class SquareRoot(Scaled):
    """sqrt at the many zero pixels of digits: an infinite input gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.sqrt(x))


def test_honest_model_passes_every_check(digits_models):
    honest, other, x, y = digits_models
    checks = soundness_checks(honest, x, y, threat=ThreatModel("linf", 0.1), surrogate=other,
                              n=100, steps=10, more_steps=30, restarts=2)
    assert [c.name for c in checks] == ["logits", "deterministic", "gradients", "unbounded",
                                        "more-steps", "fgsm-eps", "transfer"]
    assert reliable(checks), [c.message for c in checks if not c.passed]
    assert all(c.to_dict()["passed"] for c in checks)


def test_quantized_model_fails_gradient_unbounded_and_transfer_checks(digits_models):
    honest, _, x, y = digits_models
    masked = Quantized(honest)
    g = check_gradients(masked, x, y)
    assert not g.passed and g.values["zero_fraction"] == 1.0 and "masked" in g.message
    u = check_unbounded(masked, x, y)
    assert not u.passed and u.values["accuracy"] > 0.5
    t = check_transfer(masked, x, y, surrogate=honest,
                       attack=create("pgd", eps=0.2, steps=20, random_start=False))
    assert not t.passed
    assert t.values["white_box_accuracy"] > t.values["transfer_accuracy"] + 0.2
    checks = soundness_checks(masked, x, y, threat=ThreatModel("linf", 0.2), n=60,
                              more_steps=20, restarts=1)
    assert not reliable(checks)
    assert {"gradients", "unbounded"} <= {c.name for c in checks if not c.passed}


def test_saturated_softmax_fails_gradient_and_unbounded_checks(digits_models):
    honest, _, x, y = digits_models
    assert check_gradients(Scaled(honest, 1.0), x, y).passed
    saturated = Scaled(honest, 1000.0)
    g = check_gradients(saturated, x, y)
    assert not g.passed and g.values["zero_fraction"] > 0.5
    assert not check_unbounded(saturated, x, y).passed


def test_probability_outputs_fail_the_logits_check(digits_models):
    honest, _, x, _ = digits_models
    assert check_logits(honest, x).passed
    c = check_logits(Softmaxed(honest, 1.0), x)
    assert not c.passed and "probabilities" in c.message


def test_randomized_model_fails_the_determinism_check(digits_models):
    honest, _, x, _ = digits_models
    torch.manual_seed(0)
    c = check_deterministic(Noisy(honest, 0.1), x)
    assert not c.passed and c.values["max_logit_difference"] > 0
    assert check_deterministic(honest, x).passed


def test_infinite_gradients_fail_the_gradient_check(digits_models):
    honest, _, x, y = digits_models
    c = check_gradients(SquareRoot(honest, 1.0), x, y)
    assert not c.passed and c.values["nonfinite_fraction"] > 0.5 and "NaN or inf" in c.message


def test_detached_model_fails_the_gradient_check(digits_models):
    honest, _, x, y = digits_models

    class Detached(Scaled):
        def forward(self, x):
            return self.net(x).detach()

    c = check_gradients(Detached(honest, 1.0), x, y)
    assert not c.passed and "BPDA" in c.message
    with pytest.raises(ValueError, match="differentiably"):
        input_gradients(Detached(honest, 1.0), x, y)


def test_more_steps_check_fires_when_small_steps_get_stuck():
    # From 0.2, small steps stop in the shallow valley at 0.3 (still correct); one long step
    # lands in the deep valley at 0.5 (fooled): the stronger attack does worse.
    model = Landscape([(0.3, 0.05, 0.5), (0.5, 0.05, 2.0)])
    x, y = torch.full((4, 1), 0.2), torch.zeros(4, dtype=torch.int64)
    c = check_more_steps(model, x, y, eps=0.3, steps=1, more_steps=50)
    assert not c.passed
    assert c.values["accuracy_base"] == 0.0 and c.values["accuracy_strong"] == 1.0


def test_fgsm_eps_check_fires_when_a_large_step_overshoots():
    model = Landscape([(0.3, 0.05, 2.0)])  # fooled only for eps in (0.058, 0.142)
    x, y = torch.full((4, 1), 0.2), torch.zeros(4, dtype=torch.int64)
    c = check_fgsm_eps(model, x, y, eps_small=0.1, eps_large=0.3)
    assert not c.passed and c.values["accuracy_small"] == 0.0
    assert c.values["accuracy_large"] == 1.0
    with pytest.raises(ValueError, match="eps_small < eps_large"):
        check_fgsm_eps(model, x, y, eps_small=0.3, eps_large=0.1)


def test_gradients_match_autograd_on_a_linear_model():
    lin = nn.Linear(3, 2)
    x = torch.rand(5, 3)
    y = torch.tensor([0, 1, 0, 1, 1])
    g = input_gradients(lin, x, y, batch_size=2)
    assert lin.weight.grad is None  # parameters untouched
    xr = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(lin(xr), y, reduction="sum").backward()
    assert torch.allclose(g, xr.grad, atol=1e-6)


@pytest.mark.parametrize("n", [0, -3, 1.5, True])
def test_n_checks_must_be_a_positive_integer(n):
    from advlab.eval.protocol import standard_evaluation

    model, x, y = nn.Linear(4, 3), torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1])
    with pytest.raises(ValueError, match="expected n_checks .* integer >= 1"):
        soundness_checks(model, x, y, n=n)
    with pytest.raises(ValueError, match="expected n_checks .* integer >= 1"):
        standard_evaluation(model, x, y, threat=ThreatModel("linf", 0.1), n_checks=n)


class _PartlyMasked(nn.Module):
    """Two classes read off pixel 0 (any point flips within linf 1), except points whose pixel
    1 is 1: those get a constant class 0 with no gradient (masked)."""

    def forward(self, x):
        honest = torch.stack([5 * (0.5 - x[:, 0]), 5 * (x[:, 0] - 0.5)], 1)
        masked = torch.tensor([10.0, 0.0]).expand_as(honest)
        return torch.where(x[:, 1:2] > 0.99, masked, honest)


@pytest.mark.parametrize("n_masked, passed", [(1, True), (2, False)])
def test_unbounded_check_allows_exactly_its_threshold(n_masked, passed):
    """1 robust point in 20 is accuracy 5%: at the threshold (float32 0.05 > 0.05 must not fail
    it); 2 in 20 is 10%: unreliable."""
    x = torch.rand(20, 2, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    x[:, 1] = 0.2
    x[:n_masked, 1] = 1.0
    y = (x[:, 0] > 0.5).long()
    y[:n_masked] = 0
    result = check_unbounded(_PartlyMasked(), x, y)
    assert result.values["accuracy"] == pytest.approx(n_masked / 20)
    assert result.passed is passed
