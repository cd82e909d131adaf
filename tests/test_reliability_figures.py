"""Issue 16, item 2 (figures): every figure is written atomically through one function; a
figure that cannot be written is reported by a warning naming it and skipped, and the run's
numbers are written all the same."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure
from typer.testing import CliRunner

import advlab
from advlab.cli.main import app
from advlab.report import figures

runner = CliRunner()


def _half_written_then_full(self, fname, *args, **kwargs):
    """What a full disk does to savefig: part of the file is written, then ENOSPC."""
    with open(fname, "wb") as f:
        f.write(b"\x89PNG partial")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_every_savefig_goes_through_the_one_atomic_writer():
    root = Path(advlab.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "figures.py" or p.parent.name != "report"
                 if re.search(r"\.savefig\(", p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_a_figure_that_cannot_be_written_leaves_nothing_and_is_reported(tmp_path,
                                                                        monkeypatch, caplog):
    path = tmp_path / "figs" / "curve.png"
    open_before = set(plt.get_fignums())  # figures another test left open are not ours
    fig = plt.figure()
    plt.plot([0, 1])
    assert figures.save(fig, path) == path and path.read_bytes()[:4] == b"\x89PNG"
    before = path.read_bytes()
    monkeypatch.setattr(Figure, "savefig", _half_written_then_full)
    with caplog.at_level(logging.WARNING, logger="advlab"):
        assert figures.save(plt.figure(), path) is None
    assert path.read_bytes() == before  # the previous figure survives, whole
    assert os.listdir(path.parent) == ["curve.png"]  # no partial temporary file
    assert any(str(path) in r.getMessage() and "disk is full" in r.getMessage()
               for r in caplog.records)
    missing = tmp_path / "figs" / "new.png"
    assert figures.save(plt.figure(), missing) is None and not missing.exists()
    assert set(plt.get_fignums()) <= open_before  # figures are closed on failure too


def test_a_training_run_whose_figures_fail_still_writes_its_numbers(tmp_path, monkeypatch,
                                                                   caplog):
    from advlab.train.classifier import ClassifierJob, train_classifier
    from advlab.train.config import TrainConfig

    monkeypatch.setattr(Figure, "savefig", _half_written_then_full)
    job = ClassifierJob(dataset="digits", model="lrl", n_train=200,
                        train=TrainConfig(epochs=1, device="cpu"))
    with caplog.at_level(logging.WARNING, logger="advlab"):
        run, metrics = train_classifier(job, tmp_path / "run", progress=False)
    assert json.loads((run.path / "metrics.json").read_text())["test_acc"] == \
        pytest.approx(metrics["test_acc"])
    assert (run.path / "model.safetensors").is_file()
    assert list((run.path / "figures").iterdir()) == []
    warned = " ".join(r.getMessage() for r in caplog.records)
    for name in ("learning_curves.png", "confusion_matrix.png", "predictions.png"):
        assert name in warned


def test_a_figures_folder_that_cannot_be_made_skips_the_figures_not_the_numbers(tmp_path,
                                                                             caplog):
    from advlab.runs import new_run_dir

    run = new_run_dir("x", tmp_path / "run")
    (run.path / "figures").write_text("a file where the folder should be")
    with caplog.at_level(logging.WARNING, logger="advlab"):
        assert figures.save(plt.figure(), run.figures / "a.png") is None
    assert "is a file, not a directory" in caplog.text


def test_an_attack_whose_figures_fail_lists_only_the_figures_written(tmp_path, monkeypatch):
    clf = tmp_path / "clf"
    res = runner.invoke(app, ["train", "classifier", "--model", "lrl", "--n-train", "200",
                              "--epochs", "1", "--device", "cpu", "--no-progress",
                              "--out", str(clf)])
    assert res.exit_code == 0, res.output
    monkeypatch.setattr(Figure, "savefig", _half_written_then_full)
    out = tmp_path / "att"
    res = runner.invoke(app, ["attack", str(clf), "--attack", "fgsm", "--eps", "0.1",
                              "--n", "20", "--no-progress", "--out", str(out)])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["figures"] == [] and metrics["attack"] == "fgsm" and metrics["n"] == 20
