"""Attack engine: the contract over every registered attack, analytic cases, properties, traps."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advlab import attacks
from advlab.attacks import CW, FGSM, PGD, DeepFool, Noise, ThreatModel
from attack_fixtures import (
    Linear,
    SmallCNN,
    correct_subset,
    digits,
    single_thread,  # noqa: F401 (autouse)
    trained_digits,
)
from strategies import classifiers, epsilons, image_batches

# Small budgets so the whole matrix runs in seconds; attacks not listed use their defaults.
FAST = {"pgd": {"steps": 5}, "cw": {"steps": 10}, "deepfool": {"steps": 10},
        "apgd": {"steps": 10}, "apgd-t": {"steps": 10, "n_target_classes": 2},
        "fab": {"steps": 10}, "fab-t": {"steps": 10, "n_target_classes": 2},
        "square": {"queries": 100}, "hopskipjump": {"max_queries": 300}}


def make(name: str, **kw) -> attacks.Attack:
    params = attacks.params(name)
    settings_ = {k: v for k, v in {**FAST.get(name, {}), **kw}.items() if k in params}
    return attacks.create(name, **settings_)


def eval_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's logits in eval mode, every module's own flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    with torch.no_grad():
        out = model(x)
    for m, flag in flags:
        m.training = flag
    return out


def check_result(attack: attacks.Attack, model, x, y, target=None) -> attacks.AttackResult:
    """Run ``attack`` and assert every invariant of the AttackResult contract."""
    result = attack(model, x, y, target)
    b = x.shape[0]
    assert result.adv.shape == x.shape and result.adv.dtype == x.dtype
    assert result.adv.device == x.device
    assert torch.isfinite(result.adv).all()
    assert result.adv.min() >= 0 and result.adv.max() <= 1
    for name in ("success", "l2", "linf", "pred", "iterations"):
        assert getattr(result, name).shape == (b,), name
    assert result.success.dtype == torch.bool and result.pred.dtype == torch.int64
    assert result.iterations.dtype == torch.int64 and (result.iterations >= 0).all()
    delta = (result.adv.double() - x.double()).flatten(1)
    torch.testing.assert_close(result.l2.double(), delta.norm(dim=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.linf.double(), delta.abs().amax(dim=1), atol=1e-6, rtol=0)
    assert torch.equal(result.pred, result.logits.argmax(dim=1))
    torch.testing.assert_close(result.logits, eval_logits(model, result.adv.float()),
                               atol=1e-5, rtol=1e-5)
    expected = result.pred == target if attack.targeted else result.pred != y
    assert torch.equal(result.success, expected)
    threat = attack.threat
    if threat is not None:
        tol = 1e-6 if threat.norm == "linf" else 1e-5
        size = result.linf if threat.norm == "linf" else result.l2
        assert (size <= threat.eps + tol).all(), (size.max().item(), threat.eps)
    return result


def digits_batch(n: int = 8):
    x, y = digits()
    return x[:n], y[:n]


# --- the registry is the test matrix -------------------------------------------------------


def test_registry_lists_every_core_attack():
    assert {"fgsm", "pgd", "cw", "deepfool", "noise"} <= set(attacks.available())
    assert isinstance(attacks.create("pgd", eps=0.1, alpha=None), PGD)  # None is dropped
    assert attacks.create("pgd", eps=0.1).alpha == pytest.approx(2.5 * 0.1 / 40)
    assert attacks.create("fgsm").config() == {"attack": "fgsm", "seed": 0, "eps": 8 / 255,
                                               "targeted": False}


@pytest.mark.parametrize("name", attacks.available())
@pytest.mark.parametrize("targeted", [False, True])
def test_contract(name, targeted):
    if targeted and "targeted" not in attacks.params(name):
        pytest.skip(f"{name} has no targeted switch")
    torch.manual_seed(0)
    model = SmallCNN()
    model.train()
    model.head[1].eval()  # mixed flags must come back exactly
    model.head[2].bias.requires_grad_(False)
    model.features[0].weight.grad = torch.full_like(model.features[0].weight, 0.5)
    flags = {n: m.training for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = digits_batch()
    attack = make(name, eps=0.1, targeted=targeted, random_start=True)
    target = (y + 1) % 10 if attack.targeted else None  # some attacks are always targeted

    result = check_result(attack, model, x, y, target)

    assert {n: m.training for n, m in model.named_modules()} == flags
    for k, v in model.state_dict().items():  # BatchNorm statistics untouched
        assert torch.equal(v, state[k]), k
    assert torch.equal(model.features[0].weight.grad, torch.full_like(state["features.0.weight"],
                                                                       0.5))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "features.0.weight")
    assert not model.head[2].bias.requires_grad and model.head[2].weight.requires_grad
    again = attack(model, x, y, target)  # seeded: the same call gives the same answer
    assert torch.equal(again.adv, result.adv) and torch.equal(again.success, result.success)


@pytest.mark.parametrize("name", attacks.available())
def test_dtype_kept_and_empty_batch(name):
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x, y = digits_batch(4)
    attack = make(name, eps=0.1)
    result = check_result(attack, model, x.double(), y, y.flip(0) if attack.targeted else None)
    assert result.adv.dtype == torch.float64 and result.l2.dtype == torch.float32
    empty = attack(model, x[:0], y[:0], y[:0] if attack.targeted else None)
    assert empty.adv.shape == (0, 1, 8, 8) and empty.success.shape == (0,)


@pytest.mark.parametrize("name", attacks.available())
@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_works_inside_no_grad_and_inference_mode(name, context):
    torch.manual_seed(0)
    model = SmallCNN().eval()
    attack = make(name, eps=0.1)
    x, y = digits_batch(4)
    target = (y + 1) % 10 if attack.targeted else None
    expected = attack(model, x, y, target)
    with context():
        x_, y_ = x.clone(), y.clone()  # tensors made in the context, as a caller's would be
        t_ = None if target is None else target.clone()
        result = attack(model, x_, y_, t_)
    assert torch.equal(result.adv, expected.adv)


def test_seed_changes_random_attacks_only_through_the_seed():
    model = SmallCNN().eval()
    x, y = digits_batch(4)
    a = Noise(eps=0.2, seed=1)(model, x, y).adv
    b = Noise(eps=0.2, seed=2)(model, x, y).adv
    assert not torch.equal(a, b)
    assert torch.equal(a, Noise(eps=0.2, seed=1)(model, x, y).adv)
    state = torch.get_rng_state()
    PGD(eps=0.1, steps=2)(model, x, y)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is not consumed


def test_attack_is_frozen_and_calls_are_final():
    attack = PGD(eps=0.1)
    with pytest.raises(AttributeError):
        attack.eps = 0.2  # type: ignore[misc]
    with pytest.raises(TypeError, match="must not override"):
        class Bad(attacks.Attack):  # noqa: F841
            def __call__(self, model, x, y, target=None):
                return None


# --- properties on random models ------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_property_invariants_on_random_models(data):
    x = data.draw(image_batches())
    model = data.draw(classifiers(x[0].numel()))
    k = model[3].out_features
    name = data.draw(st.sampled_from(attacks.available()))
    y = torch.tensor(data.draw(st.lists(st.integers(0, k - 1), min_size=len(x),
                                        max_size=len(x))))
    targeted = "targeted" in attacks.params(name) and data.draw(st.booleans())
    norm = data.draw(st.sampled_from(["linf", "l2"]))
    attack = make(name, eps=data.draw(epsilons), targeted=targeted, norm=norm,
                  seed=data.draw(st.integers(0, 2**16)))
    target = (y + data.draw(st.integers(1, k - 1))) % k if attack.targeted else None
    result = check_result(attack, model, x, y, target)
    if attack.threat is not None and attack.threat.eps == 0:
        assert torch.equal(result.adv, x)


# --- analytic answers on linear models ------------------------------------------------------


def binary_linear(d: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(2, d, generator=gen)
    x = 0.3 + 0.4 * torch.rand(6, d, generator=gen)  # interior points
    b = torch.zeros(2)
    return Linear(w, b), x


def test_fgsm_on_a_binary_linear_model_is_eps_sign_of_w_difference():
    model, x = binary_linear()
    y = model(x).argmax(1).detach()
    w_diff = model.weight[1 - y] - model.weight[y]  # (B, D) toward the other class
    for eps in (0.05, 0.5):
        result = FGSM(eps=eps)(model, x, y)
        torch.testing.assert_close(result.adv, (x + eps * w_diff.sign()).clamp(0, 1),
                                   atol=1e-6, rtol=0)
        toward = FGSM(eps=eps, targeted=True)(model, x, y, target=1 - y)
        torch.testing.assert_close(toward.adv, result.adv, atol=1e-6, rtol=0)
    # PGD saturates at the same corner of the box-clipped ball
    pgd = PGD(eps=0.1, alpha=0.04, steps=5, random_start=False)(model, x, y)
    torch.testing.assert_close(pgd.adv, (x + 0.1 * w_diff.sign()).clamp(0, 1), atol=1e-6, rtol=0)
    pgd2 = PGD(eps=0.1, alpha=0.03, steps=2, norm="l2", random_start=False)(model, x, y)
    unit = w_diff / w_diff.norm(dim=1, keepdim=True)
    torch.testing.assert_close(pgd2.adv, x + 0.06 * unit, atol=1e-6, rtol=0)


@pytest.mark.parametrize("classes", [2, 4])
def test_deepfool_reaches_the_nearest_linear_boundary_in_one_step(classes):
    gen = torch.Generator().manual_seed(classes)
    d = 20
    w = torch.randn(classes, d, generator=gen)
    x = 0.4 + 0.2 * torch.rand(8, d, generator=gen)
    z = x @ w.T
    # biases that put each point's boundaries close: logit gaps of at most ~0.3
    b = -z.mean(0) + torch.linspace(0, 0.3, classes)
    model = Linear(w, b)
    y = model(x).argmax(1).detach()
    f = (model(x) - model(x).gather(1, y[:, None])).detach()  # (B, K) f_k - f_y <= 0
    w_rel = w[None] - w[y][:, None]  # (B, K, D)
    dist = f.abs() / w_rel.norm(dim=2)
    dist[torch.arange(8), y] = torch.inf
    nearest = dist.min(dim=1).values  # |w·x+b| / ‖w‖ of the closest boundary
    result = DeepFool(overshoot=0.02)(model, x, y)
    assert result.success.all() and (result.iterations == 1).all()
    torch.testing.assert_close(result.l2, 1.02 * (nearest + 1e-4), atol=1e-5, rtol=1e-4)
    exact = DeepFool(overshoot=0.0)(model, x, y)  # lands 1e-4 past the nearest boundary
    nearest_class = dist.argmin(dim=1)
    gap = (model(exact.adv).gather(1, nearest_class[:, None])
           - model(exact.adv).gather(1, y[:, None])).squeeze(1).detach()
    w_norm = (w[nearest_class] - w[y]).norm(dim=1)
    torch.testing.assert_close(gap / w_norm, torch.full_like(gap, 1e-4), atol=2e-5, rtol=0)


def test_linf_deepfool_on_a_binary_linear_model():
    model, x = binary_linear(seed=1)
    with torch.no_grad():
        model.bias.copy_(-(x @ model.weight.T).mean(0))  # boundary through the points' middle
    y = model(x).argmax(1).detach()
    w_diff = (model.weight[1 - y] - model.weight[y]).detach()  # (B, D)
    f = (model(x).gather(1, (1 - y)[:, None]) - model(x).gather(1, y[:, None])).squeeze(1)
    step = f.detach().abs() / w_diff.abs().sum(dim=1) + 1e-4  # |f| / ‖w‖₁ (+ 1e-4)
    result = DeepFool(norm="linf", overshoot=0.02)(model, x, y)
    expected = (x + 1.02 * step[:, None] * w_diff.sign()).clamp(0, 1)
    torch.testing.assert_close(result.adv, expected, atol=1e-6, rtol=0)
    assert result.success.all() and (result.iterations == 1).all()


# --- traps the peers fall into --------------------------------------------------------------


def test_cw_moves_pixels_at_exactly_0_and_1():
    model, x_test, y_test = trained_digits(binarize=True)
    x, y = correct_subset(model, x_test, y_test, 100)
    boundary = (x == 0) | (x == 1)
    assert boundary.float().mean() > 0.75  # like MNIST
    result = CW(c=1.0)(model, x, y)
    moved = (result.adv != x) & boundary
    assert moved.any(dim=(1, 2, 3))[result.success].float().mean() > 0.9
    assert result.success.float().mean() >= 0.9  # torchattacks: ~0.3 here (oracle test)


def test_cw_failure_returns_x_and_is_not_a_success():
    class Stubborn(nn.Module):  # always class 0, zero gradient: nothing to find
        def forward(self, x):
            return torch.tensor([5.0, 0.0]) + 0 * x.flatten(1).sum(1, keepdim=True)

    x, _ = digits_batch(4)
    result = CW(steps=20, binary_search_steps=3)(Stubborn(), x, torch.zeros(4, dtype=torch.long))
    assert torch.equal(result.adv, x) and not result.success.any()
    assert (result.l2 == 0).all()
    model, x_test, y_test = trained_digits()
    x, y = correct_subset(model, x_test, y_test, 20)
    weak = CW(c=1e-3, steps=5)(model, x, y)  # too weak to succeed: x comes back unchanged
    assert torch.equal(weak.adv[~weak.success], x[~weak.success]) and (~weak.success).any()


def test_deepfool_fools_an_undefended_model_almost_always():
    for binarize in (False, True):
        model, x_test, y_test = trained_digits(binarize=binarize)
        x, y = correct_subset(model, x_test, y_test, 200)
        result = DeepFool()(model, x, y)
        assert result.success.float().mean() >= 0.99
        assert result.iterations.float().mean() < 10


@pytest.mark.parametrize("name", ["cw", "deepfool"])
def test_minimal_attacks_are_not_twice_too_large(name):
    """Along the returned direction r, the first adversarial point t·r has t >= 1/2."""
    model, x_test, y_test = trained_digits()
    x, y = correct_subset(model, x_test, y_test, 200)
    result = attacks.create(name)(model, x, y)
    ok = result.success
    assert ok.float().mean() > 0.9
    r = (result.adv - x)[ok]  # (S, 1, 8, 8)
    ts = torch.linspace(0, 1, 201)[1:]  # (T,)
    with torch.no_grad():
        points = x[ok][None] + ts.view(-1, 1, 1, 1, 1) * r[None]  # (T, S, 1, 8, 8)
        pred = model(points.flatten(0, 1)).argmax(1).view(len(ts), -1)  # (T, S)
    fooled = pred != y[ok][None]
    first = ts[fooled.float().argmax(dim=0)]  # smallest fooling t per sample
    assert fooled[-1].all()
    assert (first >= 0.5).all(), first.min()


def test_pgd_restarts_keep_the_best_per_sample():
    """Zero-gradient model: only the random start matters, success has probability 1/2 per
    restart and sample. Restart 1 fools a set A; later restarts fool others; all must stay."""

    class Coin(nn.Module):
        def forward(self, x):
            flat = x.flatten(1)
            up = (flat[:, 0] > 0.5).float()  # the random start moved pixel 0 up
            logits = torch.stack([torch.zeros_like(up), 10 * up - 5], 1)
            return logits + 0 * flat.sum(1, keepdim=True)  # differentiable, zero gradient

    x = torch.full((64, 4), 0.5)
    y = torch.zeros(64, dtype=torch.long)
    idx = torch.arange(64)  # identical inputs: without an index they share their draws
    one = PGD(eps=0.1, steps=2, seed=3)(Coin(), x, y, index=idx)
    four = PGD(eps=0.1, steps=2, restarts=4, seed=3)(Coin(), x, y, index=idx)
    assert (four.success | ~one.success).all()  # every restart-1 success is kept
    assert (four.success & ~one.success).any()  # and later restarts add new ones
    assert four.success.float().mean() > 0.8  # about 1 - 1/16; an average over the set: 1/2
    assert (four.iterations[one.success] == 2).all()  # fooled samples are not restarted
    assert (four.iterations[~four.success] == 8).all()


def test_pgd_restarts_keep_the_highest_loss_when_nothing_succeeds():
    class Ramp(nn.Module):  # loss grows with pixel 0, gradient hidden, success impossible
        def forward(self, x):
            flat = x.flatten(1)
            logits = torch.stack([2 - flat[:, 0].detach(), torch.zeros(len(x))], 1)
            return logits + 0 * flat.sum(1, keepdim=True)

    x = torch.full((32, 3), 0.5)
    y = torch.zeros(32, dtype=torch.long)
    one = PGD(eps=0.2, steps=1, seed=5)(Ramp(), x, y)
    three = PGD(eps=0.2, steps=1, restarts=3, seed=5)(Ramp(), x, y)
    assert not three.success.any()
    assert (three.adv[:, 0] >= one.adv[:, 0]).all()
    assert (three.adv[:, 0] > one.adv[:, 0]).float().mean() > 0.5


def test_pgd_early_stop_freezes_fooled_samples():
    model, x_test, y_test = trained_digits()
    x, y = correct_subset(model, x_test, y_test, 100)
    full = PGD(eps=0.2, steps=20, random_start=False)(model, x, y)
    early = PGD(eps=0.2, steps=20, random_start=False, early_stop=True)(model, x, y)
    # trajectories are per sample: a sample fooled at the end of the full run was fooled at
    # some iterate, where early stopping froze it
    assert (early.success | ~full.success).all()
    assert (early.iterations[~early.success] == 20).all()
    assert early.iterations.float().mean() < 0.7 * 20


def test_threat_model_maths():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(50, 3, 4, 4, generator=gen)
    for norm, eps in (("linf", 0.1), ("l2", 0.7)):
        threat = ThreatModel(norm, eps)
        start = threat.random_start(x0, gen)
        assert (threat.norms(start - x0) <= eps + 1e-6).all()
        assert start.min() >= 0 and start.max() <= 1
        far = threat.project(x0, x0 + torch.randn(x0.shape, generator=gen))
        assert (threat.norms(far - x0) <= eps + 1e-6).all()
    sizes = ThreatModel("l2", 0.4).random_start(torch.full((4000, 2), 0.5), gen) - 0.5
    r = sizes.norm(dim=1)  # uniform in a disc inside the box: P(r <= eps / 2) = 1 / 4
    assert abs((r <= 0.2).float().mean().item() - 0.25) < 0.03
