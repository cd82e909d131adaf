"""FAB and FAB-T: the projection, analytic answers on linear models, invariants, errors, and
torchattacks 3.5.1 (its port of AutoAttack's FAB) as the oracle."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from advlab import attacks
from advlab.attacks import FAB, FABT, DeepFool
from advlab.attacks.fab import project_hyperplane_box
from attack_fixtures import (
    Linear,
    correct_subset,
    single_thread,  # noqa: F401 (autouse)
    trained_digits,
)


def size(result: attacks.AttackResult, norm: str) -> torch.Tensor:
    return result.linf if norm == "linf" else result.l2


def pnorm(d: torch.Tensor, norm: str) -> torch.Tensor:
    return d.abs().amax(dim=1) if norm == "linf" else d.norm(dim=1)


def box_points(n: int, d: int, seed: int) -> torch.Tensor:
    """(n, d) float64 points in [0, 1], a third of the coordinates exactly at 0 or 1."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.rand(n, d, generator=gen, dtype=torch.float64)
    return torch.where(torch.rand(n, d, generator=gen) < 0.3, (t > 0.5).double(), t)


# --- the projection onto {w·z = b} ∩ [0, 1]^D ----------------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_far_from_the_box_faces_is_the_closed_form(norm):
    gen = torch.Generator().manual_seed(1)
    t = 0.4 + 0.2 * torch.rand(20, 30, generator=gen, dtype=torch.float64)
    w = torch.randn(20, 30, generator=gen, dtype=torch.float64)
    c = 0.02 * torch.randn(20, generator=gen, dtype=torch.float64)  # w·t − b: a near plane
    d = project_hyperplane_box(t, w, (w * t).sum(1) - c, norm)
    if norm == "l2":  # −c w / ‖w‖₂²
        expected = -c[:, None] * w / (w * w).sum(1, keepdim=True)
    else:  # −c sign(w) / ‖w‖₁
        expected = -c[:, None] * w.sign() / w.abs().sum(1, keepdim=True)
    torch.testing.assert_close(d, expected, atol=1e-12, rtol=0)


def linf_optimum(optimize, t: np.ndarray, w: np.ndarray, b: float) -> float:
    """min s over (d, s): −s <= d <= s, w·(t + d) = b, t + d in [0, 1] (scipy's HiGHS)."""
    dim = len(t)
    eye, ones = np.eye(dim), -np.ones((dim, 1))
    res = optimize.linprog(c=np.r_[np.zeros(dim), 1.0], A_ub=np.block([[eye, ones], [-eye, ones]]),
                           b_ub=np.zeros(2 * dim), A_eq=np.r_[w, 0.0][None], b_eq=[b - w @ t],
                           bounds=[*zip(-t, 1 - t, strict=True), (0, None)], method="highs")
    assert res.success, res.message
    return float(res.fun)


def l2_optimum(optimize, t: np.ndarray, w: np.ndarray, b: float, start: np.ndarray) -> float:
    """min ‖d‖₂ with w·(t + d) = b, t + d in [0, 1] (scipy's SLSQP)."""
    res = optimize.minimize(lambda v: v @ v, x0=start, jac=lambda v: 2 * v, method="SLSQP",
                            bounds=list(zip(-t, 1 - t, strict=True)),
                            constraints=[{"type": "eq", "fun": lambda v: w @ (t + v) - b,
                                          "jac": lambda v: w}],
                            options={"ftol": 1e-14, "maxiter": 500})
    assert res.success, res.message
    return float(res.fun) ** 0.5


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_is_the_optimum_of_the_convex_program(norm):
    """Against scipy's solvers: linprog for ℓ∞, SLSQP for ℓ2, on points with faces active."""
    optimize = pytest.importorskip("scipy.optimize")
    n, dim = 12, 8
    t = box_points(n, dim, seed=2)
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    w[0, :3] = 0  # coordinates the plane ignores stay put
    corner = torch.where(w > 0, -t, 1 - t)  # the farthest the box goes toward lower w·z
    reach = (w * corner).sum(1)  # < 0
    frac = torch.linspace(0.05, 0.95, n, dtype=torch.float64)  # part of that reach to cover
    b = (w * t).sum(1) + frac * reach
    d = project_hyperplane_box(t, w, b, norm)
    torch.testing.assert_close((w * (t + d)).sum(1), b, atol=1e-10, rtol=0)  # on the plane
    assert ((t + d) >= -1e-12).all() and ((t + d) <= 1 + 1e-12).all()  # in the box
    assert (d[0, :3] == 0).all()
    for i in range(n):
        ti, wi, bi = t[i].numpy(), w[i].numpy(), b[i].item()
        best = (linf_optimum(optimize, ti, wi, bi) if norm == "linf"
                else l2_optimum(optimize, ti, wi, bi, corner[i].numpy() * frac[i].item()))
        assert pnorm(d[i:i + 1], norm).item() == pytest.approx(best, rel=1e-6, abs=1e-9), i


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_out_of_the_boxs_reach_is_the_corner_closest_to_the_plane(norm):
    t = box_points(10, 6, seed=4)
    w = torch.randn(10, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    corner = torch.where(w > 0, -t, 1 - t)
    b = (w * (t + corner)).sum(1) - 0.5  # half a unit beyond the corner: unreachable
    torch.testing.assert_close(project_hyperplane_box(t, w, b, norm), corner, atol=1e-12,
                               rtol=0)
    # the plane on the other side: the opposite corner
    far = torch.where(w > 0, 1 - t, -t)
    b_up = (w * (t + far)).sum(1) + 0.5  # beyond the box's highest w·z
    torch.testing.assert_close(project_hyperplane_box(t, w, b_up, norm), far, atol=1e-12,
                               rtol=0)
    zero = project_hyperplane_box(t, w, (w * t).sum(1), norm)  # already on the plane
    assert (zero == 0).all()


# --- analytic answers on linear models ------------------------------------------------------


def binary_model(d: int = 16, seed: int = 0):
    """Two classes, boundary through the middle of 8 points with 30% pixels at 0 or 1."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(2, d, generator=gen)
    x = box_points(8, d, seed).float()
    b = torch.zeros(2)
    b[0] = -(x @ (w[0] - w[1])).mean()
    model = Linear(w, b)
    y = model(x).argmax(1).detach()
    return model, x, y


def exact_projection(model: Linear, x: torch.Tensor, y: torch.Tensor, other: torch.Tensor,
                     norm: str) -> torch.Tensor:
    """The least ``norm`` perturbation inside the box onto z_other = z_y (float64)."""
    w = (model.weight[other] - model.weight[y]).detach().double()
    b = -(model.bias[other] - model.bias[y]).detach().double()
    return project_hyperplane_box(x.double(), w, b, norm)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", ["fab", "fab-t"])
def test_one_step_on_a_binary_linear_model_is_the_exact_projection_times_eta(name, norm):
    model, x, y = binary_model()
    delta = exact_projection(model, x, y, 1 - y, norm)
    exact = pnorm(delta, norm)
    result = attacks.create(name, norm=norm, steps=1)(model, x, y)
    assert result.success.all() and (result.iterations == 1).all()
    # first step from x: alpha = 1/2 capped at alpha_max, both projections the same point
    torch.testing.assert_close(result.adv, (x + 1.05 * delta.float()).clamp(0, 1), atol=1e-6,
                               rtol=0)
    if norm == "linf":  # unsaturated coordinates move eta·λ, saturated ones stay at the face
        torch.testing.assert_close(result.linf, 1.05 * exact.float(), atol=1e-6, rtol=1e-5)
    # the box binds for some points: the distance without it is smaller there
    w = (model.weight[1 - y] - model.weight[y]).detach().double()
    f = (model(x).gather(1, (1 - y)[:, None]) - model(x).gather(1, y[:, None]))[:, 0]
    free = f.detach().double().abs() / (w.abs().sum(1) if norm == "linf" else w.norm(dim=1))
    assert (exact >= free - 1e-9).all() and (exact > 1.01 * free).any()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_many_steps_approach_the_exact_distance_from_above(norm):
    model, x, y = binary_model(seed=6)
    exact = pnorm(exact_projection(model, x, y, 1 - y, norm), norm).float()
    result = FAB(norm=norm, steps=30)(model, x, y)
    assert result.success.all()
    ratio = size(result, norm) / exact
    assert (ratio >= 1 - 1e-5).all()  # no adversarial point is closer than the boundary
    assert (ratio <= 1.01).all(), ratio  # eta = 1.05, beta = 0.9 settle ~0.5% above it
    closer = FAB(norm=norm, steps=30, eta=1.01)(model, x, y)
    assert (size(closer, norm) / exact <= 1.002).all()


def multiclass_model(classes: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    d = 20
    w = torch.randn(classes, d, generator=gen)
    x = 0.4 + 0.2 * torch.rand(8, d, generator=gen)  # interior: the box does not bind
    b = -(x @ w.T).mean(0) + torch.linspace(0, 0.3, classes)
    model = Linear(w, b)
    return model, x, model(x).argmax(1).detach()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_untargeted_first_step_goes_to_the_nearest_linear_boundary(norm):
    model, x, y = multiclass_model()
    z = model(x).detach()
    w_rel = (model.weight[None] - model.weight[y][:, None]).detach()  # (B, K, D)
    dual = w_rel.abs().sum(2) if norm == "linf" else w_rel.norm(dim=2)
    dist = (z - z.gather(1, y[:, None])).abs() / dual
    dist[torch.arange(8), y] = torch.inf
    nearest = dist.min(dim=1).values
    result = FAB(norm=norm, steps=1)(model, x, y)
    assert result.success.all()
    torch.testing.assert_close(size(result, norm), 1.05 * nearest, atol=1e-6, rtol=1e-5)
    assert (result.info["backward_passes"] == 3).all()  # K − 1 boundaries, one step
    # FAB-T over every other class: the same nearest boundary, one backward per target
    fabt = FABT(norm=norm, steps=1, n_target_classes=9)(model, x, y)
    torch.testing.assert_close(size(fabt, norm), size(result, norm), atol=1e-6, rtol=1e-5)
    assert (fabt.iterations == 3).all() and (fabt.info["backward_passes"] == 3).all()
    # one target: the boundary of the class with the second-highest clean logit
    second = z.scatter(1, y[:, None], -torch.inf).argmax(1)
    only = FABT(norm=norm, steps=1, n_target_classes=1)(model, x, y)
    torch.testing.assert_close(size(only, norm), 1.05 * dist.gather(1, second[:, None])[:, 0],
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_targeted_fab_reaches_the_target(norm):
    model, x, y = multiclass_model(seed=1)
    target = (y + 2) % 4
    result = FAB(norm=norm, steps=40, targeted=True)(model, x, y, target)
    assert result.success.all() and torch.equal(result.pred, target)
    # it cannot be closer than the boundary between y and the target
    z = model(x).detach()
    w_rel = (model.weight[target] - model.weight[y]).detach()
    dual = w_rel.abs().sum(1) if norm == "linf" else w_rel.norm(dim=1)
    gap = (z.gather(1, y[:, None]) - z.gather(1, target[:, None]))[:, 0]
    assert (size(result, norm) >= gap / dual - 1e-5).all()
    assert (result.info["backward_passes"] == 40).all()


# --- invariants on a trained model ----------------------------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_more_steps_restarts_and_targets_never_give_a_larger_perturbation(norm):
    """The runs are deterministic prefixes of the longer ones: the best can only shrink."""
    model, x, y = trained_digits()
    x, y = x[:60], y[:60]
    base = size(FAB(norm=norm, steps=5)(model, x, y), norm)
    for more in (FAB(norm=norm, steps=10), FAB(norm=norm, steps=5, restarts=2)):
        assert (size(more(model, x, y), norm) <= base).all()
    two = FABT(norm=norm, steps=5, n_target_classes=2)(model, x, y)
    three = FABT(norm=norm, steps=5, n_target_classes=3)(model, x, y)
    assert (size(three, norm)[two.success] <= size(two, norm)[two.success]).all()
    assert (three.success | ~two.success).all()


def test_misclassified_points_are_returned_as_is_and_failures_are_x():
    model, x, y = trained_digits()
    x, y = x[:100], y[:100]
    with torch.no_grad():
        wrong = model(x).argmax(1) != y
    assert wrong.any()
    result = FAB(steps=3)(model, x, y)
    assert torch.equal(result.adv[wrong], x[wrong]) and result.success[wrong].all()
    assert (result.iterations[wrong] == 0).all() and (result.iterations[~wrong] == 3).all()
    assert (result.info["backward_passes"][~wrong] == 27).all()
    weak = FAB(steps=1, eta=1.0, alpha_max=0.0)(model, x, y)  # lands on the boundary at best
    failed = ~weak.success
    assert failed.any() and torch.equal(weak.adv[failed], x[failed])


@pytest.mark.parametrize("name", ["fab", "fab-t"])
def test_eps_restarts_run_only_on_points_above_eps(name):
    model, x, y = trained_digits()
    x, y = correct_subset(model, x, y, 60)
    eps = 0.5
    extra = {"n_target_classes": 1} if name == "fab-t" else {}
    one = attacks.create(name, norm="l2", steps=5, eps=eps, **extra)(model, x, y)
    three = attacks.create(name, norm="l2", steps=5, eps=eps, restarts=3, **extra)(model, x, y)
    broken = one.success & (one.l2 <= eps)
    assert broken.any() and (~broken).any()
    assert torch.equal(three.adv[broken], one.adv[broken])
    assert (three.iterations[broken] == 5).all()
    assert (three.iterations[~broken] > 5).all()
    # restarts 2 and 3 start at random points: some points get a new, smaller best
    assert (three.l2[~broken] < one.l2[~broken] - 1e-6).any()
    assert (three.l2 <= one.l2).all()


def test_fab_is_as_small_as_deepfool_and_lands_close_to_the_boundary():
    model, x, y = trained_digits()
    x, y = correct_subset(model, x, y, 100)
    result = FAB(norm="l2", steps=50)(model, x, y)
    assert result.success.all()
    deepfool = DeepFool(steps=50)(model, x, y)
    # DeepFool is near-optimal on this plain MLP; FAB's eta / beta leave it ~0.5% above
    assert result.l2.median() <= 1.02 * deepfool.l2.median()
    r = result.adv - x  # along its own direction, the first adversarial scale is near 1
    ts = torch.linspace(0, 1, 101)[1:]
    with torch.no_grad():
        points = x[None] + ts.view(-1, 1, 1, 1, 1) * r[None]
        pred = model(points.flatten(0, 1)).argmax(1).view(len(ts), -1)
    first = ts[(pred != y[None]).float().argmax(dim=0)]
    assert (first >= 0.9).all(), first.min()


def test_a_point_gets_the_same_result_alone_and_in_a_batch():
    """Random restarts are keyed by each point's index. A float64 model (attacked in float64)
    so that batch-size-dependent rounding cannot tip FAB's discrete choices (the nearest
    boundary, success) and make trajectories diverge for another reason than the draws."""
    net, x, y = trained_digits()
    x, y = correct_subset(net, x, y, 40)
    model = copy.deepcopy(net).double()
    index = torch.arange(40)
    for cls, extra in ((FAB, {}), (FABT, {"n_target_classes": 2})):
        settings = {"norm": "l2", "steps": 5, "eps": 0.5, **extra}
        whole = cls(restarts=3, **settings)(model, x, y, index=index)
        first = cls(**settings)(model, x, y, index=index)
        improved = (whole.l2 < first.l2 - 1e-6).nonzero().squeeze(1)  # by a random restart
        assert improved.numel() > 0
        for i in [*improved[:3].tolist(), 0]:
            alone = cls(restarts=3, **settings)(model, x[i:i + 1], y[i:i + 1],
                                                index=torch.tensor([i]))
            torch.testing.assert_close(alone.adv[0], whole.adv[i], atol=1e-6, rtol=0)
        shifted = cls(restarts=3, **settings)(model, x, y, index=index + 1000)
        assert not torch.equal(shifted.adv[improved], whole.adv[improved])  # other draws


# --- parameters -----------------------------------------------------------------------------


@pytest.mark.parametrize("name, params, message", [
    ("fab", {"norm": "l1"}, "norm in 'linf', 'l2', got 'l1'"),
    ("fab", {"eps": -0.1}, "eps to be a finite number >= 0, got -0.1"),
    ("fab", {"steps": 0}, "steps to be an integer >= 1, got 0"),
    ("fab", {"restarts": 1.5}, "restarts to be an integer >= 1, got 1.5"),
    ("fab", {"alpha_max": 1.5}, r"alpha_max in \[0, 1\], got 1.5"),
    ("fab", {"alpha_max": -0.1}, "alpha_max to be a finite number >= 0"),
    ("fab", {"eta": 0.9}, "eta >= 1 .the overshoot., got 0.9"),
    ("fab", {"beta": 0.0}, r"beta in \(0, 1\] .the backward step., got 0.0"),
    ("fab", {"beta": 1.1}, r"beta in \(0, 1\]"),
    ("fab", {"targeted": "yes"}, "targeted to be True or False"),
    ("fab-t", {"n_target_classes": 0}, "n_target_classes to be an integer >= 1, got 0"),
    ("fab-t", {"eps": float("inf")}, "eps to be a finite number >= 0"),
    ("fab-t", {"seed": -1}, "seed to be an integer >= 0"),
])
def test_bad_parameters(name, params, message):
    with pytest.raises(ValueError, match=message):
        attacks.create(name, **params)


def test_kinds_targets_and_detached_models():
    assert FAB.minimal and FABT.minimal and FAB().threat is None and FABT().threat is None
    assert "targeted" not in attacks.params("fab-t")
    net, x, y = trained_digits()
    x, y = x[:4], y[:4]
    with pytest.raises(ValueError, match="untargeted attack 'fab-t'"):
        FABT(steps=1)(net, x, y, target=y)
    with pytest.raises(ValueError, match="expected a target"):
        FAB(steps=1, targeted=True)(net, x, y)
    wrong = (net(x).argmax(1) + 1) % 10  # every point already misclassified: nothing to run
    for attack in (FAB(steps=1), FABT(steps=1)):
        with pytest.raises(ValueError, match="depend differentiably on the input"):
            attack(lambda v: net(v).detach(), x, wrong)


# --- torchattacks 3.5.1 as the oracle -------------------------------------------------------

EPS = {"linf": (0.05, 0.08, 0.12), "l2": (0.3, 0.45, 0.6)}


@pytest.fixture(scope="module")
def ta():
    return pytest.importorskip("torchattacks", reason="oracle: torchattacks not installed "
                               "(pip install --no-deps torchattacks==3.5.1)")


@pytest.mark.oracle
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_equals_torchattacks(ta, norm):
    from torchattacks.attacks import fab as ta_fab

    peer = ta_fab.projection_linf if norm == "linf" else ta_fab.projection_l2
    t = box_points(300, 40, seed=7)
    w = torch.randn(300, 40, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    w[torch.rand(300, 40, generator=torch.Generator().manual_seed(9)) < 0.1] = 0
    spread = torch.linspace(-6, 6, 300, dtype=torch.float64)  # near, far and out of reach
    b = (w * t).sum(1) + spread
    ours = project_hyperplane_box(t, w, b, norm)
    torch.testing.assert_close(ours, peer(t, w.clone(), b.clone()), atol=1e-12, rtol=0)


@pytest.mark.oracle
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("multi", [False, True])
def test_robust_accuracy_and_sizes_match_torchattacks(ta, norm, multi):
    model, x, y = trained_digits()
    x, y = x[:200], y[:200]  # misclassified points included: both count them as broken
    n = len(x)
    ours = (FABT(norm=norm, steps=20) if multi else FAB(norm=norm, steps=20))(model, x, y)
    found = size(ours, norm)
    for eps in EPS[norm]:
        adv = ta.FAB(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, steps=20,
                     multi_targeted=multi, n_classes=10)(x, y)
        with torch.no_grad():
            fooled = model(adv).argmax(1) != y  # torchattacks returns x above eps
        theirs = 1 - fooled.float().mean().item()
        robust = 1 - (ours.success & (found <= eps)).float().mean().item()
        assert robust <= theirs + 1 / n + 1e-9, (eps, robust, theirs)
        assert abs(robust - theirs) <= 0.01, (eps, robust, theirs)
        assert 0.05 < theirs < 0.95  # a regime where the answer is not trivial
    both = ours.success & fooled & (found > 0)  # the largest eps: nearly every point
    their_size = pnorm((adv - x).flatten(1), norm)
    assert both.float().mean() > 0.5
    assert found[both].median() <= 1.05 * their_size[both].median()


@pytest.mark.oracle
@pytest.mark.parametrize("norm, eps", [("linf", 0.07), ("l2", 0.4)])
def test_restarts_match_torchattacks(ta, norm, eps):
    model, x, y = trained_digits()
    x, y = x[:200], y[:200]
    ours = FAB(norm=norm, steps=10, restarts=3, eps=eps)(model, x, y)
    adv = ta.FAB(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, steps=10,
                 n_restarts=3, n_classes=10)(x, y)
    with torch.no_grad():
        theirs = 1 - (model(adv).argmax(1) != y).float().mean().item()
    robust = 1 - (ours.success & (size(ours, norm) <= eps)).float().mean().item()
    assert robust <= theirs + 1 / len(x) + 1e-9 and abs(robust - theirs) <= 0.01


@pytest.mark.oracle
@pytest.mark.parametrize("newton_steps", [0, 1, 2])
def test_linf_projections_bisection_fallback_equals_torchattacks(ta, newton_steps, monkeypatch):
    """ℓ∞ radius by Newton steps; rows still rising after the cap finish by bisection: with
    0, 1 or 2 steps allowed (all, most or some rows falling back) the projection is the
    same, up to float64 rounding."""
    from torchattacks.attacks import fab as ta_fab

    from advlab.attacks import fab

    monkeypatch.setattr(fab, "_NEWTON_STEPS", newton_steps)
    t = box_points(300, 40, seed=11)
    w = torch.randn(300, 40, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    b = (w * t).sum(1) + torch.linspace(-6, 6, 300, dtype=torch.float64)
    torch.testing.assert_close(project_hyperplane_box(t, w, b, "linf"),
                               ta_fab.projection_linf(t, w.clone(), b.clone()),
                               atol=1e-12, rtol=0)
