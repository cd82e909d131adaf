"""Per-point random draws: an attack's random parts do not depend on the batch a point is in."""

from __future__ import annotations

import math

import pytest
import torch

from advlab import attacks
from advlab.attacks.rng import SampleRNG
from advlab.eval import robust_accuracy
from attack_fixtures import single_thread, trained_digits  # noqa: F401  (autouse fixture)

# --- the generator itself -----------------------------------------------------------------


def test_uniform_and_normal_draws_have_the_right_moments_and_no_visible_correlation():
    rng = SampleRNG(0, torch.arange(500))
    u = rng.rand((500, 400))
    z = rng.randn((500, 400))
    assert u.dtype == torch.float32 and 0 < u.min() and u.max() < 1
    n = u.numel()
    assert abs(u.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / n)
    assert abs(u.var().item() - 1 / 12) < 1e-3
    hist = torch.histc(u, bins=20, min=0, max=1)
    chi2 = ((hist - n / 20) ** 2 / (n / 20)).sum().item()
    assert chi2 < 45  # 19 degrees of freedom: p < 1e-3 beyond ~43.8
    assert abs(z.mean().item()) < 4 / math.sqrt(n)
    assert abs(z.std().item() - 1) < 5e-3
    kurtosis = ((z - z.mean()) ** 4).mean() / z.var() ** 2
    assert abs(kurtosis.item() - 3) < 0.05
    # neighbouring points and neighbouring elements are uncorrelated (|r| ~ 1/sqrt(n) each)
    rows = torch.corrcoef(u[:100])
    assert (rows - torch.eye(100)).abs().max() < 6 / math.sqrt(400)
    lag = torch.corrcoef(torch.stack([u[:, :-1].flatten(), u[:, 1:].flatten()]))[0, 1]
    assert abs(lag.item()) < 5 / math.sqrt(n)


def test_a_points_numbers_depend_on_seed_index_and_key_only():
    rng = SampleRNG(7, torch.arange(10, 20))
    u = rng.rand((10, 3, 4), key=2)
    alone = SampleRNG(7, torch.tensor([15])).rand((1, 3, 4), key=2)
    assert torch.equal(alone, u[5:6])
    assert torch.equal(rng.take(torch.tensor([5, 0])).rand((2, 3, 4), key=2), u[[5, 0]])
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[1, 8]] = True
    assert torch.equal(rng.take(mask).randn((2, 12), key=1), rng.randn((10, 12), key=1)[mask])
    assert torch.equal(rng.rand((10, 3, 4), key=2), u)  # the same key: the same numbers
    assert not torch.isin(rng.rand((10, 3, 4), key=3), u).any()
    assert not torch.isin(SampleRNG(8, torch.arange(10, 20)).rand((10, 3, 4), key=2), u).any()
    assert rng.rand((10, 2), dtype=torch.float64).dtype == torch.float64
    g = rng.generator
    assert isinstance(g, torch.Generator) and g.initial_seed() == 7


@pytest.mark.parametrize("index, match", [
    (torch.tensor([0.0, 1.0]), "integer tensor of shape"),
    (torch.tensor([[0, 1]]), "integer tensor of shape"),
    ([0, 1], "integer tensor of shape"),
    (torch.tensor([0, -1]), "index values >= 0"),
])
def test_bad_indices_are_refused(index, match):
    with pytest.raises(ValueError, match=match):
        SampleRNG(0, index)


def test_bad_shapes_keys_and_seeds_are_refused():
    rng = SampleRNG(0, torch.arange(3))
    with pytest.raises(ValueError, match=r"B = 3 \(the points"):
        rng.rand((4, 2))
    with pytest.raises(ValueError, match="draw key"):
        rng.rand((3, 2), key=-1)
    with pytest.raises(ValueError, match="integer seed"):
        SampleRNG(0.5, torch.arange(3))
    with pytest.raises(ValueError, match="integer seed >= 0"):
        SampleRNG(-1, torch.arange(3))
    # every word of a large seed counts
    assert not torch.equal(SampleRNG(2 ** 32, torch.arange(3)).rand((3, 4)),
                           SampleRNG(0, torch.arange(3)).rand((3, 4)))


# --- attacks: the same draws for a point in any batch ---------------------------------------


@pytest.mark.parametrize("name, params", [
    ("noise", {"eps": 0.2}),
    # one step of 1e-6: the adversary is the random start up to 1e-6
    ("pgd", {"eps": 0.1, "norm": "linf", "steps": 1, "alpha": 1e-6}),
    ("pgd", {"eps": 1.0, "norm": "l2", "steps": 1, "alpha": 1e-6}),
    ("spatial", {"random_samples": 5, "max_angle": 20, "max_shift": 2}),
    ("transfer", {"attack": "noise", "attack_params": {"eps": 0.2}}),  # index passed inside
])
def test_random_parts_of_a_point_are_the_same_alone_and_in_a_batch(name, params):
    model, x, y = trained_digits()
    x, y = x[:12], y[:12]
    attack = attacks.create(name, **params)
    whole = attack(model, x, y, index=torch.arange(12))
    for i in (0, 7, 11):
        alone = attack(model, x[i:i + 1], y[i:i + 1], index=torch.tensor([i]))
        assert torch.allclose(alone.adv[0], whole.adv[i], atol=2e-6, rtol=0), i
    # another position is another draw (the batch does not repeat one pattern)
    assert not torch.equal(whole.adv[0] - x[0], whole.adv[1] - x[1])
    shifted = attack(model, x[1:2], y[1:2], index=torch.tensor([0]))
    assert not torch.allclose(shifted.adv[0], whole.adv[1], atol=1e-3) or name == "spatial"


def test_robust_accuracy_of_random_start_attacks_does_not_depend_on_the_batch_size():
    model, x, y = trained_digits()
    x, y = x[:150], y[:150]
    for attack in (attacks.create("pgd", eps=0.1, steps=5, restarts=3),
                   attacks.create("noise", eps=0.5)):
        small = robust_accuracy(model, x, y, attack, batch_size=7)
        large = robust_accuracy(model, x, y, attack, batch_size=150)
        assert 0 < large.n_fooled < large.n_attacked  # the draws decide some points
        assert small.robust_accuracy == large.robust_accuracy
        assert small.n_fooled == large.n_fooled


def test_pgd_restarts_draw_a_new_start_per_restart_keyed_by_the_restart():
    model, x, y = trained_digits()
    x, y = x[:20], y[:20]
    threat = attacks.create("pgd", eps=0.1).threat
    rng = SampleRNG(0, torch.arange(20))
    first, second = threat.random_start(x, rng, key=0), threat.random_start(x, rng, key=1)
    assert not torch.equal(first, second)
    assert (first - x).abs().max() <= 0.1 + 1e-6 and (second - x).abs().max() <= 0.1 + 1e-6
    # restart 0 of a multi-restart PGD starts where the single-restart PGD starts
    one = attacks.create("pgd", eps=0.1, steps=1, alpha=1e-6)(model, x, y, index=torch.arange(20))
    assert torch.allclose(one.adv, first, atol=2e-6, rtol=0)


def test_a_direct_call_keys_draws_by_content_not_by_position_in_the_batch():
    """A user's training loop calls the attack on batch after batch without ``index``: two
    different batches must not get the same random starts (they did when the default key was
    the position in the batch), and a point keeps its draws in any batch."""
    model, x, y = trained_digits()
    pgd = attacks.create("pgd", eps=0.1, steps=1, alpha=1e-6)  # the adversary is the start
    a, b = pgd(model, x[:16], y[:16]), pgd(model, x[16:32], y[16:32])
    assert not torch.allclose(a.adv - x[:16], b.adv - x[16:32], atol=1e-3)
    alone = pgd(model, x[5:6], y[5:6])
    assert torch.allclose(alone.adv[0], a.adv[5], atol=2e-6, rtol=0)
    again = pgd(model, x[:16].flip(0), y[:16].flip(0))  # another order, the same draws
    assert torch.allclose(again.adv.flip(0), a.adv, atol=2e-6, rtol=0)


@pytest.mark.parametrize("index, match", [
    (torch.arange(3), r"index of shape \(4,\)"),
    (torch.tensor([0.0, 1, 2, 3]), "integer tensor"),
    (torch.tensor([0, 1, 2, -3]), "index >= 0"),
    ([0, 1, 2, 3], "torch.Tensor of positions"),
])
def test_attacks_refuse_a_bad_index(index, match):
    model, x, y = trained_digits()
    with pytest.raises(ValueError, match=match):
        attacks.create("noise", eps=0.1)(model, x[:4], y[:4], index=index)


def test_l2_random_start_is_uniform_in_the_ball():
    """Radius eps·U^(1/D): the fraction inside radius r·eps is r^D."""
    d = 4
    x0 = torch.full((20000, d), 0.5)
    start = attacks.create("pgd", eps=0.2, norm="l2").threat.random_start(
        x0, SampleRNG(0, torch.arange(20000)))
    radius = (start - x0).norm(dim=1) / 0.2
    assert radius.max() <= 1 + 1e-5
    for r in (0.5, 0.8, 0.95):
        assert abs((radius <= r).float().mean().item() - r ** d) < 0.015
    direction = (start - x0) / (start - x0).norm(dim=1, keepdim=True)
    assert direction.mean(0).abs().max() < 0.03  # no preferred direction


def test_content_keys_depend_on_each_inputs_pixels_only():
    from advlab.attacks.rng import content_keys

    x = torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    keys = content_keys(x)
    assert keys.shape == (50,) and keys.dtype == torch.int64
    assert int(keys.min()) >= 0 and int(keys.max()) < 2 ** 32
    assert len(set(keys.tolist())) == 50
    assert torch.equal(content_keys(x[[7, 3]]), keys[[7, 3]])
    swapped = x.clone()
    swapped[0, 0, 0, :2] = x[0, 0, 0, :2].flip(0)  # the same pixels in another order
    assert content_keys(swapped)[0] != keys[0]
    assert torch.equal(content_keys(x.double()), keys)  # keyed by the float32 value


def _lowbias32(x: int) -> int:
    """Wellons' lowbias32 in Python integers: the reference of the tensor hash."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_the_tensor_hash_is_lowbias32_exactly_over_the_whole_32_bit_range():
    from advlab.attacks.rng import _mix

    edges = [0, 1, 2, 0xFFFF, 0x10000, 2**31 - 1, 2**31, 2**31 + 1, 2**32 - 2, 2**32 - 1]
    rest = torch.randint(0, 2**32, (2000,), generator=torch.Generator().manual_seed(0),
                         dtype=torch.int64).tolist()
    values = edges + rest
    x = torch.tensor(values, dtype=torch.int64)
    out = _mix(x)
    assert out.tolist() == [_lowbias32(v) for v in values]
    assert x.tolist() == values  # the input is not modified
    assert int(out.min()) >= 0 and int(out.max()) < 2**32
