"""Defenses: registry, adversarial training, Deep Defense, Lipschitz bounds and the SVD defense."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advlab import attacks, data, defenses, models
from advlab.defenses.deepdefense import deep_defense_regularizer, deepfool_perturbation
from advlab.defenses.lipschitz import (
    ConvGeometry,
    conv_operator_matrix,
    conv_operator_norm,
    lipschitz_bound,
    make_lipschitz,
)
from advlab.defenses.svd import n_truncated, svd_truncate
from advlab.train import TrainConfig, fit
from advlab.weights import load_model, save_model


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", "train"), data.load("digits", "test")


@pytest.fixture(scope="module")
def trained_mlp(digits):
    """A digits MLP trained for a few epochs (shared, never modified by the tests)."""
    train, _ = digits
    torch.manual_seed(0)
    model = models.create("mlp", dataset="digits", widths=[32])
    fit(model, train, TrainConfig(epochs=8, batch_size=64, lr=3e-3, device="cpu"),
        progress=False)
    return model.eval()


def _tiny(seed: int = 0, k: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, k))


# --- registry -------------------------------------------------------------------------------

def test_registry_lists_every_defense_and_rejects_unknown_names_and_parameters():
    assert set(defenses.available()) >= {"fgsm-at", "pgd-at", "fast-at", "deep-defense",
                                         "deepfool-finetune", "lipschitz"}
    with pytest.raises(ValueError, match="Did you mean 'pgd-at'"):
        defenses.create_objective("pgd_at")
    with pytest.raises(ValueError, match="unknown parameter 'epsilon'.*Valid parameters"):
        defenses.create_objective("fast-at", epsilon=0.3)
    with pytest.raises(ValueError, match="expected craft_mode"):
        defenses.create_objective("pgd-at", craft_mode="both")


def test_per_dataset_defaults_follow_the_papers():
    pgd = defenses.create_objective("pgd-at", dataset="mnist")
    assert (pgd.eps, pgd.alpha, pgd.steps, pgd.random_start) == (0.3, 0.01, 40, True)
    fast = defenses.create_objective("fast-at", dataset="mnist", eps=0.2)
    assert fast.alpha == pytest.approx(0.25) and fast.steps == 1 and fast.random_start
    assert not fast.clip_start and pgd.clip_start  # Wong et al.'s and Madry et al.'s codes
    fgsm = defenses.create_objective("fgsm-at", dataset="mnist")
    assert (fgsm.eps, fgsm.clean_weight, fgsm.random_start) == (0.25, 0.5, False)
    other = defenses.create_objective("pgd-at", dataset="fashion-mnist", steps=10)
    assert other.alpha == pytest.approx(2.5 * other.eps / 10)


NAN, INF = float("nan"), float("inf")
BAD_AT_PARAMS = [  # (defense, params, message): each names the parameter, range and value
    ("fgsm-at", {"eps": "a"}, r"expected eps to be a finite number > 0, got 'a'"),
    ("pgd-at", {"eps": "a"}, r"expected eps to be a finite number > 0, got 'a'"),
    ("fast-at", {"eps": "a"}, r"expected eps to be a finite number > 0, got 'a'"),
    ("pgd-at", {"eps": -0.1}, r"expected eps to be a finite number > 0, got -0\.1"),
    ("fast-at", {"eps": NAN}, r"expected eps to be a finite number > 0, got nan"),
    ("pgd-at", {"eps": INF}, r"expected eps to be a finite number > 0, got inf"),
    ("pgd-at", {"eps": 0}, r"expected eps to be a finite number > 0, got 0"),
    ("fgsm-at", {"eps": True}, r"expected eps to be a finite number > 0, got True"),
    ("pgd-at", {"steps": 0}, r"expected steps to be an integer >= 1, got 0"),
    ("pgd-at", {"steps": 1.5}, r"expected steps to be an integer >= 1, got 1\.5"),
    ("pgd-at", {"steps": "7"}, r"expected steps to be an integer >= 1, got '7'"),
    ("fgsm-at", {"steps": -1}, r"expected steps to be an integer >= 1, got -1"),
    ("pgd-at", {"alpha": 0}, r"expected alpha to be a finite number > 0, got 0"),
    ("fgsm-at", {"alpha": -2}, r"expected alpha to be a finite number > 0, got -2"),
    ("fast-at", {"alpha": NAN}, r"expected alpha to be a finite number > 0, got nan"),
    ("fgsm-at", {"clean_weight": 2}, r"expected clean_weight to be a number in \[0, 1\], got 2"),
    ("fgsm-at", {"clean_weight": NAN},
     r"expected clean_weight to be a number in \[0, 1\], got nan"),
    ("pgd-at", {"norm": "l1"}, r"expected norm in 'linf', 'l2', got 'l1'"),
    ("fast-at", {"random_start": "yes"}, r"expected random_start to be True or False, got 'yes'"),
    ("fast-at", {"clip_start": 1}, r"expected clip_start to be True or False, got 1"),
    ("pgd-at", {"craft_mode": "both"}, r"expected craft_mode in 'eval', 'train'"),
]


@pytest.mark.parametrize("name,params,message", BAD_AT_PARAMS,
                         ids=[f"{n}-{next(iter(p))}={next(iter(p.values()))!r}"
                              for n, p, _ in BAD_AT_PARAMS])
def test_adversarial_training_parameters_are_checked_before_any_arithmetic(name, params,
                                                                           message):
    # a ValueError, never a TypeError or ZeroDivisionError from deriving alpha from eps / steps
    with pytest.raises(ValueError, match=message):
        defenses.create_objective(name, dataset="mnist", **params)
    with pytest.raises(ValueError, match=message):
        defenses.create_objective(name, **params)


def test_adversarial_training_dataclass_checks_its_fields():
    with pytest.raises(ValueError, match=r"expected eps to be a finite number > 0, got -0\.1"):
        defenses.AdversarialTraining(eps=-0.1)
    with pytest.raises(ValueError, match=r"expected alpha to be a finite number > 0, got 0"):
        defenses.AdversarialTraining(alpha=0)
    with pytest.raises(ValueError, match=r"expected steps to be an integer >= 1, got 0"):
        defenses.AdversarialTraining(steps=0)
    with pytest.raises(ValueError, match=r"clean_weight to be a number in \[0, 1\], got 1\.5"):
        defenses.AdversarialTraining(clean_weight=1.5)


def test_unknown_parameters_name_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown parameter 'step_size' for defense 'pgd-at'"
                                         r": the step size is 'alpha'.*Valid parameters: eps, "
                                         r"alpha, steps"):
        defenses.create_objective("pgd-at", step_size=0.01)
    with pytest.raises(ValueError, match=r"unknown parameter 'power_iteration' for defense "
                                         r"'lipschitz'. Did you mean 'power_iterations'\?"):
        defenses.create_objective("lipschitz", power_iteration=3)
    with pytest.raises(ValueError, match=r"unknown parameter 'lambda' for defense "
                                         r"'deep-defense'.*Valid parameters: lam, "):
        defenses.create_objective("deep-defense", **{"lambda": 1.0})


@pytest.mark.parametrize("name", sorted(defenses.available()))
def test_unknown_dataset_is_refused_with_the_known_ones(name):
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'\..*Valid datasets: mnist, "
                                         r"fashion-mnist, cifar10, cifar10-jpeg, digits"):
        defenses.create_objective(name, dataset="nope")
    with pytest.raises(ValueError, match=r"expected dataset to be a dataset name or None, "
                                         r"got \['mnist'\]"):
        defenses.create_objective(name, dataset=["mnist"])


def test_no_dataset_and_datasets_without_a_row_keep_the_documented_default():
    for dataset in (None, "ring8"):  # ring8: a known data set with no row of its own
        pgd = defenses.create_objective("pgd-at", dataset=dataset)
        assert (pgd.eps, pgd.steps, pgd.alpha) == (0.1, 40, pytest.approx(2.5 * 0.1 / 40))
        assert defenses.create_objective("fgsm-at", dataset=dataset).eps == 0.1
        fast = defenses.create_objective("fast-at", dataset=dataset)
        assert (fast.eps, fast.alpha) == (0.1, pytest.approx(0.125))


# --- adversarial training -------------------------------------------------------------------

def test_fgsm_at_loss_equals_goodfellows_formula_exactly():
    model = _tiny()
    x = torch.rand(8, 1, 2, 2)
    y = torch.randint(0, 3, (8,))
    obj = defenses.create_objective("fgsm-at", eps=0.1, clean_weight=0.3)
    out = obj(model, x, y)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y), xr)
    x_adv = (x + 0.1 * g.sign()).clamp(0, 1)
    expected = 0.3 * F.cross_entropy(model(x), y) + 0.7 * F.cross_entropy(model(x_adv), y)
    assert torch.equal(out.loss, expected)
    out.loss.backward()  # the loss is differentiable w.r.t. the weights
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_crafted_adversary_matches_the_attack_engine(trained_mlp, digits):
    """Without random start, the training adversary is advlab's PGD (and FGSM) to the bit."""
    _, test = digits
    x, y = test.x[:64], test.y[:64]
    obj = defenses.create_objective("pgd-at", eps=0.2, alpha=0.05, steps=7, random_start=False)
    ref = attacks.PGD(eps=0.2, alpha=0.05, steps=7, random_start=False)(trained_mlp, x, y)
    assert torch.allclose(obj.perturb(trained_mlp, x, y), ref.adv, atol=1e-7)
    fgsm = defenses.create_objective("fgsm-at", eps=0.15)
    assert torch.allclose(fgsm.perturb(trained_mlp, x, y),
                          attacks.FGSM(eps=0.15)(trained_mlp, x, y).adv, atol=1e-7)


def test_fast_at_perturbation_stays_in_the_ball_and_box_and_is_seeded(trained_mlp, digits):
    _, test = digits
    x, y = test.x[:128], test.y[:128]
    obj = defenses.create_objective("fast-at", eps=0.1)
    torch.manual_seed(5)
    adv = obj.perturb(trained_mlp, x, y)
    again = obj.perturb(trained_mlp, x, y)
    torch.manual_seed(5)
    same = obj.perturb(trained_mlp, x, y)
    assert (adv - x).abs().max() <= 0.1 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() > 0.09  # the step of 1.25 eps reaches the ball's surface
    assert torch.equal(adv, same) and not torch.equal(adv, again)  # new start per batch


def test_unclipped_start_is_seen_by_the_model_but_the_adversary_is_in_the_box():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(x.detach().clone())
            return torch.stack([x.flatten(1).sum(1), -x.flatten(1).sum(1)], dim=1)

    x = torch.zeros(64, 1, 4, 4)  # all pixels at the box's edge, as MNIST's background
    y = torch.zeros(64, dtype=torch.long)
    for clip in (False, True):
        seen.clear()
        obj = defenses.create_objective("fast-at", eps=0.3, clip_start=clip)
        adv = obj.perturb(Spy(), x, y)
        assert (seen[0].min() < 0) == (not clip)  # the gradient is taken outside the box
        assert adv.min() >= 0 and (adv - x).abs().max() <= 0.3 + 1e-6


def test_crafting_restores_train_mode_and_leaves_parameter_gradients_alone():
    model = models.create("fmnist-cnn", dataset="digits")  # has dropout
    model.train()
    model.net[3].eval()  # a partly frozen model stays so
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    obj = defenses.create_objective("pgd-at", eps=0.1, steps=3)
    obj.perturb(model, x, y)
    assert model.training and not model.net[3].training
    assert all(p.grad is None for p in model.parameters())


def test_pgd_at_lowers_the_adversarial_loss(digits):
    train, test = digits
    torch.manual_seed(0)
    model = models.create("mlp", dataset="digits", widths=[32])
    cfg = TrainConfig(epochs=3, batch_size=64, lr=3e-3, device="cpu")
    fit(model, train, cfg, progress=False)
    attack = attacks.PGD(eps=0.1, steps=10, random_start=False)
    x, y = test.x[:200], test.y[:200]

    def adv_loss() -> float:
        adv = attack(model, x, y).adv
        with torch.no_grad():
            return F.cross_entropy(model(adv), y).item()

    before = adv_loss()
    obj = defenses.create_objective("pgd-at", eps=0.1, steps=5)
    result = fit(model, train, TrainConfig(epochs=3, batch_size=64, lr=3e-3, device="cpu",
                                           seed=1), objective=obj, progress=False)
    assert adv_loss() < 0.7 * before
    assert "adv_acc" in result.history[-1]


# --- Deep Defense ---------------------------------------------------------------------------

def _closed_form_ratio(lin: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖Δ‖/‖x‖ of one DeepFool step on a linear model, differentiable in the weights (exact
    when one step crosses the boundary: always for two classes)."""
    w, b = lin.weight, lin.bias
    z = x @ w.T + b
    pred = z.argmax(1)
    rows = torch.arange(len(y))
    diff = (z - z[rows, y].unsqueeze(1)).abs() / (w.unsqueeze(0) - w[y].unsqueeze(1)).norm(dim=2)
    diff = diff.masked_fill(F.one_hot(y, z.shape[1]).bool(), math.inf)
    to_y = (z[rows, y] - z[rows, pred]).abs() / (w[y] - w[pred]).norm(dim=1)
    dist = torch.where(pred == y, diff.min(1).values, to_y)
    return 1.02 * dist / x.norm(dim=1)


def test_deep_defense_regularizer_matches_hand_computation_on_a_linear_model():
    torch.manual_seed(0)
    lin = nn.Linear(6, 2)
    x, y = torch.rand(40, 6), torch.randint(0, 2, (40,))
    reg, df = deep_defense_regularizer(lin, x, y, lam=15.0, c=25.0, d=5.0)
    ratio = _closed_form_ratio(lin, x, y)
    correct = (x @ lin.weight.T + lin.bias).argmax(1) == y
    assert 0 < correct.sum() < 40  # both kinds of terms are present
    expected = 15.0 * torch.where(correct, torch.exp(-25 * ratio), torch.exp(5 * ratio)).mean()
    assert reg.item() == pytest.approx(expected.item(), rel=1e-5)
    assert df.reached.all() and (df.iterations == 1).all()


def test_deepfool_perturbation_is_exact_on_a_multiclass_linear_model():
    torch.manual_seed(1)
    lin = nn.Linear(6, 5)
    x, y = torch.rand(64, 6), torch.randint(0, 5, (64,))
    df = deepfool_perturbation(lin, x, y, steps=5)
    one_step = df.iterations == 1
    assert df.correct.any() and df.reached.all()
    assert (one_step | ~df.correct).all()  # correct examples cross in one step (exact)
    got = df.delta.flatten(1).norm(dim=1) / x.norm(dim=1)
    want = _closed_form_ratio(lin, x, y)
    assert torch.allclose(got[one_step], want[one_step], rtol=1e-5)


def test_deepfool_ratios_are_the_reports_rho2_on_a_linear_model():
    torch.manual_seed(4)
    lin = nn.Linear(6, 2)
    x = torch.rand(30, 6)
    pred = (x @ lin.weight.T + lin.bias).argmax(1)
    got = defenses.deepfool_ratios(lin, x, batch_size=7)  # batches must not matter
    with torch.no_grad():
        want = _closed_form_ratio(lin, x, pred)
    assert torch.allclose(got, want, rtol=1e-5)


def test_deep_defense_gradient_flows_through_deepfool_into_the_weights():
    torch.manual_seed(2)
    lin = nn.Linear(6, 2)
    x, y = torch.rand(40, 6), torch.randint(0, 2, (40,))
    reg, _ = deep_defense_regularizer(lin, x, y)
    grads = torch.autograd.grad(reg, [lin.weight, lin.bias])
    z = x @ lin.weight.T + lin.bias
    correct = z.argmax(1) == y
    rows, other = torch.arange(40), 1 - y  # two classes: one boundary for every example
    w_diff = lin.weight[y] - lin.weight[other]
    ratio = 1.02 * (z[rows, y] - z[rows, other]).abs() / w_diff.norm(dim=1) / x.norm(dim=1)
    closed = 15.0 * torch.where(correct, torch.exp(-25 * ratio), torch.exp(5 * ratio)).mean()
    want = torch.autograd.grad(closed, [lin.weight, lin.bias])
    assert grads[0].abs().sum() > 0  # Δ is a function of the weights, not a constant
    for g, w in zip(grads, want, strict=True):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-6)


def test_deep_defense_steps_lower_the_regularizer(trained_mlp, digits):
    import copy

    train, _ = digits
    model = copy.deepcopy(trained_mlp).train()
    obj = defenses.create_objective("deep-defense")
    x, y = train.x[:100], train.y[:100]
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)
    first = obj(model, x, y)
    for _ in range(15):
        out = obj(model, x, y)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    last = obj(model, x, y)
    assert last.metrics["reg"] < 0.8 * first.metrics["reg"]
    assert last.metrics["rho2_train"] > first.metrics["rho2_train"]


def test_deepfool_finetune_loss_is_the_loss_at_deepfool_examples(trained_mlp, digits):
    _, test = digits
    x, y = test.x[:50], test.y[:50]
    obj = defenses.create_objective("deepfool-finetune", steps=20)
    out = obj(trained_mlp, x, y)
    adv = attacks.DeepFool(steps=20, overshoot=0.02)(trained_mlp, x, y).adv
    assert out.loss.item() == pytest.approx(F.cross_entropy(trained_mlp(adv), y).item(),
                                            rel=1e-6)


def test_deepfool_finetune_refreshed_per_epoch_trains_on_the_epochs_deepfool_set(trained_mlp,
                                                                                digits):
    import copy

    train, _ = digits
    sub = train.subset(torch.arange(200))
    obj = defenses.create_objective("deepfool-finetune", steps=20, refresh="epoch",
                                    batch_size=64)
    model = copy.deepcopy(trained_mlp)
    seen, modes = [], []

    class Spy:
        name = "spy"

        def epoch_inputs(self, m, x, y):
            adv = obj.epoch_inputs(m, x, y)
            seen.append((m.training, adv.clone()))
            return adv

        def __call__(self, m, x, y):
            modes.append(m.training)
            return obj(m, x, y)

    start = copy.deepcopy(model)
    fit(model, sub, TrainConfig(epochs=2, batch_size=50, lr=1e-3, device="cpu"),
        objective=Spy(), progress=False)
    assert len(seen) == 2  # once per epoch, from the weights of that epoch's start
    expected = attacks.DeepFool(steps=20, overshoot=0.02)(start, sub.x, sub.y).adv
    assert torch.allclose(seen[0][1], expected, atol=1e-5)  # batched by 64 vs all at once
    assert not torch.equal(seen[1][1], seen[0][1])
    assert all(modes)  # the batches train in train mode after the hook ran the attack
    out = obj(trained_mlp, expected[:10], sub.y[:10])  # the batch is the perturbed input
    assert out.loss.item() == pytest.approx(
        F.cross_entropy(trained_mlp(expected[:10]), sub.y[:10]).item(), rel=1e-6)
    assert defenses.create_objective("deepfool-finetune").epoch_inputs is None
    with pytest.raises(ValueError, match="refresh: expected one of .batch., .epoch., .once."):
        defenses.create_objective("deepfool-finetune", refresh="step")
    with pytest.raises(ValueError, match="clean_weight=0"):
        defenses.create_objective("deepfool-finetune", refresh="epoch", clean_weight=0.5)


def test_deepfool_finetune_once_trains_on_the_starting_models_deepfool_set(trained_mlp,
                                                                          digits, tmp_path):
    """refresh="once": the training set is perturbed once, by the weights fine-tuning starts
    from; every epoch trains on that set; a resumed run recomputes it from the same starting
    weights (and ends with the weights of an uninterrupted run), and refuses other ones."""
    import copy

    train, _ = digits
    sub = train.subset(torch.arange(200))
    obj = defenses.create_objective("deepfool-finetune", steps=20, refresh="once",
                                    batch_size=64)
    assert obj.epoch_inputs is None and obj.start_inputs is not None
    expected = attacks.DeepFool(steps=20, overshoot=0.02)(trained_mlp, sub.x, sub.y).adv
    assert not torch.equal(expected, sub.x)
    calls, batches = [], []

    class Spy:
        name = "spy"

        def start_inputs(self, m, x, y):
            adv = obj.start_inputs(m, x, y)
            calls.append(adv.clone())
            return adv

        def __call__(self, m, x, y):
            batches.append(x.clone())
            return obj(m, x, y)

    cfg = dict(batch_size=50, lr=1e-3, device="cpu")
    model = copy.deepcopy(trained_mlp)
    fit(model, sub, TrainConfig(epochs=3, **cfg), objective=Spy(), progress=False,
        checkpoint=tmp_path / "full.pt")
    assert len(calls) == 1  # once, not per epoch
    assert torch.allclose(calls[0], expected, atol=1e-5)
    assert len(batches) == 12  # 3 epochs x 4 batches, each made of rows of the one set
    pool = calls[0].flatten(1)
    assert all((b.flatten(1)[:, None] == pool[None]).all(-1).any(1).all() for b in batches)
    assert not torch.equal(next(model.parameters()), next(trained_mlp.parameters()))

    part = copy.deepcopy(trained_mlp)  # killed after epoch 1, then resumed
    fit(part, sub, TrainConfig(epochs=1, **cfg), objective=obj, progress=False,
        checkpoint=tmp_path / "part.pt")
    resumed = copy.deepcopy(trained_mlp)
    fit(resumed, sub, TrainConfig(epochs=3, **cfg), objective=obj, progress=False,
        checkpoint=tmp_path / "part.pt", resume=True)
    for (k, a), b in zip(model.state_dict().items(), resumed.state_dict().values(),
                         strict=True):
        assert torch.equal(a, b), k

    with pytest.raises(ValueError, match="does not hold those weights"):
        fit(copy.deepcopy(part), sub, TrainConfig(epochs=4, **cfg), objective=obj,
            progress=False, checkpoint=tmp_path / "part.pt", resume=True)
    with pytest.raises(ValueError, match="clean_weight=0"):
        defenses.create_objective("deepfool-finetune", refresh="once", clean_weight=0.5)


def test_deepfool_finetune_with_the_reports_deepfool(trained_mlp, digits):
    """deepfool="report": the examples are x + Δ of the report's DeepFool (unclipped, the one
    Deep Defense differentiates through and ρ₂ measures with); misclassified points stay x."""
    _, test = digits
    x, y = test.x[:80], test.y[:80]
    obj = defenses.create_objective("deepfool-finetune", deepfool="report", steps=5,
                                    refresh="epoch", batch_size=32)
    trained_mlp.train()
    adv = obj.epoch_inputs(trained_mlp, x, y)
    assert trained_mlp.training  # the mode is restored after the eval-mode DeepFool
    trained_mlp.eval()
    with torch.no_grad():
        correct = trained_mlp(x).argmax(1) == y
    assert 0 < int(correct.sum()) < len(y)
    ratios = (adv - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    expected = defenses.deepfool_ratios(trained_mlp, x, y, steps=5, overshoot=0.02)
    assert torch.allclose(ratios[correct], expected[correct], rtol=1e-4, atol=1e-6)
    assert torch.equal(adv[~correct], x[~correct])
    with torch.no_grad():  # the report's DeepFool crosses the boundary of most points
        fooled = trained_mlp(adv[correct]).argmax(1) != y[correct]
    assert fooled.float().mean() > 0.9
    with pytest.raises(ValueError, match="deepfool: expected 'clipped' or 'report'"):
        defenses.create_objective("deepfool-finetune", deepfool="unclipped")


# --- Lipschitz ------------------------------------------------------------------------------

@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 1, 1, 1), (2, 1, 1, 1),
                                                            (2, 0, 2, 1), (1, 2, 1, 2)])
def test_conv_operator_norm_is_the_dense_operators_norm(stride, padding, dilation, groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 3, stride=stride, padding=padding, dilation=dilation, groups=groups)
    geometry = ConvGeometry.of(conv, (2, 7, 6))
    dense = conv_operator_matrix(conv.weight.detach().double(), geometry)
    exact = torch.linalg.matrix_norm(dense, ord=2).item()
    assert conv_operator_norm(conv.weight, geometry) == pytest.approx(exact, rel=1e-6)
    # the adjoint used by the power iteration is the dense matrix's transpose
    u = torch.randn(1, *conv(torch.zeros(1, 2, 7, 6)).shape[1:], dtype=torch.float64)
    adj = geometry.adjoint(conv.weight.detach().double(), u).flatten()
    assert torch.allclose(adj, dense.T @ u.flatten(), atol=1e-10)


def test_reshaped_kernel_norm_is_not_the_conv_norm():
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 3, 3, padding=1)
    geometry = ConvGeometry.of(conv, (3, 6, 6))
    reshaped = torch.linalg.matrix_norm(conv.weight.detach().reshape(3, -1), ord=2).item()
    assert abs(conv_operator_norm(conv.weight, geometry) - reshaped) > 0.05 * reshaped


def test_spectral_norms_stay_under_the_bound_while_training(digits):
    train, _ = digits
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(3 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))
    model = models.Classifier(net, (1, 8, 8), 10)
    make_lipschitz(model, bound=0.8)
    obj = defenses.create_objective("lipschitz", bound=0.8)
    fit(model, train, TrainConfig(epochs=3, batch_size=64, lr=1e-2, device="cpu"),
        objective=obj, progress=False)
    model.eval()
    with torch.no_grad():
        for lin in (net[3], net[5]):
            assert torch.linalg.matrix_norm(lin.weight, ord=2) <= 0.8 * 1.03
            plain = lin.parametrizations.weight.original
            assert torch.linalg.matrix_norm(plain, ord=2) > 0.8 * 1.1  # the bound does work
        geometry = ConvGeometry.of(net[0], (1, 8, 8))
        dense = conv_operator_matrix(net[0].weight.double(), geometry)
        assert torch.linalg.matrix_norm(dense, ord=2) <= 0.8 * 1.03


def _empirical_lipschitz(model: nn.Module, shape: tuple[int, ...]) -> float:
    torch.manual_seed(0)
    a = torch.rand(2000, *shape)
    b = (a + 0.05 * torch.randn_like(a)).clamp(0, 1)
    with torch.no_grad():
        num = (model(a) - model(b)).norm(dim=1)
    return (num / (a - b).flatten(1).norm(dim=1)).max().item()


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "10"])
def test_power_iterations_must_be_at_least_one(value):
    message = rf"expected power_iterations to be an integer >= 1, got {re.escape(repr(value))}"
    with pytest.raises(ValueError, match=message):
        defenses.create_objective("lipschitz", power_iterations=value)
    with pytest.raises(ValueError, match=message):
        make_lipschitz(_tiny(), power_iterations=value)
    with pytest.raises(ValueError, match=message):
        defenses.SpectralBound(torch.ones(3, 4), 1.0, power_iterations=value)
    assert defenses.create_objective("lipschitz", power_iterations=1).power_iterations == 1


@pytest.mark.parametrize("lipschitz", [False, True])
def test_lipschitz_bound_is_an_upper_bound(lipschitz):
    torch.manual_seed(0)
    model = models.create("lenet5", dataset="digits")
    if lipschitz:
        make_lipschitz(model, bound=2.0)
    model.eval()
    bound = lipschitz_bound(model)
    assert bound >= _empirical_lipschitz(model, (1, 8, 8))
    if lipschitz:
        assert bound <= 2.0**5 * 1.001  # five bounded layers, 1-Lipschitz ReLU and max pool


def test_lipschitz_bound_rejects_modules_it_cannot_bound():
    model = nn.Sequential(nn.Linear(4, 4), nn.Softplus(), nn.Linear(4, 2))
    assert lipschitz_bound(nn.Sequential(nn.Linear(4, 4), nn.ReLU())) > 0
    with pytest.raises(ValueError, match="cannot bound the Lipschitz constant of Softplus"):
        lipschitz_bound(model)


def test_certified_accuracy_never_exceeds_pgd_l2_accuracy(digits):
    train, test = digits
    torch.manual_seed(0)
    obj = defenses.create_objective("lipschitz", margin_eps=0.3, scale=4.0)
    model = obj.prepare_model(models.create("mlp", dataset="digits", widths=[32]))
    fit(model, train, TrainConfig(epochs=4, batch_size=64, lr=3e-3, device="cpu"),
        objective=obj, progress=False)
    model.eval()
    x, y = test.x[:300], test.y[:300]
    for eps in (0.1, 0.3):
        cert = defenses.certified_accuracy(model, x, y, eps)
        pgd = attacks.PGD(eps=eps, norm="l2", steps=30)(model, x, y)
        robust = ((pgd.pred == y) & (model(x).argmax(1) == y)).float().mean().item()
        assert 0 < cert <= robust
    radius = defenses.certified_radius(model, x, y)
    assert ((radius > 0) == (model(x).argmax(1) == y)).all()


def test_lipschitz_model_saves_and_loads_through_the_normal_weights(tmp_path):
    torch.manual_seed(0)
    model = make_lipschitz(models.create("lenet5", dataset="digits"), bound=1.5)
    model.train()
    model(torch.rand(8, 1, 8, 8))  # moves the singular-vector buffers
    model.eval()
    save_model(tmp_path, model, {"dataset": "digits"})
    loaded = load_model(tmp_path)
    assert loaded.spec == model.spec and loaded.spec["transforms"][0]["name"] == "lipschitz"
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(ValueError, match="applied twice"):
        make_lipschitz(loaded)


# --- SVD ------------------------------------------------------------------------------------

def test_svd_fraction_zero_leaves_the_model_unchanged(trained_mlp):
    out = svd_truncate(trained_mlp, 0.0)
    for (k, a), b in zip(trained_mlp.state_dict().items(), out.state_dict().values(),
                         strict=True):
        assert torch.allclose(a, b, atol=1e-6), k


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.9])
def test_svd_zeroes_the_bottom_fraction_of_singular_values(fraction):
    torch.manual_seed(0)
    model = models.create("lenet5", dataset="digits")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = svd_truncate(model, fraction)
    scaled = svd_truncate(model, fraction, mode="scale")
    for name, m in out.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)):
            continue
        w = m.weight.detach().reshape(m.weight.shape[0], -1).double()
        orig = dict(model.named_modules())[name].weight.detach().reshape(w.shape).double()
        r = min(w.shape)
        k = n_truncated(r, fraction)
        assert k == int(math.floor(fraction * r + 1e-9))
        s, s0 = torch.linalg.svdvals(w), torch.linalg.svdvals(orig)
        assert int((s < 1e-5 * s0[0]).sum()) == k
        assert torch.allclose(s[:r - k], s0[:r - k], rtol=1e-4)
        w2 = dict(scaled.named_modules())[name].weight.detach().reshape(w.shape).double()
        s2 = torch.linalg.svdvals(w2)
        expected = torch.cat([s0[:r - k], s0[r - k:] / 10]).sort(descending=True).values
        assert torch.allclose(s2, expected, rtol=1e-4, atol=1e-6)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_deep_defense_regularizer_stays_finite_when_deepfool_perturbations_explode():
    # tiny weights: DeepFool's perturbations are thousands of times the inputs' norms, so
    # exp(d·ρ) overflows; neither the value nor the gradient may become inf / NaN
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        model[1].weight.mul_(1e-4)
        model[1].bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    x = torch.rand(6, 1, 4, 4)
    y = torch.tensor([0, 0, 0, 1, 1, 2])  # class 0 wins by its bias: 3 correct, 3 wrong
    reg, df = deep_defense_regularizer(model, x, y, lam=1.0)
    assert df.correct.tolist() == [True] * 3 + [False] * 3
    assert torch.isfinite(reg)
    reg.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
