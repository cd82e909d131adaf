"""Per-data-set training defaults (issue 17): the command line's defaults give a model worth
attacking on digits, and FGSM adversarial training with the defaults is not underfit."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from advlab import attacks, data
from advlab.cli.main import app
from advlab.eval import robust_accuracy
from advlab.weights import load_model

runner = CliRunner()


def _train(out, *extra):
    res = runner.invoke(app, ["train", "classifier", "--dataset", "digits", "--model", "mlp",
                              "--device", "cpu", "--no-progress", "--out", str(out), *extra])
    assert res.exit_code == 0, res.output
    return json.loads((out / "metrics.json").read_text()), load_model(out)


@pytest.mark.slow
def test_digits_defaults_reach_095_and_fgsm_training_helps(tmp_path):
    plain_m, plain = _train(tmp_path / "plain")
    assert plain_m["test_acc"] >= 0.95
    cfg = (tmp_path / "plain" / "config.yaml").read_text()
    assert "epochs: 30" in cfg and "batch_size: 64" in cfg  # the data set's defaults, recorded
    at_m, at = _train(tmp_path / "fgsm", "--defense", "fgsm-at")
    test = data.load("digits", "test")
    fgsm = attacks.create("fgsm", eps=0.1)
    before = robust_accuracy(plain, test.x, test.y, fgsm).robust_accuracy
    after = robust_accuracy(at, test.x, test.y, fgsm).robust_accuracy
    assert after > before + 0.10 and at_m["test_acc"] >= 0.95


def test_options_and_config_files_override_the_data_set_defaults(tmp_path):
    m, _ = _train(tmp_path / "short", "--epochs", "2", "--lr", "0.01")
    cfg = (tmp_path / "short" / "config.yaml").read_text()
    assert "epochs: 2" in cfg and "lr: 0.01" in cfg and "batch_size: 64" in cfg
    assert m["epochs_completed"] == 2
