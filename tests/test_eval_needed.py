"""advlab.eval.perturbation_needed: the report's robustness, with λ escalated to reach 95%."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advlab import attacks
from advlab.eval import perturbation_needed


def _linear(scale: float) -> nn.Module:
    """Logits scale·(x·w_k): input gradients proportional to ``scale``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    with torch.no_grad():
        model[1].weight.mul_(scale)
    return model.eval()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(12, 1, 4, 4, generator=g) * 0.8 + 0.1
    y = torch.randint(0, 4, (12,), generator=g)
    return x, y, (y + 1) % 4


def test_first_lambda_alone_is_the_optim_attack(batch):
    x, y, target = batch
    model = _linear(8.0)
    res = perturbation_needed(model, x, y, target, lams=(0.1,))
    ref = attacks.create("optim", lam=0.1)(model, x, y, target)
    assert torch.equal(res.reached, ref.info["reached"].cpu())
    want = (ref.adv - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    assert torch.allclose(res.ratio, want)
    ok = res.reached
    assert ok.any()
    assert res.mean_first == pytest.approx(want[ok].mean().item())
    assert res.mean_all == pytest.approx(want.mean().item())


def test_escalation_reaches_points_a_large_penalty_leaves_short(batch):
    x, y, target = batch
    model = _linear(16.0)  # λ = 2 stalls the attack on some points
    stalled = perturbation_needed(model, x, y, target, lams=(2.0,), steps=300, lr=0.05)
    assert 0 < stalled.reached_fraction < 1
    res = perturbation_needed(model, x, y, target, lams=(2.0, 0.0), steps=300, lr=0.05)
    assert res.reached.all() and res.reached_fraction == 1.0
    assert res.mean_all == pytest.approx(res.mean_reached)
    # the points reached with λ = 2 keep that adversary; the others were redone with λ = 0
    first = res.lam == 2.0
    assert torch.equal(first, stalled.reached)
    assert torch.allclose(res.ratio[first], stalled.ratio[first])
    assert (res.lam[~first] == 0.0).all()
    probs = model(res.adv).softmax(1).gather(1, target[:, None]).squeeze(1)
    assert (probs >= 0.95).all()
    d = res.to_dict()
    assert d["reached"] == 1.0 and d["reached_first"] == pytest.approx(first.float().mean().item())


def test_points_already_confident_need_nothing(batch):
    x, y, _ = batch
    model = _linear(50.0)
    target = model(x).argmax(1)
    confident = model(x).softmax(1).max(1).values >= 0.95
    res = perturbation_needed(model, x, y, target)
    assert (res.ratio[confident] == 0).all() and confident.any()


def test_bad_arguments_are_named(batch):
    x, y, target = batch
    model = _linear(1.0)
    with pytest.raises(ValueError, match="lams"):
        perturbation_needed(model, x, y, target, lams=())
    with pytest.raises(ValueError, match="lams"):
        perturbation_needed(model, x, y, target, lams=(0.1, -1.0))
    with pytest.raises(ValueError, match="target of shape"):
        perturbation_needed(model, x, y, target[:3])
