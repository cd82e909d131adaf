"""The standard robustness protocol (``advlab.eval.protocol``), EOT, PGD's margin loss, and
``advlab eval robust`` end to end."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from advlab import data
from advlab.attacks import EOT, PGD, ThreatModel, create
from advlab.cli.main import app
from advlab.eval import robust_accuracy
from advlab.eval.protocol import AutoAttackSettings, protocol_rows, standard_evaluation
from advlab.train.classifier import ClassifierJob, train_classifier
from advlab.train.config import TrainConfig
from advlab.weights import load_model

runner = CliRunner()
FAST_AA = AutoAttackSettings(steps=10, n_target_classes=3, square_queries=200)
FAST_AA_CLI = ["--aa-steps", "10", "--aa-targets", "3", "--square-queries", "200"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two MLPs on digits: the model and an independently trained surrogate."""
    root = tmp_path_factory.mktemp("protocol")
    out = {}
    for name, seed, epochs in (("model", 0, 4), ("surrogate", 1, 2)):
        job = ClassifierJob(dataset="digits", model="mlp",
                            train=TrainConfig(epochs=epochs, lr=5e-3, batch_size=64, seed=seed,
                                              device="cpu"))
        train_classifier(job, root / name, progress=False)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def points():
    ds = data.subset(data.load("digits", "test"), 120, seed=0)
    return ds.x, ds.y


def test_worst_case_is_below_every_attack_and_records_everything(runs, points):
    x, y = points
    model, sur = load_model(runs["model"]), load_model(runs["surrogate"])
    r = standard_evaluation(model, x, y, threat=ThreatModel("linf", 0.1), surrogate=sur,
                            steps=10, restarts=2, n_checks=40, autoattack=FAST_AA)
    assert list(r.attacks) == ["fgsm", "pgd", "pgd-margin", "apgd-ce", "apgd-t", "fab-t",
                               "deepfool", "square"]
    assert list(r.step_robust) == [*r.attacks, "transfer"]
    for name, ev in r.attacks.items():
        if ev.attack["attack"] not in ("fab-t", "deepfool"):  # minimal: fooled at any size
            assert r.robust_accuracy <= ev.robust_accuracy + 1e-9
        assert r.robust_accuracy <= r.step_robust[name].float().mean().item() + 1e-9
        assert r.masked[name] == (name not in ("fgsm", "pgd", "deepfool"))
    after = [acc for _, acc in r.cumulative()]
    assert after == sorted(after, reverse=True) and after[-1] == r.robust_accuracy
    assert r.robust_accuracy <= r.minimal_at_eps() + 1e-9
    assert r.robust_accuracy <= r.transfer_accuracy + 1e-9
    assert r.robust_accuracy <= r.clean_accuracy
    assert 0.1 in r.curve.eps and r.curve.accuracy == sorted(r.curve.accuracy, reverse=True)
    assert r.rho2.value > 0 and r.eps_ref.eps > 0
    assert {c.name for c in r.checks} >= {"gradients", "unbounded", "more-steps", "transfer",
                                          "black-box", "transfer-points"}
    d = json.loads(json.dumps(r.to_dict()))  # JSON-ready
    assert d["robust_accuracy"] == pytest.approx(r.robust_accuracy)
    assert d["minimal"]["accuracy_at_eps"] == pytest.approx(r.minimal_at_eps())
    labels = [label for label, _, _ in protocol_rows(r)]
    assert any("PGD-10 × 2" in label for label in labels)
    assert any("transfer" in label for label in labels)
    assert any("APGD-T (3 targets)" in label for label in labels)
    text = r.report()
    assert "[" not in text and "worst case over all attacks" in text and "black-box" in text


def test_worst_case_equals_the_per_point_and_of_the_attacks(runs, points):
    x, y = points
    model = load_model(runs["model"])
    r = standard_evaluation(model, x, y, threat=ThreatModel("l2", 0.5), steps=5, restarts=1,
                            minimal="cw", with_rho2=False, n_checks=20, autoattack=FAST_AA)
    assert "fgsm" not in r.attacks and r.eps_ref is None and r.rho2 is None
    ev = r.curve.evaluations[0]
    expected = r.attacks["pgd"].robust & r.attacks["pgd-margin"].robust
    for name in ("apgd-ce", "apgd-t", "square"):
        expected &= r.attacks[name].robust | ~r.attacks[name].attacked
    fab = r.attacks["fab-t"]
    expected &= ~(fab.fooled & (fab.result.l2 <= 0.5 * (1 + 1e-6)))
    expected &= ~(ev.fooled & (ev.result.l2 <= 0.5 * (1 + 1e-6)))
    assert torch.equal(r.worst_robust, expected)


@pytest.mark.parametrize("kwargs, message", [
    ({"threat": ThreatModel("linf", 0.0)}, "eps > 0"),
    ({"threat": ThreatModel("linf", 0.1), "minimal": "fgsm"}, "expected minimal in"),
    ({"threat": ThreatModel("linf", 0.1), "minimal": "cw"}, "CW is an l2 attack"),
    ({"threat": ThreatModel("linf", 0.1), "restarts": 0}, "restarts to be an integer >= 1"),
    ({"threat": ThreatModel("linf", 0.1), "eot": 1.5}, "eot to be an integer >= 1"),
])
def test_bad_settings(runs, points, kwargs, message):
    x, y = points
    with pytest.raises(ValueError, match=message):
        standard_evaluation(load_model(runs["model"]), x, y, **kwargs)


def test_margin_loss_moves_where_the_cross_entropy_gradient_underflows():
    # a linear model so confident that softmax(z) - onehot(y) is exactly 0 in float32
    torch.manual_seed(0)
    lin = nn.Linear(16, 3)
    x = torch.rand(32, 16)
    y = lin(x).argmax(1)
    model = nn.Sequential(lin, nn.Flatten()).eval()
    scaled = nn.Sequential(model, _Scale(1e4)).eval()
    xr = x.clone().requires_grad_(True)
    ce = nn.functional.cross_entropy(scaled(xr), y, reduction="sum")
    (g,) = torch.autograd.grad(ce, xr)
    stuck = g.flatten(1).abs().amax(1) == 0
    assert stuck.sum() >= 10  # the trap is real for these points
    eps = 1.0  # the whole box: every point can be moved to another class
    ce_res = PGD(eps=eps, steps=20, random_start=False)(scaled, x, y)
    mg_res = PGD(eps=eps, steps=20, random_start=False, loss="margin")(scaled, x, y)
    assert not ce_res.success[stuck].any()
    assert mg_res.success[stuck].all()
    with pytest.raises(ValueError, match="loss in 'ce', 'margin'"):
        PGD(loss="hinge")


class _Scale(nn.Module):
    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = s

    def forward(self, z):
        return z * self.s


class _Noisy(nn.Module):
    """A randomized model: logits of a linear map plus fresh noise at every call."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 3)

    def forward(self, x):
        z = self.lin(x.flatten(1))
        return z + 5 * torch.randn_like(z)


def test_eot_averages_passes_and_calms_a_randomized_model():
    torch.manual_seed(0)
    net = _Noisy().eval()
    x = torch.rand(8, 1, 4, 4)
    with torch.no_grad():
        single = net(x) - net(x)
        averaged = EOT(net, samples=400)(x) - EOT(net, samples=400)(x)
    assert single.abs().mean() > 4 * averaged.abs().mean()
    lin_only = EOT(nn.Sequential(nn.Flatten(), net.lin), samples=3)
    with torch.no_grad():
        assert torch.allclose(lin_only(x), net.lin(x.flatten(1)), atol=1e-6)
    assert torch.allclose(EOT(nn.Sequential(nn.Flatten(), net.lin), 3, batched=False)(x),
                          lin_only(x), atol=1e-6)
    with pytest.raises(ValueError, match="samples to be an integer >= 1"):
        EOT(net, samples=0)
    # the protocol's checks flag the randomized model; with EOT the attacks see its mean
    y = torch.zeros(8, dtype=torch.long)
    r = standard_evaluation(net, x, y, threat=ThreatModel("linf", 0.1), steps=3, restarts=1,
                            minimal=None, with_rho2=False, with_eps_ref=False, n_checks=8)
    assert not r.reliable and "deterministic" in [c.name for c in r.checks if not c.passed]
    r = standard_evaluation(net, x, y, threat=ThreatModel("linf", 0.1), steps=3, restarts=1,
                            minimal=None, with_rho2=False, with_eps_ref=False, n_checks=8,
                            eot=4)
    assert r.eot == 4 and r.to_dict()["eot"] == 4


def test_eot_on_a_deterministic_model_is_pointed_out(caplog):
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(8, 1, 4, 4), torch.zeros(8, dtype=torch.long)
    kw = dict(threat=ThreatModel("linf", 0.1), steps=2, restarts=1, minimal=None,
              with_rho2=False, with_eps_ref=False, n_checks=8)
    with caplog.at_level("WARNING", logger="advlab"):
        standard_evaluation(net, x, y, **kw)
        assert "deterministic model" not in caplog.text
        standard_evaluation(net, x, y, eot=3, **kw)
    assert "eot=3 on a deterministic model" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="advlab"):
        standard_evaluation(_Noisy().eval(), x, y, eot=3, **kw)
    assert "deterministic model" not in caplog.text


def test_robust_accuracy_of_pgd_margin_with_mask_is_cumulative(runs, points):
    x, y = points
    model = load_model(runs["model"])
    ce = robust_accuracy(model, x, y, create("pgd", eps=0.1, steps=10, early_stop=True))
    mg = robust_accuracy(model, x, y, create("pgd", eps=0.1, steps=10, early_stop=True,
                                             loss="margin"), mask=ce.robust)
    assert mg.robust_accuracy <= ce.robust_accuracy
    assert not (mg.robust & ~ce.robust).any()


def test_cli_eval_robust(runs, tmp_path):
    out = tmp_path / "rob"
    res = runner.invoke(app, ["eval", "robust", str(runs["model"]), "--eps", "0.1", "--steps",
                              "5", "--restarts", "2", "--n", "60", "--n-checks", "30",
                              "--surrogate", str(runs["surrogate"]), "--no-progress",
                              "--device", "cpu", "--out", str(out), "--save-adv",
                              *FAST_AA_CLI])
    assert res.exit_code == 0, res.output
    for text in ("clean accuracy", "FGSM", "PGD-5 × 2", "margin", "DeepFool", "ρ₂", "ε_ref",
                 "APGD-CE", "APGD-T", "FAB-T", "Square", "transfer", "worst case",
                 "soundness checks", "results in"):
        assert text in res.output, text
    m = json.loads((out / "metrics.json").read_text())
    assert m["threat"] == {"norm": "linf", "eps": 0.1} and m["n"] == 60
    assert m["suite"] == "standard"
    assert m["robust_accuracy"] <= m["attacks"]["pgd"]["robust_accuracy"]
    assert m["robust_accuracy"] == m["robust_accuracy_after"]["transfer"]
    from advlab.io import load_state

    pts = load_state(out / "points.safetensors")
    assert pts["kind"] == "robust-points" and pts["x"].shape[0] == 60
    assert pts["robust"].float().mean().item() == pytest.approx(m["robust_accuracy"])
    assert pts["steps"] == list(m["robust_accuracy_after"])
    broken = pts["first_break"] >= 0
    assert ((pts["pred"] != pts["y"]) | ~broken).all()  # a broken point's adv is misclassified
    assert (pts["linf"] <= 0.1 + 1e-6).all()
    assert m["reliable"] == all(c["passed"] for c in m["checks"])
    assert (out / "figures" / "accuracy_vs_eps.png").is_file()
    assert "advlab.eval" in (out / "log.txt").read_text()  # the protocol's log records
    bad = runner.invoke(app, ["eval", "robust", str(runs["model"]), "--eps", "0.1",
                              "--minimal", "fgsm", "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "--minimal deepfool, cw or none" in bad.output
    bad = runner.invoke(app, ["eval", "robust", str(runs["model"]), "--eps", "-1",
                              "--out", str(tmp_path / "bad2")])
    assert bad.exit_code != 0 and "eps" in bad.output


def test_autoattack_and_quick_suites_run_only_autoattacks_attacks(runs, points):
    x, y = points
    model = load_model(runs["model"])
    aa = standard_evaluation(model, x, y, threat=ThreatModel("linf", 0.1), suite="autoattack",
                             autoattack=FAST_AA)
    assert list(aa.attacks) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert all(aa.masked.values()) and [c.name for c in aa.checks] == ["black-box"]
    assert aa.curve is None and aa.rho2 is None and aa.eps_ref is None
    pgd = robust_accuracy(model, x, y, create("pgd", eps=0.1, steps=20, restarts=2))
    assert aa.robust_accuracy <= pgd.robust_accuracy + 1 / len(y)
    quick = standard_evaluation(model, x, y, threat=ThreatModel("linf", 0.1), suite="quick",
                                autoattack=FAST_AA)
    assert list(quick.attacks) == ["apgd-ce", "apgd-t"] and quick.checks == []
    assert quick.attacks["apgd-t"].attack["n_target_classes"] == 3
    assert aa.robust_accuracy <= quick.robust_accuracy
    with pytest.raises(ValueError, match="expected suite in"):
        standard_evaluation(model, x, y, threat=ThreatModel("linf", 0.1), suite="full")


class _Quantized(nn.Module):
    """A model whose input gradient is zero almost everywhere (rounded inputs): gradient
    masking that white-box attacks cannot see through, but a score-based attack can."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 4) / 4)


def test_square_breaking_what_gradients_could_not_is_flagged_as_masking(runs, points):
    x, y = points
    model = _Quantized(load_model(runs["model"])).eval()
    r = standard_evaluation(model, x, y, threat=ThreatModel("linf", 0.2), suite="autoattack",
                            autoattack=AutoAttackSettings(steps=5, n_target_classes=2,
                                                          square_queries=300))
    check = next(c for c in r.checks if c.name == "black-box")
    assert not check.passed and not r.reliable and "gradient" in check.message
    assert check.values["drop"] > 0.005
    assert "UNRELIABLE" in r.report()


def test_black_box_and_transfer_point_checks_on_masks():
    from advlab.eval.checks import check_black_box, check_transfer_points

    white = torch.tensor([True] * 200 + [False] * 100)
    after = white.clone()
    assert check_black_box(white, after).passed
    after[0] = False  # 1 of 300 points: 0.33% <= 0.5%
    assert check_black_box(white, after).passed
    after[1] = False  # 0.67%
    assert not check_black_box(white, after).passed
    assert check_transfer_points(white, white | True).passed
    beaten = white.clone()
    beaten[5] = False
    res = check_transfer_points(white, beaten)
    assert not res.passed and res.values["points"] == 1
    with pytest.raises(ValueError, match="bool tensors"):
        check_black_box(white, after[:-1])
