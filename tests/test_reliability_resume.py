"""Issue 16, items 3 and 6: a refused --resume writes nothing; options that would do nothing
(--patience without a validation split, --resume of an empty directory) are refused."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advlab.cli.main import app
from advlab.generative.job import GenerativeJob, train_generative
from advlab.generative.train import GenerativeTrainConfig
from advlab.train.classifier import ClassifierJob, train_classifier
from advlab.train.config import TrainConfig

runner = CliRunner()


def _snapshot(path: Path) -> dict[str, str]:
    """Every file under ``path`` (hidden ones included) with a digest of its content."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _classifier_job(**train) -> ClassifierJob:
    cfg = TrainConfig(**{"epochs": 1, "batch_size": 64, "device": "cpu", **train})
    return ClassifierJob(dataset="digits", model="lrl", n_train=200, train=cfg)


def _generative_job(**train) -> GenerativeJob:
    cfg = GenerativeTrainConfig(**{"epochs": 1, "batch_size": 32, "steps_per_epoch": 2,
                                   "n_snapshot": 4, "device": "cpu", **train})
    return GenerativeJob(dataset="ring8", model="vae", model_kwargs={"hidden": [4]},
                         figure_every=0, train=cfg)


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clf") / "run"
    train_classifier(_classifier_job(), out, progress=False)
    return out


@pytest.fixture(scope="module")
def generative_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "run"
    train_generative(_generative_job(), out, progress=False)
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("kind", ["classifier", "generative"])
def test_a_refused_resume_without_config_yaml_writes_nothing(kind, classifier_run,
                                                             generative_run, tmp_path):
    """config.yaml deleted, another learning rate given: the checkpoint's own configuration
    is the reference, so the resume is refused and the run directory is left as it was (no
    config.yaml describing a job that never ran, no log, no lock)."""
    out = _copy(classifier_run if kind == "classifier" else generative_run, tmp_path / "run")
    (out / "config.yaml").unlink()
    before = _snapshot(out)
    if kind == "classifier":
        job = _classifier_job(epochs=2, lr=0.5)
        with pytest.raises(ValueError, match=r"checkpoint\.safetensors.*lr"):
            train_classifier(job, out, resume=True, progress=False)
    else:
        job = _generative_job(epochs=2, lr=0.5)
        with pytest.raises(ValueError, match=r"checkpoint\.safetensors.*lr"):
            train_generative(job, out, resume=True, progress=False)
    assert _snapshot(out) == before


@pytest.mark.parametrize("kind", ["classifier", "generative"])
def test_a_resume_against_the_checkpoint_of_another_job_is_refused(kind, classifier_run,
                                                                   generative_run, tmp_path):
    """A job setting outside the training config (n_train; the model's width) that differs
    from the run's is refused from the checkpoint alone, before anything is written."""
    out = _copy(classifier_run if kind == "classifier" else generative_run, tmp_path / "run")
    (out / "config.yaml").unlink()
    before = _snapshot(out)
    if kind == "classifier":
        job = replace(_classifier_job(epochs=2), n_train=300)
        with pytest.raises(ValueError, match=r"n_train"):
            train_classifier(job, out, resume=True, progress=False)
    else:
        job = replace(_generative_job(epochs=2), model_kwargs={"hidden": [5]})
        with pytest.raises(ValueError, match=r"hidden"):
            train_generative(job, out, resume=True, progress=False)
    assert _snapshot(out) == before


@pytest.mark.parametrize("kind", ["classifier", "generative"])
def test_an_edited_config_yaml_does_not_override_the_checkpoint(kind, classifier_run,
                                                               generative_run, tmp_path):
    """config.yaml edited to claim lr 0.5 and a resume with lr 0.5: the checkpoint trained
    with 1e-3, so the resume is refused and nothing is written."""
    import yaml

    out = _copy(classifier_run if kind == "classifier" else generative_run, tmp_path / "run")
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    cfg["train"]["lr"] = 0.5
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    before = _snapshot(out)
    with pytest.raises(ValueError, match=r"checkpoint\.safetensors.*lr"):
        if kind == "classifier":
            train_classifier(_classifier_job(epochs=2, lr=0.5), out, resume=True,
                             progress=False)
        else:
            train_generative(_generative_job(epochs=2, lr=0.5), out, resume=True,
                             progress=False)
    assert _snapshot(out) == before


def test_a_resume_that_passes_the_checks_still_continues(classifier_run, tmp_path):
    """The checks do not refuse a legitimate resume without config.yaml: it continues from
    the checkpoint and writes config.yaml again."""
    out = _copy(classifier_run, tmp_path / "run")
    (out / "config.yaml").unlink()
    _, metrics = train_classifier(_classifier_job(epochs=2), out, resume=True, progress=False)
    assert [r["epoch"] for r in metrics["history"]] == [1, 2]
    assert (out / "config.yaml").is_file()


@pytest.mark.parametrize("command", [["train", "classifier", "--model", "lrl"],
                                     ["train", "generative", "--dataset", "ring8"]])
def test_resume_into_an_empty_directory_is_refused(command, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    res = runner.invoke(app, [*command, "--epochs", "1", "--device", "cpu", "--no-progress",
                              "--out", str(out), "--resume"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "nothing to resume" in text and str(out) in text
    assert list(out.iterdir()) == []


def test_resume_of_a_directory_without_checkpoint_or_config_is_refused(tmp_path):
    out = tmp_path / "other"
    out.mkdir()
    (out / "notes.txt").write_text("not a run")
    with pytest.raises(ValueError, match="nothing to resume"):
        train_classifier(_classifier_job(), out, resume=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_patience_without_a_validation_split_is_refused(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "classifier", "--model", "lrl", "--epochs", "1",
                              "--patience", "3", "--device", "cpu", "--no-progress",
                              "--out", str(out)])
    text = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "--patience" in text and "--val-fraction" in text
    assert not out.exists()


def test_patience_without_validation_data_is_refused_by_fit(tmp_path):
    import torch

    from advlab import data, models
    from advlab.train.loop import fit

    train = data.subset(data.load("digits", "train"), 50, seed=0)
    model = models.create("lrl", dataset="digits")
    with pytest.raises(ValueError, match="patience"):
        fit(model, train, TrainConfig(epochs=1, patience=2, device="cpu"), progress=False)
    with torch.no_grad():  # with validation data it is accepted
        pass
    fit(model, train, TrainConfig(epochs=1, patience=2, device="cpu"), val=train,
        progress=False)


def test_a_refused_latent_resume_without_config_yaml_writes_nothing(tmp_path):
    """``defend latent --resume``: the same rule as the training commands."""
    from advlab.defenses.jobs import LatentJob, train_latent_run

    gen_out = tmp_path / "ae"
    train_generative(GenerativeJob(dataset="digits", model="ae", n_train=200, figure_every=0,
                                   train=GenerativeTrainConfig(epochs=1, batch_size=64,
                                                               n_snapshot=4, device="cpu")),
                     gen_out, progress=False)
    job = LatentJob(generative=str(gen_out), n_train=100, n_test=50,
                    train=TrainConfig(epochs=1, batch_size=50, device="cpu"))
    out = tmp_path / "lat"
    train_latent_run(job, out, progress=False)
    (out / "config.yaml").unlink()
    before = _snapshot(out)
    changed = replace(job, train=TrainConfig(epochs=2, batch_size=50, lr=0.5, device="cpu"))
    with pytest.raises(ValueError, match=r"checkpoint\.safetensors.*lr"):
        train_latent_run(changed, out, resume=True, progress=False)
    assert _snapshot(out) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="nothing to resume"):
        train_latent_run(job, empty, resume=True, progress=False)
    assert list(empty.iterdir()) == []


def test_a_bare_resume_without_config_yaml_continues_as_the_checkpoint_recorded(tmp_path):
    out = tmp_path / "run"
    args = ["train", "classifier", "--model", "lrl", "--n-train", "200", "--lr", "0.01",
            "--device", "cpu", "--no-progress", "--out", str(out)]
    assert runner.invoke(app, [*args, "--epochs", "1"]).exit_code == 0
    (out / "config.yaml").unlink()
    res = runner.invoke(app, ["train", "classifier", "--epochs", "2", "--no-progress",
                              "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"] == "lrl" and cfg["n_train"] == 200 and cfg["train"]["lr"] == 0.01
