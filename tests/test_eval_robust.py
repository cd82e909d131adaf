"""advlab.eval: robust accuracy with the robust mask, curves, ε_ref, ρ₂, ROC, transfer matrix.

Most cases use a linear two-class model whose answers are analytic: with logits (0, w·x + b)
and label 1, the margin is m = w·x + b; FGSM at ε moves every pixel by ε against sign(w) and
fools the point iff ε ≥ m / ‖w‖₁; the minimal ℓ2 perturbation (DeepFool's, exact here) has
norm m / ‖w‖₂. Pixels stay far from 0 and 1, so nothing is clipped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from advlab.attacks import FGSM, RunOutput, create
from advlab.eval import (
    accuracy_from_norms,
    clean_accuracy,
    eps_ref,
    per_class_roc,
    rho2,
    robust_accuracy,
    robust_accuracy_curve,
    transfer_matrix,
    worst_case,
)

D = 16  # features of the linear cases


class LinearBinary(nn.Module):
    """logits = (0, w·x + b) on flattened x: class 1 iff the margin w·x + b > 0."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor(float(b)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ self.w + self.b  # (B,)
        return torch.stack([torch.zeros_like(z), z], dim=1)


class Landscape(nn.Module):
    """A 1-D model, x (B, 1): logits (d(x), 0) with d = 1 − Σ depth·exp(−((x − c)/width)²).

    Label 0 is predicted while d > 0; each (c, width, depth) digs a valley into d.
    """

    def __init__(self, valleys: list[tuple[float, float, float]]) -> None:
        super().__init__()
        self.valleys = valleys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x[:, 0]
        d = 1 - sum(depth * torch.exp(-((u - c) / w) ** 2) for c, w, depth in self.valleys)
        return torch.stack([d, torch.zeros_like(d)], dim=1)


@dataclass
class Case:
    model: LinearBinary
    x: torch.Tensor  # (N, 1, 4, 4)
    y: torch.Tensor  # (N,)
    margin: torch.Tensor  # (N,) w·x + b, > 0 for every point (all predicted 1)
    correct: torch.Tensor  # (N,) bool
    t_fgsm: torch.Tensor = field(init=False)  # ε at which FGSM fools the point
    t_l2: torch.Tensor = field(init=False)  # minimal ℓ2 perturbation

    def __post_init__(self) -> None:
        w = self.model.w.detach()
        self.t_fgsm = self.margin / w.abs().sum()
        self.t_l2 = self.margin / w.norm()


@pytest.fixture(scope="module")
def case() -> Case:
    g = torch.Generator().manual_seed(0)
    w = torch.where(torch.rand(D, generator=g) < 0.5, -1.0, 1.0) * (0.5 + torch.rand(D,
                                                                                   generator=g))
    x = 0.35 + 0.3 * torch.rand(40, D, generator=g)  # pixels in [0.35, 0.65]
    s = x @ w
    b = -(s.min().item()) + 0.02
    margin = s + b
    y = torch.ones(40, dtype=torch.int64)
    y[::7] = 0  # every 7th point is misclassified (predicted 1, labelled 0)
    model = LinearBinary(w, b)
    return Case(model, x.reshape(40, 1, 4, 4), y, margin, y == 1)


@dataclass(frozen=True, kw_only=True)
class Spy(FGSM):
    """FGSM that records every batch it is called on (not registered)."""

    calls: list = field(default_factory=list, compare=False, repr=False)

    def run(self, model, x, y, target, generator) -> RunOutput:
        self.calls.append(x.detach().clone())
        return super().run(model, x, y, target, generator)


def between(thresholds: torch.Tensor, q: float) -> float:
    """An ε halfway between two consecutive thresholds (no point sits on it), near quantile q."""
    t = torch.sort(thresholds).values
    i = int(q * (len(t) - 1))
    assert t[i + 1] - t[i] > 1e-4
    return ((t[i] + t[i + 1]) / 2).item()


def expected_acc(case: Case, thresholds: torch.Tensor, eps: float) -> float:
    return (case.correct & (thresholds > eps)).float().mean().item()


# --- robust mask --------------------------------------------------------------------------

def test_attack_is_never_called_on_misclassified_points(case):
    spy = Spy(eps=0.02)
    ev = robust_accuracy(case.model, case.x, case.y, spy, batch_size=8)
    seen = torch.cat(spy.calls)
    assert [c.shape[0] for c in spy.calls] == [8, 8, 8, 8, 2]  # 34 correct points, batches of 8
    assert torch.equal(seen, case.x[case.correct])
    assert ev.n_attacked == 34 and torch.equal(ev.attacked, case.correct)
    # misclassified points: non-robust, untouched, zero norms
    wrong = ~case.correct
    assert not ev.robust[wrong].any()
    assert torch.equal(ev.result.adv[wrong], case.x[wrong]) and (ev.result.l2[wrong] == 0).all()


def test_mask_restricts_the_attacked_points(case):
    spy = Spy(eps=0.02)
    mask = torch.arange(40) < 20
    ev = robust_accuracy(case.model, case.x, case.y, spy, batch_size=100, mask=mask)
    assert torch.equal(torch.cat(spy.calls), case.x[case.correct & mask])
    assert not ev.robust[~mask].any()  # outside the mask: non-robust without an attack call


def test_fgsm_robust_accuracy_is_exact_on_the_linear_model(case):
    eps = between(case.t_fgsm, 0.3)
    ev = robust_accuracy(case.model, case.x, case.y, FGSM(eps=eps), batch_size=7)
    fooled = case.correct & (case.t_fgsm <= eps)
    assert ev.clean_accuracy == pytest.approx(34 / 40)
    assert ev.robust_accuracy == pytest.approx(expected_acc(case, case.t_fgsm, eps))
    assert torch.equal(ev.fooled, fooled)
    assert ev.success_rate == pytest.approx(fooled.sum().item() / 34)
    # every fooled point moved by exactly ε on every pixel
    assert ev.linf_mean == pytest.approx(eps, rel=1e-5)
    assert ev.l2_median == pytest.approx(eps * math.sqrt(D), rel=1e-5)


def test_eps_zero_attack_is_not_called_and_keeps_clean_accuracy(case):
    spy = Spy(eps=0.0)
    ev = robust_accuracy(case.model, case.x, case.y, spy)
    assert spy.calls == []
    assert ev.robust_accuracy == pytest.approx(ev.clean_accuracy)


# --- accuracy over ε ----------------------------------------------------------------------

def test_fixed_budget_curve_is_exact_and_attacks_only_points_still_robust(case):
    eps = [between(case.t_fgsm, q) for q in (0.8, 0.2, 0.5)] + [0.0]  # unsorted on purpose
    curve = robust_accuracy_curve(case.model, case.x, case.y, "fgsm", eps, batch_size=16)
    assert curve.eps == sorted(eps) and not curve.minimal and curve.cumulative
    want = [expected_acc(case, case.t_fgsm, e) for e in curve.eps]
    assert curve.accuracy == pytest.approx(want)
    # each ε attacked exactly the points robust at the previous one
    prev = case.correct
    for ev in curve.evaluations:
        assert torch.equal(ev.attacked, prev)
        prev = ev.robust
    plain = robust_accuracy_curve(case.model, case.x, case.y, "fgsm", eps, cumulative=False)
    assert plain.accuracy == pytest.approx(want)  # FGSM is monotone on a linear model
    assert all(ev.n_attacked == 34 for ev in plain.evaluations[1:])


def test_minimal_attack_curve_comes_from_one_run_and_is_exact(case):
    grid = [0.0] + [between(case.t_l2 + 1e-4, q) for q in (0.1, 0.3, 0.5, 0.7, 0.9)] + [1.0]
    curve = robust_accuracy_curve(case.model, case.x, case.y, "deepfool", grid, overshoot=0.0)
    assert curve.minimal and len(curve.evaluations) == 1 and curve.norm == "l2"
    ev = curve.evaluations[0]
    # DeepFool is exact on a linear model (plus its 1e-4 step padding)
    assert torch.allclose(ev.result.l2[case.correct], case.t_l2[case.correct] + 1e-4, atol=1e-5)
    needed = case.t_l2 + 1e-4
    assert curve.accuracy == pytest.approx([expected_acc(case, needed, e) for e in grid])


def test_accuracy_from_norms_by_hand():
    correct = torch.tensor([True, True, True, False])
    fooled = torch.tensor([True, True, False, False])
    norms = torch.tensor([0.1, 0.3, 0.0, 0.0])
    # at 0.1 the first point is fooled (norm exactly eps lies in the ball)
    assert accuracy_from_norms(correct, fooled, norms, [0.0, 0.1, 0.2, 0.3]) == pytest.approx(
        [0.75, 0.5, 0.5, 0.25])


def test_curve_rejects_eps_in_params_and_unknown_names(case):
    with pytest.raises(ValueError, match="eps_list"):
        robust_accuracy_curve(case.model, case.x, case.y, "fgsm", [0.1], eps=0.2)
    with pytest.raises(ValueError, match="unknown attack 'fgsmm'.*fgsm"):
        robust_accuracy_curve(case.model, case.x, case.y, "fgsmm", [0.1])
    with pytest.raises(ValueError, match="unknown parameter 'steps'"):
        robust_accuracy_curve(case.model, case.x, case.y, "fgsm", [0.1], steps=3)
    with pytest.raises(ValueError, match="eps"):
        robust_accuracy_curve(case.model, case.x, case.y, "fgsm", [-0.1])


# --- ε_ref and ρ₂ -------------------------------------------------------------------------

def test_eps_ref_lands_within_tolerance_of_the_known_threshold(case):
    tol = 1e-4
    ref = eps_ref(case.model, case.x, case.y, eps_max=0.1, tol=tol)
    # accuracy <= 1/2 once at most 20 of the 34 correct points survive: the 14th smallest t
    target = torch.sort(case.t_fgsm[case.correct]).values[34 - 20 - 1].item()
    assert target - 1e-6 <= ref.eps <= target + tol
    lo, hi = ref.bracket
    assert hi - lo <= tol and ref.accuracy <= 0.5
    assert dict(ref.history)[lo] > 0.5


def test_eps_ref_finds_the_first_crossing_when_fgsm_accuracy_is_not_monotone():
    # FGSM from x = 0.2 steps right; the valley at 0.3 fools it for eps in (0.0584, 0.1416)
    # only: beyond, accuracy is back to 100%. A plain bisection on [0, 0.8] would test 0.4,
    # see 100% and search above it.
    model = Landscape([(0.3, 0.05, 2.0)])
    x, y = torch.full((5, 1), 0.2), torch.zeros(5, dtype=torch.int64)
    ref = eps_ref(model, x, y, eps_max=0.8, grid=8, tol=1e-4)
    assert ref.eps == pytest.approx(0.1 - 0.05 * math.sqrt(math.log(2)), abs=1e-4)


def test_eps_ref_is_inf_when_accuracy_never_falls(case):
    ref = eps_ref(case.model, case.x, case.y, eps_max=1e-3, grid=2)
    assert math.isinf(ref.eps) and ref.to_dict()["eps"] is None


def test_rho2_conventions_on_the_linear_model(case):
    x_norm = case.x.flatten(1).norm(dim=1)
    ratio = (case.t_l2 + 1e-4) / x_norm  # every point is predicted 1 with margin m
    r = rho2(case.model, case.x, case.y, overshoot=0.0)
    assert r.over == "correct" and r.n_used == 34 and r.n_failed == 0
    assert r.value == pytest.approx(ratio[case.correct].mean().item(), rel=1e-4)
    assert torch.isnan(r.ratios[~case.correct]).all()
    r_all = rho2(case.model, case.x, case.y, over="all", overshoot=0.0)
    assert r_all.n_used == 40  # misclassified points attacked away from their prediction
    assert r_all.value == pytest.approx(ratio.mean().item(), rel=1e-4)
    with pytest.raises(ValueError, match="over"):
        rho2(case.model, case.x, case.y, over="success")


# --- worst case over attacks ---------------------------------------------------------------

def test_worst_case_keeps_the_first_fooling_attack_per_point(case):
    e1, e2 = between(case.t_fgsm, 0.3), between(case.t_fgsm, 0.7)
    first = robust_accuracy(case.model, case.x, case.y, FGSM(eps=e1))
    second = robust_accuracy(case.model, case.x, case.y, FGSM(eps=e2), mask=first.robust)
    both = worst_case([first, second])
    assert torch.equal(both.robust, first.robust & second.robust)
    assert both.robust_accuracy == pytest.approx(expected_acc(case, case.t_fgsm, e2))
    early = first.fooled
    assert early.any() and torch.allclose(both.result.linf[early], torch.tensor(e1), atol=1e-6)
    late = second.fooled
    assert late.any() and torch.allclose(both.result.linf[late], torch.tensor(e2), atol=1e-6)
    assert both.n_fooled == int((early | late).sum()) and both.n_attacked == 34


# --- ROC / AUC -----------------------------------------------------------------------------

def test_roc_auc_by_hand_and_against_sklearn():
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])
    y = torch.tensor([0, 1, 0, 1])
    res = per_class_roc(scores, y, ["a", "b"])
    # class a: positives score 0.9, 0.3; negatives 0.8, 0.1 -> 3 of 4 pairs ranked right
    assert res.auc[0] == pytest.approx(0.75)
    g = torch.Generator().manual_seed(1)
    s = torch.rand(200, 5, generator=g).softmax(1)
    lab = torch.randint(0, 5, (200,), generator=g)
    res = per_class_roc(s, lab)
    for k in range(5):
        assert res.auc[k] == pytest.approx(roc_auc_score((lab == k).numpy(), s[:, k].numpy()))
        assert res.curves[k].fpr[0] == 0 and res.curves[k].tpr[-1] == 1
    assert res.macro_auc == pytest.approx(np.mean(res.auc))


def test_roc_class_without_positives_is_nan_not_invented():
    res = per_class_roc(torch.tensor([[0.6, 0.4, 0.0], [0.2, 0.8, 0.0]]), torch.tensor([0, 1]))
    assert math.isnan(res.auc[2]) and res.curves[2].fpr.size == 0
    assert res.to_dict()["auc"]["2"] is None and res.macro_auc == pytest.approx(1.0)
    with pytest.raises(ValueError, match="labels"):
        per_class_roc(torch.rand(2, 2), torch.tensor([0, 2]))


# --- transfer matrix ------------------------------------------------------------------------

def test_transfer_matrix_diagonal_is_white_box_and_cells_are_exact(case):
    g = torch.Generator().manual_seed(3)
    other = LinearBinary(case.model.w.detach() + 0.3 * torch.randn(D, generator=g),
                         case.model.b.item())
    models = {"a": case.model, "b": other}
    spy = Spy(eps=0.01)
    tm = transfer_matrix(models, case.x, case.y, spy, batch_size=64)
    assert len(spy.calls) == 2  # crafted once per source (one batch each)
    for i, name in enumerate(models):
        white = robust_accuracy(models[name], case.x, case.y, FGSM(eps=0.01))
        assert tm.accuracy[i, i] == pytest.approx(white.robust_accuracy)
    adv_a = robust_accuracy(case.model, case.x, case.y, FGSM(eps=0.01)).result.adv
    with torch.no_grad():
        ok = (other(case.x).argmax(1) == case.y) & (other(adv_a).argmax(1) == case.y)
    assert tm.accuracy[0, 1] == pytest.approx(ok.float().mean().item())
    assert (tm.accuracy <= tm.clean[None, :] + 1e-9).all()
    assert tm.clean[1] == pytest.approx(clean_accuracy(other, case.x, case.y))


# --- input checks ---------------------------------------------------------------------------

def test_bad_inputs_are_value_errors(case):
    with pytest.raises(ValueError, match="same N"):
        robust_accuracy(case.model, case.x, case.y[:-1], FGSM(eps=0.1))
    with pytest.raises(ValueError, match="expected target"):
        robust_accuracy(case.model, case.x, case.y, create("fgsm", eps=0.1, targeted=True))
    with pytest.raises(ValueError, match="untargeted"):
        robust_accuracy(case.model, case.x, case.y, FGSM(eps=0.1), target=case.y)
    with pytest.raises(ValueError, match="target == y"):
        robust_accuracy(case.model, case.x, case.y, create("fgsm", eps=0.1, targeted=True),
                        target=case.y)
    with pytest.raises(ValueError, match="batch_size"):
        robust_accuracy(case.model, case.x, case.y, FGSM(eps=0.1), batch_size=0)
    with pytest.raises(ValueError, match="mask"):
        robust_accuracy(case.model, case.x, case.y, FGSM(eps=0.1), mask=torch.ones(3).bool())



def _ten_classes() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(D, 10)).eval()


X10 = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))  # not the global RNG
Y10 = torch.tensor([0, 1, 2, 3, 4, 9])

EVALUATIONS = {
    "robust_accuracy": lambda m, x, y, **kw: robust_accuracy(m, x, y, FGSM(eps=0.1), **kw),
    "clean_accuracy": lambda m, x, y, **kw: clean_accuracy(m, x, y, **kw),
    "curve": lambda m, x, y, **kw: robust_accuracy_curve(m, x, y, "fgsm", [0.1], **kw),
    "eps_ref": lambda m, x, y, **kw: eps_ref(m, x, y, grid=1, **kw),
    "rho2": lambda m, x, y, **kw: rho2(m, x, y, steps=2, **kw),
    "rho2-all": lambda m, x, y, **kw: rho2(m, x, y, over="all", steps=2, **kw),
}


@pytest.mark.parametrize("evaluate", EVALUATIONS.values(), ids=EVALUATIONS.keys())
@pytest.mark.parametrize("x, y, message", [
    (torch.where(X10 > 0.5, torch.nan, X10), Y10, "expected finite x, got"),
    (torch.where(X10 > 0.5, torch.inf, X10), Y10, "expected finite x, got"),
    (X10 * 255, Y10, r"expected x inside \[0, 1\].*got values in \[.*\]; .*x\.float\(\) / 255"),
    ((X10 * 255).to(torch.uint8), Y10,
     r"expected x to be a floating-point tensor in \[0, 1\], got torch.uint8; .*/ 255"),
    (X10 - 0.5, Y10, r"expected x inside \[0, 1\] \(pixels, before any normalization\)"),
    (X10, Y10.float(), "expected y to be an integer tensor, got dtype torch.float32"),
    (X10, Y10.bool(), "expected y to be an integer tensor, got dtype torch.bool"),
    (X10, torch.tensor([0, 1, -1, 3, 4, 9]), r"expected y >= 0 \(class indices\), got -1"),
    (X10, torch.tensor([0, 1, 10, 3, 4, 9]),
     r"expected y in \[0, 9\] \(the model has 10 logits\), got a value 10"),
], ids=["nan", "inf", "x255", "uint8", "negative-x", "float-y", "bool-y", "y-1", "y10"])
def test_bad_data_is_refused_by_every_evaluation(evaluate, x, y, message):
    with pytest.raises(ValueError, match=message):
        evaluate(_ten_classes(), x, y, batch_size=4)


def test_labels_are_checked_against_given_clean_logits():
    model = _ten_classes()
    with pytest.raises(ValueError, match=r"expected y in \[0, 9\]"):
        robust_accuracy(model, X10, torch.full((6,), 10), FGSM(eps=0.1),
                        clean_logits=model(X10).detach())
    with pytest.raises(ValueError, match=r"expected clean_logits of shape \(6, K\)"):
        robust_accuracy(model, X10, Y10, FGSM(eps=0.1), clean_logits=torch.zeros(5, 10))


def test_valid_data_still_passes_the_checks():
    model = _ten_classes()
    y = model(X10).argmax(1)
    assert clean_accuracy(model, X10, y) == 1.0
    assert clean_accuracy(model, X10, y.int()) == 1.0  # any integer dtype
    assert robust_accuracy(model, X10, y, FGSM(eps=0.0)).robust_accuracy == 1.0


@pytest.mark.parametrize("device, message", [
    ("gpu", "unknown device 'gpu'; valid: auto, cpu, cuda, mps"),
    ("cuda", "device 'cuda' requested but CUDA is not available"),
])
def test_device_names_are_checked(device, message):
    from advlab.eval.robust import model_device

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    model = _ten_classes()
    with pytest.raises(ValueError) as err:
        model_device(model, X10, device)
    assert message in str(err.value)
    for evaluate in EVALUATIONS.values():
        with pytest.raises(ValueError) as err:
            evaluate(model, X10, Y10, device=device)
        assert message in str(err.value)
    assert model_device(model, X10, "cpu") == torch.device("cpu")
    assert model_device(model, X10, torch.device("cpu")) == torch.device("cpu")
    assert model_device(model, X10) == torch.device("cpu")
    assert clean_accuracy(model, X10, Y10, device=torch.device("cpu")) >= 0

def test_evaluation_restores_training_mode_and_is_json_ready(case):
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, 2), nn.Dropout(0.5))
    model.train()
    ev = robust_accuracy(model, case.x, case.y, FGSM(eps=0.05))
    assert model.training
    d = ev.to_dict()
    assert set(d) >= {"clean_accuracy", "robust_accuracy", "success_rate", "l2_mean",
                      "l2_median", "linf_mean", "linf_median", "seconds", "summary"}
    json.dumps(d, allow_nan=False)


def test_transfer_robust_checks_labels_and_examples():
    from advlab.eval.transfer import transfer_robust

    model = torch.nn.Linear(4, 3)
    x, y = torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1])
    assert transfer_robust(model, x, y, x.clone()).shape == (5,)
    with pytest.raises(ValueError, match=r"expected y in \[0, 2\] \(the model has 3 logits\)"):
        transfer_robust(model, x, torch.tensor([0, 1, 3, 0, 1]), x.clone())
    adv = x.clone()
    adv[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite|NaN"):
        transfer_robust(model, x, y, adv)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        transfer_robust(model, x, y, x + 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_torch_device_object_is_checked_like_its_name():
    from advlab.device import resolve_device

    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device(torch.device("cuda"))
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="expected device to be a name"):
        resolve_device(3)


def test_targeted_attacks_report_the_targeted_success_rate():
    from attack_fixtures import trained_digits

    model, x, y = trained_digits()
    x, y = x[:200], y[:200]
    target = (y + 1) % 10
    pgd = create("pgd", eps=0.1, steps=10, targeted=True)
    ev = robust_accuracy(model, x, y, pgd, target=target, batch_size=37)
    direct = pgd(model, x[ev.attacked], y[ev.attacked], target[ev.attacked],
                 index=torch.nonzero(ev.attacked).squeeze(1))
    reached = direct.pred == target[ev.attacked]
    assert ev.n_fooled == int(reached.sum()) and 0 < ev.n_fooled < ev.n_attacked
    assert ev.success_rate == pytest.approx(reached.float().mean().item())
    assert torch.equal(ev.robust, ev.attacked & ~ev.result.success)
    assert torch.equal(ev.result.success[ev.attacked], reached)
