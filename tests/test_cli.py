"""The command line: thin commands, clear errors, complete run directories."""

import json

import yaml
from typer.testing import CliRunner

from advlab.cli.main import app

runner = CliRunner()


def test_data_list_shows_every_dataset():
    res = runner.invoke(app, ["data", "list"])
    assert res.exit_code == 0, res.output
    for name in ("mnist", "fashion-mnist", "cifar10", "digits", "ring8", "grid25"):
        assert name in res.output


def test_data_info_digits_reports_counts():
    res = runner.invoke(app, ["data", "info", "digits"])
    assert res.exit_code == 0, res.output
    assert "train" in res.output and "test" in res.output


def test_unknown_names_are_user_errors_listing_valid_ones(tmp_path):
    res = runner.invoke(app, ["train", "classifier", "--model", "lenet", "--out",
                              str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "unknown model 'lenet'" in res.output and "lenet5" in res.output
    res = runner.invoke(app, ["train", "classifier", "--dataset", "mnits", "--out",
                              str(tmp_path / "r2")])
    assert res.exit_code == 2 and "mnist" in res.output
    res = runner.invoke(app, ["train", "classifier", "--optimizer", "rmsprop", "--out",
                              str(tmp_path / "r3")])
    assert res.exit_code == 2 and "adam" in res.output


def test_train_then_eval_then_resume_with_more_epochs(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "classifier", "--dataset", "digits", "--model", "lrl",
                              "--epochs", "2", "--device", "cpu", "--no-progress",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "test accuracy" in res.output
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"] == "lrl" and cfg["train"]["epochs"] == 2
    res = runner.invoke(app, ["eval", str(out), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert 0 <= metrics["test_acc"] <= 1 and len(metrics["per_class_acc"]) == 10
    # Extending a finished run: --resume with more epochs continues from epoch 2.
    res = runner.invoke(app, ["train", "classifier", "--dataset", "digits", "--model", "lrl",
                              "--epochs", "3", "--device", "cpu", "--no-progress",
                              "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    # A resume that changes anything but epochs/device is refused.
    res = runner.invoke(app, ["train", "classifier", "--dataset", "digits", "--model", "lrl",
                              "--epochs", "4", "--lr", "0.5", "--no-progress", "--out", str(out),
                              "--resume"])
    assert res.exit_code == 2 and "differs" in res.output


def test_eval_of_a_missing_run_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["eval", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no model weights" in res.output


def test_config_file_rejects_unknown_keys(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epoch: 3\n")
    res = runner.invoke(app, ["train", "classifier", "--config", str(cfg), "--out",
                              str(tmp_path / "r")])
    assert res.exit_code == 2 and "did you mean 'epochs'" in res.output
