"""Data sets declare their input domain (issue 16, item 1): the 2-D toys train, evaluate and
are attacked end to end, with ε in the data's units, and their figures are figures of points."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from advlab import data
from advlab.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def ring_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "ring"
    res = runner.invoke(app, ["train", "classifier", "--dataset", "ring8", "--model", "mlp",
                              "--epochs", "4", "--lr", "0.01", "--n-train", "2000",
                              "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_every_data_set_declares_its_domain():
    for name in data.available():
        lo, hi = data.info(name).bounds
        assert lo < hi
    assert data.info("mnist").unit_box and not data.info("ring8").unit_box
    for name in ("ring8", "grid25"):
        lo, hi = data.info(name).bounds
        x = data.load(name, "test").x
        assert lo < float(x.min()) and float(x.max()) < hi  # the declared box holds the data


def test_a_toy_classifier_run_is_complete_with_a_figure_of_points(ring_run):
    for f in ("model.safetensors", "metrics.json", "figures/predictions.png",
              "figures/confusion_matrix.png"):
        assert (ring_run / f).is_file(), f
    assert json.loads((ring_run / "metrics.json").read_text())["test_acc"] > 0.9


def test_a_toy_run_is_evaluated_and_attacked_in_its_own_units(ring_run, tmp_path):
    res = runner.invoke(app, ["eval", str(ring_run), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "att"
    res = runner.invoke(app, ["attack", str(ring_run), "-a", "pgd", "--eps", "0.3", "--steps",
                              "5", "--n", "200", "--no-checks", "--no-progress", "--device",
                              "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "declared domain" in " ".join(res.output.split())
    m = json.loads((out / "metrics.json").read_text())
    assert m["eps_pixels"] == [pytest.approx(0.1)]  # 0.3 of the box [-1.5, 1.5]
    assert m["linf_mean"] <= 0.1 + 1e-6 and m["robust_accuracy"] < m["clean_accuracy"]
    assert (out / "figures" / "adversarial_points.png").is_file()
    res = runner.invoke(app, ["eval", "robust", str(ring_run), "--eps", "0.3", "--suite",
                              "quick", "--n", "100", "--aa-steps", "5", "--no-progress",
                              "--device", "cpu", "--out", str(tmp_path / "rob")])
    assert res.exit_code == 0, res.output
