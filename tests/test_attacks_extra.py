"""The extra attacks: optim (targeted, per-sample stop), universal, spatial and transfer."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from advlab import attacks
from advlab.attacks import CW, PGD, DeepFool, Optim, Spatial, Transfer, Universal
from advlab.attacks.spatial import rotate_translate
from attack_fixtures import SmallCNN, correct_subset, digits, trained_digits

EXTRA = ("optim", "universal", "spatial", "transfer")
FAST = {"optim": {"steps": 20}, "universal": {"max_passes": 2, "deepfool_steps": 3},
        "transfer": {"attack": "pgd", "attack_params": {"steps": 5}}}


def probs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).softmax(dim=1)


def train_subset(n: int = 300):
    """Digits the shared model was trained on (its first n training points)."""
    x, y = digits()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm[:n]], y[perm[:n]]


# --- invariants of the four attacks (also covered by the registry-wide contract test) -------


@pytest.mark.parametrize("name", EXTRA)
def test_invariants_train_flags_dtype_and_determinism(name):
    torch.manual_seed(0)
    model = SmallCNN()
    model.train()
    model.head[1].eval()  # mixed flags must come back exactly
    flags = {n: m.training for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = digits()
    x, y = x[:6].double(), y[:6]
    attack = attacks.create(name, **FAST.get(name, {}))
    target = (y + 1) % 10 if attack.targeted else None
    result = attack(model, x, y, target)
    assert result.adv.shape == x.shape and result.adv.dtype == torch.float64
    assert result.adv.min() >= 0 and result.adv.max() <= 1
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    again = attack(model, x, y, target)
    assert torch.equal(again.adv, result.adv) and torch.equal(again.iterations, result.iterations)
    assert name in attacks.available()


# --- optim -----------------------------------------------------------------------------------


def test_optim_reaches_the_target_with_confidence_and_stops_per_sample():
    model, x_test, y_test = trained_digits()
    x, y = correct_subset(model, x_test, y_test, 60)
    sure = probs(model, x).amax(1) >= 0.95
    x, y = torch.cat([x[sure][:5], x[~sure]]), torch.cat([y[sure][:5], y[~sure]])
    target = (y + 3) % 10
    target[:5] = y[:5]  # already the target with confidence >= 0.95: no step needed
    result = Optim(confidence=0.95)(model, x, y, target)
    assert result.success.all() and result.info["reached"].all()
    conf = probs(model, result.adv).gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(result.info["confidence"], conf, atol=1e-6, rtol=0)
    assert (conf >= 0.95).all()
    assert (result.iterations[:5] == 0).all() and torch.equal(result.adv[:5], x[:5])
    assert len(result.iterations[5:].unique()) >= 3  # per-sample stop, not one global count
    # "as soon as": with one step fewer, the samples that needed m steps are short of it
    m = int(result.iterations[5:].median())
    group = (result.iterations == m).nonzero().squeeze(1)
    short = Optim(confidence=0.95, steps=m - 1)(model, x[group], y[group], target[group])
    assert not short.info["reached"].any()
    # samples are independent of the batch they are in
    alone = Optim(confidence=0.95)(model, x[group], y[group], target[group])
    torch.testing.assert_close(alone.adv, result.adv[group], atol=1e-6, rtol=0)


def test_optim_steps_are_plain_gradient_descent_with_clamping():
    """Two steps by hand: CE gradient alone at x̄ (penalty subgradient 0), then with λ·d/‖d‖."""
    model, x_test, y_test = trained_digits()
    x, y = x_test[:16], y_test[:16]
    target = (y + 5) % 10
    lam, lr = 0.3, 0.05
    ref = x.clone()
    for _ in range(2):
        xr = ref.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(xr), target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xr)
        d = (ref - x).flatten(1)
        norm = d.norm(dim=1, keepdim=True)
        pull = torch.where(norm > 0, d / norm.clamp_min(1e-12), 0.0).view_as(x)
        ref = (ref - lr * (grad + lam * pull)).clamp(0, 1)
    result = Optim(lam=lam, lr=lr, steps=2, confidence=1.0)(model, x, y, target)
    assert (result.iterations == 2).all()
    torch.testing.assert_close(result.adv, ref, atol=1e-6, rtol=1e-5)


def test_optim_larger_lam_gives_smaller_perturbations():
    model, x_test, y_test = trained_digits()
    x, y = correct_subset(model, x_test, y_test, 40)
    target = (y + 3) % 10
    l2 = [Optim(lam=lam, steps=200)(model, x, y, target).l2 for lam in (0.0, 1.0, 4.0)]
    means = [v.mean().item() for v in l2]
    assert means[0] > means[1] > means[2], means
    assert (l2[2] < l2[0]).float().mean() > 0.9


def test_optim_rejects_bad_settings_and_needs_a_target():
    with pytest.raises(ValueError, match="confidence"):
        Optim(confidence=1.5)
    with pytest.raises(ValueError, match="lr"):
        Optim(lr=0.0)
    with pytest.raises(ValueError, match="targeted"):
        attacks.create("optim", targeted=True)  # no such parameter: targeted is implied
    model, x_test, y_test = trained_digits()
    with pytest.raises(ValueError, match="target"):
        Optim()(model, x_test[:4], y_test[:4])


# --- universal -------------------------------------------------------------------------------


def fooling_rate(model: nn.Module, x: torch.Tensor, adv: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(adv).argmax(1) != model(x).argmax(1)).float().mean().item()


@pytest.mark.parametrize("norm, eps", [("linf", 0.25), ("l2", 2.0)])
def test_universal_one_perturbation_in_the_ball_beats_noise(norm, eps):
    model, x_test, _ = trained_digits()
    x, y = train_subset()
    attack = Universal(eps=eps, norm=norm, max_passes=10, target_fooling_rate=1.0)
    result = attack(model, x, y)
    v = result.info["perturbation"]
    assert v.shape == x.shape[1:]
    size = v.abs().max() if norm == "linf" else v.norm()
    assert size <= eps + 1e-6
    assert torch.equal(result.adv, (x + v).clamp(0, 1))  # the same v for every sample
    assert result.info["fooling_rate"] == pytest.approx(fooling_rate(model, x, result.adv))
    assert result.info["fooling_rate"] == max(result.info["fooling_history"])
    assert result.info["passes"] == 10
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape[1:], generator=gen)
    noise = eps * (noise.sign() if norm == "linf" else noise / noise.norm())
    for data in (x, x_test):  # the training subset, and unseen test digits
        universal = fooling_rate(model, data, (data + v).clamp(0, 1))
        random = fooling_rate(model, data, (data + noise).clamp(0, 1))
        assert universal > 0.5 and universal > 3 * random, (universal, random)


def test_universal_stops_at_the_target_fooling_rate_and_runs_deepfool_on_the_rest():
    model, _, _ = trained_digits()
    x, y = train_subset()
    result = Universal(eps=2.0, norm="l2", target_fooling_rate=0.2)(model, x, y)
    history = result.info["fooling_history"]
    assert history[-1] >= 0.2 and all(h < 0.2 for h in history[:-1])
    assert result.info["passes"] == len(history) - 1 < 10
    # pass 1 runs DeepFool on every point (none is fooled by v = 0): the same steps as alone
    first = DeepFool(steps=10)(model, x, result.info["clean_pred"]).iterations
    one_pass = Universal(eps=2.0, norm="l2", max_passes=1)(model, x, y)
    assert torch.equal(one_pass.iterations, first)


def test_universal_fit_on_train_apply_on_test():
    model, x_test, y_test = trained_digits()
    x, y = train_subset(200)
    attack = Universal(eps=0.25, norm="linf", max_passes=4)
    fitted = attack.fit(model, x, y)
    v = fitted.perturbation
    assert torch.equal(v, attack(model, x, y).info["perturbation"])
    on_test = fitted(model, x_test, y_test)
    assert torch.equal(on_test.adv, (x_test + v).clamp(0, 1))
    assert torch.equal(fitted.apply(x_test), on_test.adv)
    assert (on_test.iterations == 0).all()
    assert on_test.success.float().mean() > 0.3
    assert fitted == attack  # equality ignores the perturbation (a tensor field)
    cfg = fitted.config()
    assert cfg["perturbation"]["shape"] == [1, 8, 8]
    assert cfg["perturbation"]["linf"] == pytest.approx(v.abs().max().item())
    refit = fitted.fit(model, x_test[:100], y_test[:100])  # a fitted attack crafts anew
    assert torch.equal(refit.perturbation, attack.fit(model, x_test[:100],
                                                      y_test[:100]).perturbation)
    assert not torch.equal(refit.perturbation, v)
    with pytest.raises(ValueError, match="shape"):
        fitted.apply(x_test[:, :, :4])
    with pytest.raises(ValueError, match="norm <= eps"):
        Universal(eps=0.1, norm="linf", perturbation=v)
    with pytest.raises(ValueError, match="fitted"):
        attack.apply(x_test)


# --- spatial ---------------------------------------------------------------------------------


def scipy_rotate_translate(img: np.ndarray, angle: float, dx: float, dy: float) -> np.ndarray:
    """Reference: the same transform by scipy (bilinear, zeros outside), (C, H, W)."""
    h, w = img.shape[-2:]
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    matrix = np.array([[c, s], [-s, c]])  # (row, col) of the input from (row, col) of the output
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    offset = centre - matrix @ (centre + np.array([dy, dx]))
    return np.stack([ndimage.affine_transform(ch, matrix, offset=offset, order=1,
                                              mode="grid-constant", cval=0.0) for ch in img])


def test_rotate_translate_agrees_with_scipy_and_is_exact_on_the_pixel_grid():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 2, 7, 10, generator=gen, dtype=torch.float64)  # not square
    angle = torch.tensor([17.0, -23.0, 5.0, 180.0])
    shift = torch.tensor([[1.5, -0.5], [0.0, 2.0], [-2.7, 1.0], [0.0, 0.0]])
    out = rotate_translate(x, angle, shift)
    ref = np.stack([scipy_rotate_translate(x[i].numpy(), angle[i].item(), *shift[i].tolist())
                    for i in range(4)])
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)
    sq = torch.rand(2, 1, 7, 7, generator=gen)
    quarter = rotate_translate(sq, torch.full((2,), 90.0), torch.zeros(2, 2))
    torch.testing.assert_close(quarter, torch.rot90(sq, 1, dims=(2, 3)), atol=1e-6, rtol=0)
    moved = rotate_translate(sq, torch.zeros(2), torch.tensor([[2.0, -1.0], [0.0, 0.0]]))
    expected = torch.zeros_like(sq[0])
    expected[:, :-1, 2:] = sq[0, :, 1:, :-2]  # right by 2, up by 1, black borders
    torch.testing.assert_close(moved[0], expected, atol=1e-6, rtol=0)
    assert torch.equal(moved[1], sq[1])  # the identity is not resampled


class Templates(nn.Module):
    """Class 1 iff x is (almost) one of the template images: finds a hidden transformation."""

    def __init__(self, templates: torch.Tensor, tol: float = 1e-3) -> None:
        super().__init__()
        self.templates = templates  # (T, C, H, W)
        self.tol = tol

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = (x[:, None] - self.templates[None]).flatten(2).pow(2).sum(2).amin(1)  # (B,)
        return torch.stack([torch.zeros_like(d), self.tol - d], dim=1)


def test_spatial_finds_hidden_rotations_and_shifts_exactly():
    x, _ = digits()
    x = nn.functional.pad(x[:4], (2, 2, 2, 2))  # (4, 1, 12, 12) digits with a black margin
    hidden = [(20.0, 1.0, -2.0), (-30.0, 0.0, 0.0), (0.0, -3.0, 1.0), (6.0, 2.0, 3.0)]
    templates = torch.tensor(np.stack([scipy_rotate_translate(x[i].double().numpy(), *t)
                                       for i, t in enumerate(hidden)]), dtype=torch.float32)
    model = Templates(templates)
    y = torch.zeros(4, dtype=torch.long)
    result = Spatial()(model, x, y)  # the default grid: ±30° in 31 steps, ±3 px in 7x7
    assert result.success.all()
    angle = torch.tensor([t[0] for t in hidden])
    shift = torch.tensor([t[1:] for t in hidden])
    assert torch.equal(result.info["angle"], angle) and torch.equal(result.info["shift"], shift)
    torch.testing.assert_close(result.adv, templates, atol=1e-5, rtol=0)


def test_spatial_on_a_trained_model_reproducible_transforms_and_worst_case():
    model, x_test, y_test = trained_digits()
    x, y = correct_subset(model, x_test, y_test, 40)
    attack = Spatial(max_angle=4, n_angles=5, max_shift=0.5, n_shifts=3)
    result = attack(model, x, y)
    for max_batch in (1, 7):  # chunking the candidates does not change the answer
        chunked = Spatial(max_angle=4, n_angles=5, max_shift=0.5, n_shifts=3,
                          max_batch=max_batch)(model, x, y)
        assert torch.equal(chunked.adv, result.adv)
        assert torch.equal(chunked.iterations, result.iterations)
    angle, shift = result.info["angle"], result.info["shift"]
    ref = np.stack([scipy_rotate_translate(x[i].double().numpy(), angle[i].item(),
                                           *shift[i].tolist()) for i in range(len(x))])
    np.testing.assert_allclose(result.adv.numpy(), ref, atol=1e-5)
    assert 0.1 < result.success.float().mean() < 1  # both branches are exercised
    # brute force over the 45 grid points: a sample is fooled iff some grid point fools it; the
    # fooled ones took the smallest fooling transformation, the others the highest loss
    grid = [(a, dx, dy) for a in (-4.0, -2.0, 0.0, 2.0, 4.0) for dx in (-0.5, 0.0, 0.5)
            for dy in (-0.5, 0.0, 0.5)]
    with torch.no_grad():
        logits = torch.stack([model(rotate_translate(x, torch.full((40,), a),
                                                     torch.tensor([[dx, dy]] * 40)))
                              for a, dx, dy in grid])  # (G, B, K)
    fooled = (logits.argmax(2) != y).any(0)
    assert torch.equal(result.success, fooled)
    losses = nn.functional.cross_entropy(logits.flatten(0, 1), y.repeat(len(grid)),
                                         reduction="none").view(len(grid), -1)
    worst = losses.max(0).values
    chosen = nn.functional.cross_entropy(result.logits, y, reduction="none")
    torch.testing.assert_close(chosen[~fooled], worst[~fooled], atol=1e-5, rtol=1e-5)
    sizes = torch.tensor([(a / 4) ** 2 + (dx / 0.5) ** 2 + (dy / 0.5) ** 2 for a, dx, dy in grid])
    size = (angle / 4) ** 2 + (shift / 0.5).pow(2).sum(1)
    smallest = torch.where(logits.argmax(2) != y, sizes[:, None], torch.inf).amin(0)
    torch.testing.assert_close(size[fooled], smallest[fooled])  # the smallest that fools
    assert (result.iterations[~fooled] == 45).all()  # the identity and 44 other grid points
    assert (result.iterations[fooled] < 45).float().mean() > 0.9  # stopped early


def test_spatial_zero_range_random_sampling_and_errors():
    model, x_test, y_test = trained_digits()
    x, y = x_test[:30], y_test[:30]
    still = Spatial(max_angle=0, max_shift=0)(model, x, y)
    assert torch.equal(still.adv, x) and (still.iterations == 1).all()
    assert torch.equal(still.success, probs(model, x).argmax(1) != y)
    rand = Spatial(random_samples=8, seed=3)(model, x, y)
    angle, shift = rand.info["angle"], rand.info["shift"]
    assert (angle.abs() <= 30).all() and (shift.abs() <= 3).all()
    assert (rand.iterations <= 9).all()  # the identity, then 8 random draws
    assert not torch.equal(rand.adv, Spatial(random_samples=8, seed=4)(model, x, y).adv)
    tgt = Spatial(targeted=True)(model, x, y, target=(y + 1) % 10)
    assert torch.equal(tgt.success, tgt.pred == (y + 1) % 10) and tgt.success.any()
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        Spatial()(model, x.flatten(1), y)
    with pytest.raises(ValueError, match="n_angles"):
        Spatial(n_angles=0)


# --- transfer --------------------------------------------------------------------------------


def test_transfer_from_an_identical_copy_equals_white_box():
    model, x_test, y_test = trained_digits()
    x, y = x_test[:100], y_test[:100]
    pgd = PGD(eps=0.1, steps=10)
    white = pgd(model, x, y)
    twin = copy.deepcopy(model)
    via_copy = Transfer(attack=pgd, source=twin)(model, x, y)
    assert torch.equal(via_copy.adv, white.adv) and torch.equal(via_copy.success, white.success)
    assert torch.equal(via_copy.info["source_success"], white.success)
    by_name = Transfer(attack="pgd", source=twin, attack_params={"eps": 0.1, "steps": 10})
    assert torch.equal(by_name(model, x, y).adv, white.adv)
    assert torch.equal(Transfer(attack=pgd)(model, x, y).adv, white.adv)  # source=None


def test_transfer_success_is_measured_on_the_target_model():
    source, x_test, y_test = trained_digits()
    victim, _, _ = trained_digits(hidden=32)  # another architecture, another training run
    x, y = x_test[:200], y_test[:200]
    attack = Transfer(attack=PGD(eps=0.15, steps=10), source=source)
    result = attack(victim, x, y)
    with torch.no_grad():
        on_victim = victim(result.adv).argmax(1) != y
        on_source = source(result.adv).argmax(1) != y
    assert torch.equal(result.success, on_victim)
    assert torch.equal(result.info["source_success"], on_source)
    assert result.success.float().mean() < result.info["source_success"].float().mean()
    assert result.success.float().mean() > 0.1  # it does transfer, partly
    targeted = Transfer(attack=PGD(eps=0.3, steps=10, targeted=True), source=source)
    tgt = (y + 1) % 10
    assert torch.equal(targeted(victim, x, y, tgt).success, targeted(victim, x, y, tgt).pred
                       == tgt)


def test_transfer_restores_the_source_and_validates_its_settings():
    torch.manual_seed(0)
    source = SmallCNN().train()
    victim, x_test, y_test = trained_digits()
    attack = Transfer(attack="fgsm", source=source, attack_params={"eps": 0.1})
    attack(victim, x_test[:8], y_test[:8])
    assert all(m.training for m in source.modules())
    assert all(p.grad is None for p in source.parameters())
    assert attack.config() == {"attack": "transfer", "seed": 0, "source": "SmallCNN",
                               "inner": {"attack": "fgsm", "seed": 0, "eps": 0.1,
                                         "targeted": False}}
    assert hash(attack) == hash(Transfer(attack="fgsm", attack_params={"eps": 0.1}))
    assert attacks.create("transfer", attack="pgd", seed=7).attack.seed == 7
    assert dataclasses.replace(attack, seed=1).attack == attack.attack  # params live inside
    with pytest.raises(ValueError, match="attack_params only"):
        Transfer(attack=PGD(), attack_params={"eps": 0.1})
    with pytest.raises(ValueError, match="unknown attack"):
        Transfer(attack="nope")
    with pytest.raises(ValueError, match="other than 'transfer'"):
        Transfer(attack="transfer")
    with pytest.raises(ValueError, match="unknown parameter"):
        Transfer(attack="fgsm", attack_params={"steps": 3})


def test_cw_more_search_steps_never_give_a_larger_perturbation():
    """Each search step's best is shrunk before it is compared (comparing before the shrink
    could keep a candidate that shrinks less); info['c'] is the c of each sample's best."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 10)).eval()
    x = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    one = CW(c=1.0, steps=50, binary_search_steps=1)(model, x, y)
    two = CW(c=1.0, steps=50, binary_search_steps=2)(model, x, y)
    both = one.success & two.success
    assert both.sum() > 50
    assert (two.l2[both] <= one.l2[both] + 1e-6).all()
    c = two.info["c"]
    assert torch.isnan(c[~two.success]).all() and (c[two.success] > 0).all()
