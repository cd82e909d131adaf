"""`advlab eval accuracy`'s optional measures (the Deep Defense report's ρ₂, ε_ref, FGSM at given
ε, macro AUC) and `advlab attack`'s ρ₂ for minimal attacks: the numbers equal the library's."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from advlab import data, weights
from advlab.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clf") / "run"
    res = runner.invoke(app, ["train", "classifier", "--model", "lrl", "--epochs", "3",
                              "--device", "cpu", "--no-progress", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_eval_accuracy_measures_match_the_library(run, tmp_path):
    from advlab.defenses import deepfool_ratios
    from advlab.eval import eps_ref, per_class_roc, robust_accuracy_curve, softmax_scores

    out = tmp_path / "e"
    res = runner.invoke(app, ["eval", str(run), "--n", "120", "--rho2-report", "--eps-ref",
                              "--fgsm-eps", "0.02,0.05", "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    model = weights.load_model(run, "cpu").eval()
    test = data.subset(data.load("digits", "test"), 120, seed=0)
    assert m["n_test"] == 120
    assert m["rho2_report"] == pytest.approx(
        deepfool_ratios(model, test.x, steps=5, overshoot=0.02).mean().item(), rel=1e-5)
    assert m["eps_ref"]["eps"] == pytest.approx(eps_ref(model, test.x, test.y).eps)
    curve = robust_accuracy_curve(model, test.x, test.y, "fgsm", [0.02, 0.05],
                                  cumulative=False)
    assert m["fgsm"] == {"eps": [0.02, 0.05], "accuracy": pytest.approx(curve.accuracy)}
    roc = per_class_roc(softmax_scores(model, test.x), test.y, test.classes)
    assert m["auc"]["macro_auc"] == pytest.approx(roc.macro_auc)
    # by default only the accuracy measures (and AUC) are taken
    plain = tmp_path / "p"
    assert runner.invoke(app, ["eval", str(run), "--out", str(plain)]).exit_code == 0
    keys = json.loads((plain / "metrics.json").read_text())
    assert "rho2_report" not in keys and "eps_ref" not in keys and "auc" in keys


@pytest.mark.parametrize("args, message", [
    (["--fgsm-eps", "8"], "expected --fgsm-eps <= 1"),
    (["--fgsm-eps", "-0.1"], "--fgsm-eps"),
    (["--n", "0"], "--n"),
])
def test_eval_accuracy_bad_measures_are_refused_before_any_run(run, tmp_path, args, message):
    out = tmp_path / "x"
    res = runner.invoke(app, ["eval", str(run), *args, "--out", str(out)])
    assert res.exit_code == 2 and message in " ".join(res.output.split()), res.output
    assert not out.exists()


def test_attack_reports_rho2_for_a_minimal_attack(run, tmp_path):
    out = tmp_path / "a"
    res = runner.invoke(app, ["attack", str(run), "-a", "deepfool", "--n", "80", "--no-checks",
                              "--device", "cpu", "--no-progress", "--out", str(out)])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    from advlab.eval import rho2

    model = weights.load_model(run, "cpu").eval()
    test = data.subset(data.load("digits", "test"), 80, seed=0)
    assert m["rho2"] == pytest.approx(rho2(model, test.x, test.y).value, rel=1e-5)
    assert "rho2" in " ".join(res.output.split())
    fgsm = tmp_path / "f"
    assert runner.invoke(app, ["attack", str(run), "-a", "fgsm", "--eps", "0.1", "--n", "20",
                               "--no-checks", "--out", str(fgsm)]).exit_code == 0
    assert json.loads((fgsm / "metrics.json").read_text())["rho2"] is None
    assert torch.isfinite(torch.tensor(m["rho2"]))
