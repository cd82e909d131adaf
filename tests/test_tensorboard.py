"""`--tensorboard`: each epoch's history row as scalars (a fake writer stands in for the
optional package); without the package, a one-line error and no run directory."""

from __future__ import annotations

import json
import sys
import types

import pytest
from typer.testing import CliRunner

from advlab.cli.main import app

runner = CliRunner()
TRAIN = ["train", "classifier", "--model", "lrl", "--epochs", "2", "--n-train", "300",
         "--device", "cpu", "--no-progress", "--tensorboard"]
GENERATIVE = ["train", "generative", "--model", "vae", "--dataset", "ring8", "--epochs", "2",
              "--steps-per-epoch", "5", "--device", "cpu", "--no-progress", "--tensorboard"]


class FakeWriter:
    made: list[FakeWriter] = []

    def __init__(self, log_dir: str) -> None:
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        FakeWriter.made.append(self)

    def add_scalar(self, key, value, step):
        self.scalars.append((key, value, step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


@pytest.fixture
def fake_tensorboard(monkeypatch):
    FakeWriter.made = []
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    return FakeWriter


@pytest.fixture
def no_tensorboard(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails


def test_classifier_epochs_become_scalars(tmp_path, fake_tensorboard):
    out = tmp_path / "run"
    res = runner.invoke(app, [*TRAIN, "--out", str(out)])
    assert res.exit_code == 0, res.output
    (writer,) = fake_tensorboard.made
    assert writer.log_dir == str(out / "tensorboard") and writer.closed
    history = json.loads((out / "metrics.json").read_text())["history"]
    for row in history:
        for key in ("train_loss", "test_acc", "lr"):
            assert (key, row[key], row["epoch"]) in writer.scalars
    assert not any(k == "epoch" for k, _, _ in writer.scalars)


def test_generative_epochs_become_scalars(tmp_path, fake_tensorboard):
    out = tmp_path / "gen"
    res = runner.invoke(app, [*GENERATIVE, "--out", str(out)])
    assert res.exit_code == 0, res.output
    (writer,) = fake_tensorboard.made
    steps = {s for _, _, s in writer.scalars}
    assert steps == {1, 2} and any(k.startswith("loss") for k, _, _ in writer.scalars)


@pytest.mark.parametrize("command", [TRAIN, GENERATIVE])
def test_without_the_package_a_clear_error_and_no_run(tmp_path, no_tensorboard, command):
    out = tmp_path / "x"
    res = runner.invoke(app, [*command, "--out", str(out)])
    assert res.exit_code == 2
    assert "--tensorboard needs the tensorboard package" in " ".join(res.output.split())
    assert "Traceback" not in res.output and not out.exists()
