"""advlab.eval API: bad arguments are ValueErrors naming the argument, what is valid and the
value received; edge cases (‖x‖ = 0, a tolerance below float spacing) give honest results."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import advlab.eval.robust as robust_module
from advlab import attacks
from advlab.eval import (
    accuracy_from_norms,
    eps_ref,
    per_class_roc,
    perturbation_needed,
    transfer_matrix,
)

G = torch.Generator().manual_seed(0)  # not the global RNG
X = torch.rand(12, 1, 4, 4, generator=G) * 0.8 + 0.1
Y = torch.randint(0, 3, (12,), generator=G)


def _model(scale: float = 1.0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        model[1].weight.mul_(scale)
    return model.eval()


# --- per_class_roc ------------------------------------------------------------------------

SCORES = torch.rand(12, 3, generator=torch.Generator().manual_seed(1)).softmax(1)


@pytest.mark.parametrize("labels, dtype", [
    (Y.float() + 0.7, "torch.float32"),
    (Y.double(), "torch.float64"),
    (Y.bool(), "torch.bool"),
    (Y.numpy().astype(np.float32) + 0.7, "float32"),
    (Y.tolist()[:-1] + [1.5], "float64"),
], ids=["float+0.7", "double", "bool", "numpy-float", "list-float"])
def test_roc_refuses_labels_that_are_not_integers(labels, dtype):
    with pytest.raises(ValueError, match=rf"expected y to be integer class indices.*got dtype "
                                         rf"{dtype}"):
        per_class_roc(SCORES, labels)


def test_roc_accepts_any_integer_labels_and_gives_the_same_answer():
    want = per_class_roc(SCORES, Y).auc
    for labels in (Y.int(), Y.numpy(), Y.numpy().astype(np.uint8), Y.tolist()):
        assert per_class_roc(SCORES, labels).auc == pytest.approx(want)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_roc_refuses_non_finite_scores(bad):
    s = SCORES.clone()
    s[3, 1] = s[5, 0] = bad
    with pytest.raises(ValueError, match=r"expected finite scores, got 2 NaN or inf values"):
        per_class_roc(s, Y)


def test_roc_checks_shapes_and_class_names():
    with pytest.raises(ValueError, match=r"expected scores \(N, K\) and y \(N,\), got scores "
                                         r"\(12,\) and y \(12,\)"):
        per_class_roc(SCORES[:, 0], Y)
    with pytest.raises(ValueError, match=r"got scores \(12, 3\) and y \(5,\)"):
        per_class_roc(SCORES, Y[:5])
    with pytest.raises(ValueError, match=r"expected classes to hold 3 names \(one per score "
                                         r"column\), got 2"):
        per_class_roc(SCORES, Y, ["a", "b"])
    with pytest.raises(ValueError, match=r"expected classes to be a sequence of 3 names, got "
                                         r"the str 'abc'"):
        per_class_roc(SCORES, Y, "abc")
    with pytest.raises(ValueError, match=r"expected scores to be numbers, got dtype <U1"):
        per_class_roc([["a"] * 3] * 12, Y)
    with pytest.raises(ValueError, match=r"expected y \(class labels\) in \[0, 2\], got values "
                                         r"in \[0, 5\]"):
        per_class_roc(SCORES, torch.where(Y == 2, 5, Y))
    assert per_class_roc(SCORES, Y, ("a", "b", "c")).classes == ["a", "b", "c"]


# --- perturbation_needed ------------------------------------------------------------------

def test_needed_leaves_points_with_zero_norm_out_of_the_ratios():
    x = X.clone()
    x[[2, 7]] = 0.0
    y = Y
    target = (y + 1) % 3
    model = _model(8.0)
    res = perturbation_needed(model, x, y, target, lams=(0.1, 0.0), steps=50, lr=0.05)
    zero = torch.zeros(12, dtype=torch.bool)
    zero[[2, 7]] = True
    assert torch.isnan(res.ratio[zero]).all() and torch.isfinite(res.ratio[~zero]).all()
    assert res.n == 12 and res.n_zero_norm == 2
    assert res.mean_all == pytest.approx(res.ratio[~zero].mean().item())
    assert res.mean_all < 100  # no 1e9 ratio from dividing by a clamped ‖x‖ = 0
    reached = res.reached & ~zero
    assert res.mean_reached == pytest.approx(res.ratio[reached].mean().item())
    first = (res.lam == 0.1) & ~zero
    assert res.mean_first == pytest.approx(res.ratio[first].mean().item())
    # the attack still ran on them: reached fractions stay over all n points
    assert res.reached_fraction == pytest.approx(res.reached.float().mean().item())
    d = res.to_dict()
    assert d["n"] == 12 and d["n_zero_norm"] == 2
    json.dumps(d)
    only_zero = perturbation_needed(model, torch.zeros(3, 1, 4, 4), y[:3], target[:3],
                                    lams=(0.1,), steps=5)
    assert only_zero.n_zero_norm == 3
    assert math.isnan(only_zero.mean_all) and math.isnan(only_zero.mean_reached)
    assert math.isnan(only_zero.mean_first)


def test_needed_takes_a_single_number_as_one_lambda():
    model = _model(8.0)
    target = (Y + 1) % 3
    one = perturbation_needed(model, X, Y, target, lams=0.1, steps=20)
    seq = perturbation_needed(model, X, Y, target, lams=(0.1,), steps=20)
    assert one.lams == (0.1,) and torch.equal(one.ratio, seq.ratio)
    assert perturbation_needed(model, X, Y, target, lams=0, steps=5).lams == (0.0,)
    assert perturbation_needed(model, X, Y, target, lams=np.float64(0.1), steps=5).lams == (0.1,)


@pytest.mark.parametrize("lams, shown", [
    ("0.1", "'0.1'"), (b"0.1", "b'0.1'"), (("a",), r"\('a',\)"), (True, "True"),
    ((0.1, True), r"\(0.1, True\)"), ((0.1, float("nan")), r"\(0.1, nan\)"),
    ((float("inf"),), r"\(inf,\)"), (None, "None"), ((), r"\(\)"), ((0.1, -1.0), r"\(0.1, -1.0\)"),
], ids=["str", "bytes", "str-entry", "bool", "bool-entry", "nan", "inf", "None", "empty",
        "negative"])
def test_needed_refuses_bad_lams_naming_them(lams, shown):
    target = (Y + 1) % 3
    with pytest.raises(ValueError, match=rf"expected lams to be a finite number >= 0 or a "
                                         rf"non-empty sequence of such numbers, got {shown}"):
        perturbation_needed(_model(), X, Y, target, lams=lams, steps=2)


# --- eps_ref ------------------------------------------------------------------------------

@pytest.fixture
def counted(monkeypatch):
    """Counts the FGSM evaluations of eps_ref; fails the test instead of running forever."""
    calls = [0]
    inner = robust_module.robust_accuracy

    def counting(*args, **kwargs):
        calls[0] += 1
        if calls[0] > 2000:
            raise AssertionError("eps_ref still bisecting after 2000 FGSM evaluations")
        return inner(*args, **kwargs)

    monkeypatch.setattr(robust_module, "robust_accuracy", counting)
    return calls


@pytest.mark.parametrize("tol", [1e-20, 1e-300, 5e-324])
def test_eps_ref_ends_when_tol_is_below_the_float_spacing(tol, counted):
    model = _model(4.0)
    y = model(X).argmax(1)  # all correct at ε = 0
    ref = eps_ref(model, X, y, tol=tol)
    lo, hi = ref.bracket
    assert 0 < lo < hi and math.nextafter(lo, math.inf) == hi  # adjacent floats: nothing left
    assert ref.eps == hi and ref.accuracy <= 0.5 and dict(ref.history)[lo] > 0.5
    assert counted[0] == len(ref.history) < 200


def _eps_ref_before(model, x, y, level=0.5, eps_max=1.0, tol=1e-3, grid=8):
    """The (ε, accuracy) history of eps_ref as it was before the float-spacing stop."""
    history = []

    def acc(e):
        a = robust_module.robust_accuracy(model, x, y, attacks.create("fgsm", eps=e))
        history.append((e, a.robust_accuracy))
        return a.robust_accuracy

    lo, hi = 0.0, None
    if acc(0.0) <= level:
        return history
    for i in range(1, grid + 1):
        e = eps_max * i / grid
        if acc(e) <= level:
            hi = e
            break
        lo = e
    if hi is None:
        return history
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if acc(mid) <= level:
            hi = mid
        else:
            lo = mid
    return history


@pytest.mark.parametrize("kwargs", [dict(), dict(tol=1e-4), dict(eps_max=0.4, tol=2e-3),
                                    dict(grid=3, tol=1e-5), dict(level=0.8, grid=1)])
def test_eps_ref_results_for_ordinary_settings_are_unchanged(kwargs):
    model = _model(4.0)
    y = model(X).argmax(1)
    ref = eps_ref(model, X, y, **kwargs)
    assert ref.history == _eps_ref_before(model, X, y, **kwargs)
    assert ref.eps == ref.bracket[1] and ref.bracket[1] - ref.bracket[0] <= kwargs.get(
        "tol", 1e-3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(eps_max="1"), r"expected eps_max to be a finite number > 0, got '1'"),
    (dict(eps_max=float("inf")), r"expected eps_max to be a finite number > 0, got inf"),
    (dict(eps_max=0.0), r"expected eps_max to be a finite number > 0, got 0.0"),
    (dict(eps_max=True), r"expected eps_max to be a finite number > 0, got True"),
    (dict(tol="1e-3"), r"expected tol to be a number > 0, got '1e-3'"),
    (dict(tol=float("nan")), r"expected tol to be a number > 0, got nan"),
    (dict(tol=0), r"expected tol to be a number > 0, got 0"),
    (dict(grid=10**9), r"expected grid to be an integer in \[1, 10000\], got 1000000000"),
    (dict(grid=10_001), r"expected grid to be an integer in \[1, 10000\], got 10001"),
    (dict(grid=0), r"expected grid to be an integer in \[1, 10000\], got 0"),
    (dict(grid=2.5), r"expected grid to be an integer in \[1, 10000\], got 2.5"),
    (dict(grid=float("nan")), r"expected grid to be an integer in \[1, 10000\], got nan"),
    (dict(grid="8"), r"expected grid to be an integer in \[1, 10000\], got '8'"),
    (dict(grid=None), r"expected grid to be an integer in \[1, 10000\], got None"),
    (dict(level="0.5"), r"expected level to be a number in \[0, 1\), got '0.5'"),
    (dict(level=1.0), r"expected level to be a number in \[0, 1\), got 1.0"),
], ids=lambda v: str(v) if not isinstance(v, dict) else "-".join(f"{k}={v[k]!r}" for k in v))
def test_eps_ref_refuses_bad_settings_before_any_evaluation(kwargs, message, counted):
    with pytest.raises(ValueError, match=message):
        eps_ref(_model(), X, Y, **kwargs)
    assert counted[0] == 0


class _Started(Exception):
    pass


def test_eps_ref_grid_at_the_bound_and_integral_floats_are_accepted(monkeypatch):
    model = _model(4.0)
    y = model(X).argmax(1)
    assert eps_ref(model, X, y, grid=2.0).eps == eps_ref(model, X, y, grid=2).eps

    def started(*args, **kwargs):
        raise _Started

    monkeypatch.setattr(robust_module, "robust_accuracy", started)
    with pytest.raises(_Started):  # past the checks: the first FGSM evaluation was reached
        eps_ref(model, X, y, grid=10_000)


# --- accuracy_from_norms ------------------------------------------------------------------

def test_accuracy_from_norms_refuses_mismatched_shapes_naming_them():
    t, f = torch.ones(3, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"expected clean_correct, fooled and norms of the same "
                                         r"shape \(N,\), got \(3,\), \(4,\) and \(3,\)"):
        accuracy_from_norms(t, f, torch.ones(3), [0.1])
    with pytest.raises(ValueError, match=r"got \(3,\), \(3,\) and \(3, 1\)"):
        accuracy_from_norms(t, t, torch.ones(3, 1), [0.1])
    with pytest.raises(ValueError, match=r"got \(1, 3\), \(1, 3\) and \(1, 3\)"):
        accuracy_from_norms(t[None], t[None], torch.ones(1, 3), [0.1])
    with pytest.raises(ValueError, match=r"expected fooled to be a bool tensor, got "
                                         r"torch.uint8"):
        accuracy_from_norms(t, t.to(torch.uint8), torch.ones(3), [0.1])
    with pytest.raises(ValueError, match=r"expected clean_correct to be a bool tensor, got list"):
        accuracy_from_norms([True] * 3, t, torch.ones(3), [0.1])
    with pytest.raises(ValueError, match=r"expected norms to be a float tensor, got list"):
        accuracy_from_norms(t, t, [0.1] * 3, [0.1])
    assert accuracy_from_norms(t, t, torch.tensor([0.1, 0.2, 0.3]), [0.15]) == pytest.approx(
        [2 / 3])


# --- transfer_matrix ----------------------------------------------------------------------

PGD = attacks.create("pgd", eps=0.05, steps=2)


@pytest.mark.parametrize("models, message", [
    (lambda m: [m, "clf"], r"expected models\[1\] to be a model \(an nn.Module or a callable "
                           r"x -> logits\), got str 'clf'"),
    (lambda m: {"a": m, "b": None}, r"expected models\['b'\] to be a model .*got NoneType"),
    (lambda m: m, r"expected models to be a mapping name -> model or a sequence of models, got "
                  r"a single Sequential; pass \[model\] or \{'name': model\}"),
    (lambda m: (lambda x: m(x)), r"got a single function"),
    (lambda m: "clf", r"expected models to be a mapping .*, got str 'clf'"),
    (lambda m: 3, r"expected models to be a mapping .*, got int 3"),
], ids=["str-entry", "none-value", "single-module", "single-function", "str", "int"])
def test_transfer_matrix_refuses_what_is_not_a_collection_of_models(models, message):
    with pytest.raises(ValueError, match=message):
        transfer_matrix(models(_model()), X, Y, PGD)


@pytest.mark.parametrize("attack, message", [
    ("pgd", r"expected attack to be an advlab.attacks.Attack instance, got str 'pgd'; build one "
            r"with advlab.attacks.create\('pgd', \.\.\.\)"),
    (None, r"expected attack to be an advlab.attacks.Attack instance, got NoneType None; build "
           r"one with advlab.attacks.create\('pgd', \.\.\.\)"),
    (attacks.PGD, r"got the class PGD; build one with advlab.attacks.create"),
], ids=["str", "None", "class"])
def test_transfer_matrix_refuses_what_is_not_an_attack(attack, message):
    with pytest.raises(ValueError, match=message):
        transfer_matrix([_model()], X, Y, attack)


def test_transfer_matrix_still_takes_sequences_mappings_and_iterables():
    a, b = _model(seed=0), _model(seed=1)
    by_list = transfer_matrix([a, b], X, Y, PGD)
    assert by_list.names == ["0", "1"]
    assert transfer_matrix({"a": a, "b": b}, X, Y, PGD).accuracy == pytest.approx(
        by_list.accuracy)
    assert transfer_matrix((m for m in (a, b)), X, Y, PGD).names == ["0", "1"]
    assert transfer_matrix(nn.ModuleList([a, b]), X, Y, PGD).names == ["0", "1"]
    assert transfer_matrix(nn.ModuleDict({"a": a, "b": b}), X, Y, PGD).names == ["a", "b"]
