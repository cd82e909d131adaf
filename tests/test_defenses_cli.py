"""CLI of the defenses: ``train classifier --defense``, ``--init``, ``defend svd``, ``certify``."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from advlab.cli.main import app
from advlab.defenses import is_lipschitz
from advlab.weights import load_model

runner = CliRunner()


def _ok(args: list[str]):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "plain"
    _ok(["train", "classifier", "--dataset", "digits", "--model", "mlp", "--widths", "32",
         "--epochs", "3", "--lr", "0.003", "--out", str(out), "--no-progress"])
    return out


def test_train_with_a_defense_and_its_parameters(tmp_path):
    out = tmp_path / "fast"
    _ok(["train", "classifier", "--dataset", "digits", "--model", "mlp", "--defense",
         "fast-at", "--defense-param", "eps=0.05", "--epochs", "1", "--out", str(out),
         "--no-progress"])
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["defense"] == "fast-at"
    assert config["defense_config"]["eps"] == 0.05
    assert config["defense_config"]["alpha"] == pytest.approx(0.0625)
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert "adv_acc" in history[0]
    load_model(out)


def test_defense_options_are_checked():
    bad = runner.invoke(app, ["train", "classifier", "--defense-param", "eps=0.1"])
    assert bad.exit_code == 2 and "--defense-param needs --defense" in bad.output
    bad = runner.invoke(app, ["train", "classifier", "--defense", "pgd-at",
                              "--defense-param", "eps"])
    assert bad.exit_code == 2 and "expected key=value" in bad.output
    bad = runner.invoke(app, ["train", "classifier", "--defense", "madry"])
    assert bad.exit_code == 2 and "Valid defenses" in bad.output


def test_fine_tuning_starts_from_the_init_weights(plain_run, tmp_path):
    out = tmp_path / "dd"
    _ok(["train", "classifier", "--dataset", "digits", "--model", "mlp", "--widths", "32",
         "--defense", "deep-defense", "--init", str(plain_run), "--optimizer", "sgd",
         "--lr", "1e-7", "--epochs", "1", "--n-train", "200", "--out", str(out),
         "--no-progress"])
    start, tuned = load_model(plain_run), load_model(out)
    for a, b in zip(start.state_dict().values(), tuned.state_dict().values(), strict=True):
        assert (a - b).abs().max() < 1e-4  # a tiny step from the trained weights
    assert yaml.safe_load((out / "config.yaml").read_text())["init"] == str(plain_run)


def test_lipschitz_training_then_certify(tmp_path):
    out = tmp_path / "lip"
    _ok(["train", "classifier", "--dataset", "digits", "--model", "mlp", "--defense",
         "lipschitz", "--defense-param", "margin_eps=0.2", "--epochs", "2", "--lr", "0.003",
         "--out", str(out), "--no-progress"])
    model = load_model(out)
    assert is_lipschitz(model)
    result = _ok(["defend", "certify", str(out), "--eps", "0,0.1,1000", "--out",
                  str(tmp_path / "cert")])
    metrics = json.loads((tmp_path / "cert" / "metrics.json").read_text())
    cert = {r["eps"]: r["accuracy"] for r in metrics["certified_accuracy"]}
    assert cert[0.0] == pytest.approx(metrics["clean_accuracy"])
    assert cert[0.0] >= cert[0.1] and cert[1000.0] == 0.0
    assert 0 < metrics["lipschitz_bound"] <= 1.05  # two layers bounded by 1, ReLU
    assert "certified accuracy" in result.output
    assert {"config.yaml", "metrics.json", "log.txt"} <= {p.name for p in
                                                         (tmp_path / "cert").iterdir()}


def test_defend_svd_sweep_writes_metrics_and_figure(plain_run, tmp_path):
    out = tmp_path / "svd"
    result = _ok(["defend", "svd", str(plain_run), "--fraction", "0:0.5:0.25", "--attack",
                  "fgsm", "--eps", "0.1", "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    rows = metrics["rows"]
    assert [r["fraction"] for r in rows] == [0.0, 0.25, 0.5]
    assert rows[0]["removed"] == 0 and rows[1]["removed"] > 0
    plain = json.loads((plain_run / "metrics.json").read_text())["test_acc"]
    assert rows[0]["clean_accuracy"] == pytest.approx(plain, abs=1e-6)
    assert all(r["adversarial_accuracy"] <= r["clean_accuracy"] for r in rows)
    assert (out / "figures" / "svd_sweep.png").is_file()
    assert (out / "log.txt").is_file()
    assert "adversarial acc" in result.output
    bad = runner.invoke(app, ["defend", "svd", str(plain_run), "--fraction", "0,1.5"])
    assert bad.exit_code == 2 and "[0, 1]" in bad.output


@pytest.mark.parametrize("eps", ["-1", "0.1,-0.5", "nan"])
def test_certify_refuses_a_negative_or_non_finite_radius(plain_run, tmp_path, eps):
    res = runner.invoke(app, ["defend", "certify", str(plain_run), f"--eps={eps}", "--out",
                              str(tmp_path / "cert")])
    assert res.exit_code == 2 and "--eps" in res.output
    assert not (tmp_path / "cert").exists()


@pytest.mark.parametrize("fraction", ["-0.1", "0.5,1.5", "nan"])
def test_svd_refuses_fractions_outside_the_unit_interval(plain_run, tmp_path, fraction):
    res = runner.invoke(app, ["defend", "svd", str(plain_run), f"--fraction={fraction}",
                              "--out", str(tmp_path / "svd")])
    assert res.exit_code == 2 and "--fraction" in res.output
    assert not (tmp_path / "svd").exists()


@pytest.mark.parametrize("args, message", [
    (["--mode", "scale", "--factor", "0"], "factor"),
    (["--craft-on", "elsewhere"], "craft_on"),
    (["--batch-size", "0"], "batch_size"),
])
def test_svd_options_are_checked_before_the_run_directory(plain_run, tmp_path, args, message):
    out = tmp_path / "svd"
    res = runner.invoke(app, ["defend", "svd", str(plain_run), "--fraction", "0,0.5",
                              "--out", str(out), *args])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_defend_svd_suite_evaluates_each_truncated_model_as_eval_robust_does(plain_run,
                                                                             tmp_path):
    common = ["defend", "svd", str(plain_run), "--fraction", "0,0.5", "--eps", "0.1",
              "--n", "60", "--seed", "3"]
    budgets = ["--aa-steps", "10", "--aa-targets", "2", "--square-queries", "100",
               "--steps", "10", "--restarts", "1", "--n-checks", "20"]
    result = _ok([*common, "--suite", "standard", *budgets, "--out", str(tmp_path / "s")])
    rows = json.loads((tmp_path / "s" / "metrics.json").read_text())["rows"]
    _ok([*common, "--attack", "fgsm", "--out", str(tmp_path / "f")])
    fgsm = json.loads((tmp_path / "f" / "metrics.json").read_text())["rows"]
    for row, f in zip(rows, fgsm, strict=True):
        after = row["extra"]["robust_accuracy_after"]
        assert {"apgd-ce", "apgd-t", "fab-t", "square", "fgsm", "pgd"} <= set(after)
        # the worst case over the steps: it never rises, and ends at the row's number, at
        # most FGSM's own accuracy on the same points
        values = list(after.values())
        assert all(b <= a + 1e-9 for a, b in zip(values, values[1:], strict=False))
        assert values[-1] == pytest.approx(row["adversarial_accuracy"])
        assert row["adversarial_accuracy"] <= f["adversarial_accuracy"] + 1e-9
        assert row["clean_accuracy"] == pytest.approx(f["clean_accuracy"])
        assert 0.0 <= row["extra"]["transfer_accuracy"] <= row["clean_accuracy"]
        assert isinstance(row["extra"]["reliable"], bool)
    config = yaml.safe_load((tmp_path / "s" / "config.yaml").read_text())
    assert config["suite"] == "standard" and config["threat"] == {"norm": "linf", "eps": 0.1}
    assert "worst case" in result.output and "transfer" in result.output


@pytest.mark.parametrize("args, message", [
    (["--suite", "standard"], "--suite needs --eps"),
    (["--suite", "strongest", "--eps", "0.1"], "'standard', 'autoattack', 'quick'"),
    (["--suite", "standard", "--eps", "0.1", "--attack", "fgsm"], "not both"),
    (["--suite", "quick", "--eps", "0.1", "--craft-on", "original"], "drop"),
    (["--suite", "quick", "--eps", "0.1", "--norm", "l3"], "l3"),
])
def test_svd_suite_options_are_checked_before_the_run_directory(plain_run, tmp_path, args,
                                                                message):
    out = tmp_path / "svd"
    res = runner.invoke(app, ["defend", "svd", str(plain_run), "--fraction", "0,0.5",
                              "--out", str(out), *args])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and message in text and "Traceback" not in text, text
    assert not out.exists()
