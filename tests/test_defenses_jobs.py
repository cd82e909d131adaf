"""``advlab defend latent`` and ``advlab defend defense-gan``: runs that attacks and eval take."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from advlab import data
from advlab.cli.main import app
from advlab.defenses import DefenseGAN, LatentClassifier
from advlab.defenses import jobs as defense_jobs
from advlab.weights import load_model

runner = CliRunner()


def _run(args: list[str]):
    return runner.invoke(app, [str(a) for a in args])


def _text(result) -> str:
    return " ".join(result.output.split())  # rich wraps long messages


def _ok(args: list[str]):
    result = _run(args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    _ok(["train", "generative", "--model", "ae", "--dataset", "digits", "--epochs", "6",
         "--out", root / "ae", "--no-progress"])
    _ok(["train", "generative", "--model", "gan", "--dataset", "digits", "--epochs", "1",
         "--out", root / "gan", "--no-progress"])
    _ok(["train", "classifier", "--dataset", "digits", "--model", "mlp", "--widths", "32",
         "--epochs", "4", "--lr", "0.003", "--out", root / "clf", "--no-progress"])
    return root


def test_latent_run_trains_saves_and_loads_as_a_classifier(runs, tmp_path):
    out = tmp_path / "lat"
    result = _ok(["defend", "latent", runs / "ae", "--head", "lrl", "--epochs", "20",
                  "--lr", "0.01", "--out", out, "--no-progress"])
    assert "test accuracy" in _text(result)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "digits" and metrics["test_acc"] > 0.6
    model = load_model(out)
    assert isinstance(model, LatentClassifier) and model.code == "encode"
    test = data.load("digits", "test")
    with torch.no_grad():
        acc = (model(test.x).argmax(1) == test.y).float().mean().item()
    assert acc == pytest.approx(metrics["test_acc"])
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["command"] == "defend latent" and config["head"] == "lrl"
    # the saved run is a classifier run for the attack CLI
    _ok(["attack", out, "--attack", "fgsm", "--eps", "0.1", "--n", "20",
         "--out", tmp_path / "attack", "--no-progress"])


def test_latent_project_run_keeps_the_training_codes_and_resumes(runs, tmp_path, monkeypatch):
    out = tmp_path / "latp"
    _ok(["defend", "latent", runs / "ae", "--code", "project", "--steps", "20",
         "--epochs", "2", "--n-train", "300", "--n-test", "50", "--out", out, "--no-progress"])
    assert (out / "train_codes.safetensors").is_file()

    def no_projection(*args, **kwargs):
        raise AssertionError("projected the training set again instead of reading it")

    monkeypatch.setattr(defense_jobs, "latent_codes", no_projection)
    _ok(["defend", "latent", runs / "ae", "--code", "project", "--steps", "20",
         "--epochs", "3", "--n-train", "300", "--n-test", "50", "--out", out, "--resume",
         "--no-progress"])
    log = (out / "log.txt").read_text()
    assert "resumed from" in log and "after epoch 2" in log
    assert load_model(out).code == "project"
    _attack_and_evaluate(out, runs / "clf", tmp_path)
    # a resume with another head is refused, naming what differs
    result = _run(["defend", "latent", runs / "ae", "--code", "project", "--head", "linear-1l",
                   "--steps", "20", "--epochs", "3", "--n-train", "300", "--n-test", "50",
                   "--out", out, "--resume", "--no-progress"])
    assert result.exit_code != 0 and "config.yaml differs" in _text(result)
    assert "head: 'lrl' in the run, 'linear-1l' given" in _text(result)
    result = _run(["defend", "latent", runs / "ae", "--code", "project", "--lr", "0.1",
                   "--steps", "20", "--epochs", "3", "--n-train", "300", "--n-test", "50",
                   "--out", out, "--resume", "--no-progress"])
    assert result.exit_code != 0 and "train.lr: 0.001 in the run, 0.1 given" in _text(result)
    result = _run(["defend", "latent", runs / "ae", "--code", "project", "--steps", "20",
                   "--epochs", "2", "--n-train", "300", "--n-test", "50", "--out", out,
                   "--resume", "--no-progress"])
    assert result.exit_code == 2 and "completed 3 epochs, more than --epochs 2" in _text(result)


def test_latent_bad_inputs_name_what_is_valid(runs, tmp_path):
    result = _run(["defend", "latent", runs / "ae", "--head", "resnet", "--out", tmp_path / "a"])
    assert result.exit_code != 0 and "linear-1l" in _text(result)
    result = _run(["defend", "latent", runs / "ae", "--code", "decode", "--out", tmp_path / "b"])
    assert result.exit_code != 0 and "project" in _text(result)
    result = _run(["defend", "latent", runs / "gan", "--out", tmp_path / "c"])
    assert result.exit_code != 0 and "no encoder" in _text(result)
    result = _run(["defend", "latent", runs / "gan", "--code", "project", "--out",
                   tmp_path / "c2"])
    assert result.exit_code == 2 and "no encoder; code=project" in _text(result)
    result = _run(["defend", "latent", runs / "ae", "--n-train", "5", "--out", tmp_path / "c3"])
    assert result.exit_code == 2 and "divisible by the 10 classes" in _text(result)
    result = _run(["defend", "latent", runs / "ae", "--n-train", "100000", "--out",
                   tmp_path / "c4"])
    assert result.exit_code == 2 and "expected n_train <= 1438" in _text(result)
    result = _run(["defend", "latent", runs / "ae", "--device", "foo", "--out", tmp_path / "c5"])
    assert result.exit_code == 2 and "unknown device 'foo'" in _text(result)
    for name in ("c", "c2", "c3", "c4", "c5"):
        assert not (tmp_path / name).exists(), name
    result = _run(["defend", "latent", runs / "clf", "--out", tmp_path / "d"])
    assert result.exit_code != 0 and "generative" in _text(result)


def test_defense_gan_run_composes_measures_and_loads(runs, tmp_path):
    out = tmp_path / "dg"
    result = _ok(["defend", "defense-gan", runs / "gan", runs / "clf", "--steps", "10",
                  "--restarts", "2", "--n", "20", "--out", out])
    assert "clean accuracy" in _text(result)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_test"] == 20 and 0.0 <= metrics["test_acc"] <= 1.0
    big = _ok(["defend", "defense-gan", runs / "gan", runs / "clf", "--steps", "1",
               "--restarts", "1", "--n", "100000", "--out", tmp_path / "dg-all"])
    assert json.loads((tmp_path / "dg-all" / "metrics.json").read_text())["n_test"] == 359
    assert "359" in _text(big)
    bad = _run(["defend", "defense-gan", runs / "gan", runs / "clf", "--steps", "0",
                "--out", tmp_path / "dg-0"])
    assert bad.exit_code == 2 and "steps" in _text(bad) and not (tmp_path / "dg-0").exists()
    assert metrics["reconstruction"] > 0
    model = load_model(out)
    assert isinstance(model, DefenseGAN) and (model.steps, model.restarts) == (10, 2)
    x = data.load("digits", "test").x[:5]
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # seeded projection: deterministic
    _attack_and_evaluate(out, runs / "clf", tmp_path)


def _attack_and_evaluate(run, surrogate, tmp_path):
    """A projection run goes through `advlab attack` (an ε-curve) and `advlab eval robust`
    (ε_ref starts at ε = 0, where no point is left to attack: an empty batch must not reach
    the projection)."""
    _ok(["attack", run, "--attack", "pgd", "--eps", "0.2", "--steps", "2", "--n", "8",
         "--out", tmp_path / "attack", "--no-progress"])
    _ok(["eval", "robust", run, "--eps", "0.2", "--steps", "2", "--restarts", "1", "--n", "8",
         "--n-checks", "8", "--surrogate", surrogate, "--no-rho2", "--out",
         tmp_path / "robust", "--no-progress"])
    metrics = json.loads((tmp_path / "robust" / "metrics.json").read_text())
    assert metrics["eps_ref"] is not None


def test_defense_gan_refuses_a_classifier_of_another_data_set(runs, tmp_path):
    from advlab import models
    from advlab.weights import save_model

    other = tmp_path / "mnist-clf"
    save_model(other, models.create("mlp", dataset="mnist", widths=[8]), {"dataset": "mnist"})
    result = _run(["defend", "defense-gan", runs / "gan", other, "--n", "0",
                   "--out", tmp_path / "dg"])
    assert result.exit_code != 0
    assert "'digits'" in _text(result) and "'mnist'" in _text(result)
