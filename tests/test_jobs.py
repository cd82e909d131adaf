"""advlab.jobs: the commands as Python. A job round-trips through its run's config.yaml, running
it from Python gives the command's numbers, and a bad option fails before any run directory."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from advlab import data
from advlab.cli.main import app
from advlab.jobs import (
    JOBS,
    AttackJob,
    EvalAccuracyJob,
    EvalNeededJob,
    EvalRobustJob,
    job_from_config,
    job_name,
    run_attack,
    run_eval_accuracy,
    run_eval_needed,
    run_eval_robust,
    run_job,
)
from advlab.runs import RunDir
from advlab.train.classifier import ClassifierJob, train_classifier
from advlab.train.config import TrainConfig

runner = CliRunner()
CLF = ClassifierJob(dataset="digits", model="mlp", n_train=400,
                    train=TrainConfig(epochs=2, lr=5e-3, batch_size=64, seed=0, device="cpu"))
# what differs between two runs of the same job: timings and where the run was written
VOLATILE = ("seconds", "time", "path")


@pytest.fixture(scope="module")
def clf(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("jobs") / "clf"
    train_classifier(CLF, out, progress=False)
    return out


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """A run directory made without --out would land in ./runs: keep it in the test's own."""
    monkeypatch.chdir(tmp_path)


def stable(value):
    """``value`` without the keys that differ between two runs of one job."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items()
                if not any(word in k for word in VOLATILE)}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def read(run: Path, name: str):
    text = (run / name).read_text()
    return yaml.safe_load(text) if name.endswith(".yaml") else json.loads(text)


def cli(*args: str) -> None:
    res = runner.invoke(app, [*args, "--device", "cpu"])
    assert res.exit_code == 0, res.output


# --- the registry ---------------------------------------------------------------------------

def test_every_command_is_a_registered_job_with_a_frozen_dataclass():
    assert set(JOBS) >= {"train classifier", "train generative", "defend latent", "attack",
                         "eval accuracy", "eval robust", "eval needed"}
    for name in JOBS:
        kind = JOBS.get(name)
        assert dataclasses.is_dataclass(kind.job) and kind.job.__dataclass_params__.frozen
        assert callable(kind.run)
    with pytest.raises(ValueError, match="unknown job 'atack'.*'attack'"):
        JOBS.get("atack")


def test_run_job_refuses_another_kind_of_job(tmp_path):
    with pytest.raises(ValueError, match="expected a AttackJob for the job 'attack', got "
                                         "EvalAccuracyJob"):
        run_job("attack", EvalAccuracyJob(run="x"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_config_of_no_job_is_named():
    with pytest.raises(ValueError, match=r"expected the configuration of a job \(.*attack.*\), "
                                         r"got command 'reproduce'"):
        job_from_config({"command": "reproduce"})
    assert job_name({"command": "eval"}) == "eval accuracy"  # eval accuracy's runs say "eval"


# --- round trips through config.yaml --------------------------------------------------------

def test_a_training_run_gives_back_its_job(clf):
    assert job_from_config(RunDir(clf).read_config()) == CLF


def test_the_training_jobs_configs_give_back_their_jobs():
    from advlab.defenses.jobs import LatentJob
    from advlab.generative.job import GenerativeJob

    gen = GenerativeJob(dataset="ring8", model="gan", n_train=500)
    assert job_from_config({**gen.to_dict(), "model_spec": {"name": "gan"}}) == gen
    latent = LatentJob(generative="runs/vae", head="linear-2l", code="project", steps=20, n_test=50,
                       train=TrainConfig(epochs=3, lr=1e-2))
    config = {"command": "defend latent", "dataset": "digits",  # as train_latent_run writes it
              **{k: v for k, v in dataclasses.asdict(latent).items() if k != "train"},
              "train": dataclasses.asdict(latent.train)}
    assert job_from_config(yaml.safe_load(yaml.safe_dump(config))) == latent
    defended = {**CLF.to_dict(), "defense": "fgsm-at", "defense_config": {"name": "fgsm-at"}}
    with pytest.raises(ValueError, match="defense 'fgsm-at'.*--config"):
        job_from_config(defended)


@pytest.mark.parametrize("job", [
    AttackJob(run="r", attack="pgd", eps=(0.1, 0.2), steps=7, alpha=0.01, n=50, seed=3,
              params={"restarts": 2}),
    AttackJob(run="r", attack="deepfool", early_stop=False, split="train", batch_size=64,
              surrogate="s", transfer_from="t"),
    AttackJob(model="pkg.mod:net", weights="w.pt", bounds=(0, 255), mean=(0.5,), std=(0.25,),
              dataset="digits", attack="pgd", eps=(8.0,), alpha=2.0, steps=10),
    AttackJob(run="r", attack="fgsm", eps=(0.1,), data="points.npz", params={"seed": 5}),
    EvalAccuracyJob(run="r", n=30, rho2_report=True, fgsm_eps=(0.05, 0.1)),
    EvalRobustJob(model="pkg.mod:net", dataset="digits", bounds=(-1, 1), eps=0.5,
                  eps_list=(0.25, 0.5, 1.0), norm="l2", minimal="cw", suite="quick"),
    EvalNeededJob(run="r", target="random", lams=(0.1, 0.0), steps=40, n=24, save_adv=True),
], ids=lambda job: type(job).__name__)
def test_to_dict_round_trips(job):
    assert job_from_config(job.to_dict()) == job
    # through YAML, as config.yaml holds it
    assert job_from_config(yaml.safe_load(yaml.safe_dump(job.to_dict()))) == job


def test_lists_and_paths_given_in_python_are_stored_as_a_config_reads_them():
    job = AttackJob(run=Path("r"), eps=[0.1, 0.2], surrogate=Path("s"))
    assert job.eps == (0.1, 0.2) and job.run == "r" and job.surrogate == "s"
    assert job == AttackJob(run="r", eps=(0.1, 0.2), surrogate="s")


def test_an_attack_run_gives_back_its_job_and_the_command_line_builds_the_same(clf, tmp_path):
    job = AttackJob(run=str(clf), attack="pgd", eps=(0.05, 0.1), steps=3, n=40, seed=1,
                    checks=False, device="cpu")
    run, metrics = run_attack(job, tmp_path / "py", progress=False)
    config = run.read_config()
    # checks, n_checks and device are not recorded: they come back as their defaults
    assert job_from_config(config) == dataclasses.replace(job, checks=True, device="auto")
    # explicit options: the run resolved only the data set of RUN (from its model file)
    assert config == {**job.to_dict(), "dataset": "digits"}
    cli("attack", str(clf), "-a", "pgd", "--eps", "0.05,0.1", "--steps", "3", "--n", "40",
        "--seed", "1", "--no-checks", "--no-progress", "--out", str(tmp_path / "cli"))
    assert read(tmp_path / "cli", "config.yaml") == config
    assert stable(read(tmp_path / "cli", "metrics.json")) == stable(read(run.path,
                                                                         "metrics.json"))
    assert stable(metrics) == stable(read(run.path, "metrics.json"))  # what was written
    assert 0 <= metrics["robust_accuracy"] <= metrics["clean_accuracy"] <= 1


def test_a_run_records_what_it_resolved_and_its_job_reruns_it(clf, tmp_path):
    """n=None: 1000 points of a built-in set, at most the split; early stopping on by
    default: the rebuilt job names what was run, and running it gives the same numbers."""
    job = AttackJob(run=str(clf), attack="fgsm", eps=(0.1,), checks=False, device="cpu")
    run, metrics = run_attack(job, tmp_path / "a", progress=False)
    config = run.read_config()
    split = len(data.load("digits", "test"))  # < 1000: all of it
    assert config["n"] == metrics["n"] == split
    again = job_from_config(config)
    assert again.n == split and again.attack == "fgsm" and again.eps == (0.1,)
    _, metrics2 = run_job("attack", dataclasses.replace(again, checks=False), tmp_path / "b",
                          progress=False)
    assert stable(metrics2) == stable(metrics)


def test_eval_accuracy_from_python_equals_the_command(clf, tmp_path):
    job = EvalAccuracyJob(run=str(clf), n=50, seed=2, fgsm_eps=(0.05, 0.1), device="cpu")
    run, metrics = run_eval_accuracy(job, tmp_path / "py")
    assert job_from_config(run.read_config()) == dataclasses.replace(job, device="auto")
    cli("eval", "accuracy", str(clf), "--n", "50", "--seed", "2", "--fgsm-eps", "0.05,0.1",
        "--out", str(tmp_path / "cli"))
    assert read(tmp_path / "cli", "config.yaml") == run.read_config()
    assert stable(read(tmp_path / "cli", "metrics.json")) == stable(metrics)
    assert metrics["n_test"] == 50 and metrics["fgsm"]["eps"] == [0.05, 0.1]


def test_eval_needed_from_python_equals_the_command(clf, tmp_path):
    job = EvalNeededJob(run=str(clf), n=12, steps=20, lr=0.05, lams=(0.1, 0.0), device="cpu")
    run, metrics = run_eval_needed(job, tmp_path / "py")
    assert job_from_config(run.read_config()) == dataclasses.replace(job, device="auto")
    cli("eval", "needed", str(clf), "--n", "12", "--steps", "20", "--lr", "0.05", "--lams",
        "0.1,0", "--out", str(tmp_path / "cli"))
    assert read(tmp_path / "cli", "config.yaml") == run.read_config()
    assert stable(read(tmp_path / "cli", "metrics.json")) == stable(read(run.path,
                                                                         "metrics.json"))
    assert metrics["n"] == 12 and metrics["lams"] == [0.1, 0.0]


def test_eval_robust_from_python_equals_the_command(clf, tmp_path):
    opts = dict(n=20, suite="quick", aa_steps=5, aa_targets=2, n_checks=10, device="cpu")
    job = EvalRobustJob(run=str(clf), eps=0.1, **opts)
    results = []
    run, metrics = run_eval_robust(job, tmp_path / "py", progress=False,
                                   on_result=results.append)
    assert results[0].robust_accuracy == metrics["robust_accuracy"]
    # n_checks and device are not recorded
    assert job_from_config(run.read_config()) == dataclasses.replace(job, n_checks=200,
                                                                     device="auto")
    cli("eval", "robust", str(clf), "--eps", "0.1", "--n", "20", "--suite", "quick",
        "--aa-steps", "5", "--aa-targets", "2", "--n-checks", "10", "--no-progress",
        "--out", str(tmp_path / "cli"))
    assert read(tmp_path / "cli", "config.yaml") == run.read_config()
    assert stable(read(tmp_path / "cli", "metrics.json")) == stable(read(run.path,
                                                                         "metrics.json"))


# --- a bad option fails before any run directory exists -------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda clf: AttackJob(run=clf, attack="pgdd"), "unknown attack 'pgdd'"),
    (lambda clf: AttackJob(run=clf, attack="pgd", eps=(-0.1,)), r"expected --eps values >= 0"),
    (lambda clf: AttackJob(run=clf, attack="pgd", steps=5, params={"steps": 3}),
     r"--param steps: give it with its own option \(--steps\)"),
    (lambda clf: AttackJob(run=clf, attack="fgsm", fit_n=10), "--fit-n is for attacks"),
    (lambda clf: AttackJob(run=clf, n_checks=0), "expected n_checks >= 1"),
    (lambda clf: AttackJob(run=clf, n="5"), "AttackJob option n: expected an integer"),
    (lambda clf: AttackJob(model="m:f", bounds=(1, 0)), "expected bounds"),
    (lambda clf: EvalRobustJob(run=clf, eps=0.1, minimal="fgsm"), "expected --minimal"),
    (lambda clf: EvalNeededJob(run=clf, target="nearest"), "expected --target in next"),
    (lambda clf: EvalNeededJob(run=clf, lams=()), "expected lams"),
    (lambda clf: EvalAccuracyJob(run=clf, fgsm_eps=(2.0,)), r"expected --fgsm-eps <= 1"),
    (lambda clf: EvalNeededJob(run=clf, n=0), r"expected --n >= 1"),
], ids=["attack", "eps", "param", "fit_n", "n_checks", "type", "bounds", "minimal", "target",
        "lams", "fgsm_eps", "n"])
def test_a_bad_option_is_refused_when_the_job_is_built(clf, make, message):
    with pytest.raises(ValueError, match=message):
        make(str(clf))


@pytest.mark.parametrize("name, make, message", [
    ("attack", lambda clf: AttackJob(run=clf, attack="pgd", eps=(8.0,)),
     r"linf --eps <= 1.*divide by 255"),
    ("attack", lambda clf: AttackJob(run=clf, attack="fgsm", eps=(0.1,), batch_size=0),
     "batch_size"),
    ("attack", lambda clf: AttackJob(run=clf + "-missing", attack="fgsm", eps=(0.1,)),
     "no model weights"),
    ("attack", lambda clf: AttackJob(run=clf, attack="fgsm", eps=(0.1,), weights="w.pt"),
     "go with --model SPEC, not with RUN"),
    ("attack", lambda clf: AttackJob(run=clf, attack="fgsm", eps=(0.1,), surrogate=clf + "-x"),
     "no model weights"),
    ("eval accuracy", lambda clf: EvalAccuracyJob(run=clf, split="validation"), "validation"),
    ("eval accuracy", lambda clf: EvalAccuracyJob(run=clf, device="tpu"), "tpu"),
    ("eval robust", lambda clf: EvalRobustJob(run=clf, eps=1.5), "expected an linf eps < 1"),
    ("eval robust", lambda clf: EvalRobustJob(run=clf, eps=0.1, norm="l3"), "l3"),
    ("eval needed", lambda clf: EvalNeededJob(run=clf, confidence=0.9, model="m:f"),
     "expected either RUN"),
], ids=["linf-budget", "batch_size", "missing-run", "weights-with-run", "missing-surrogate",
        "split", "device", "robust-eps", "norm", "run-and-model"])
def test_a_bad_option_fails_before_any_run_directory(clf, tmp_path, name, make, message):
    out = tmp_path / "out"
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run_job(name, make(str(clf)), out)
    assert not out.exists() and not (tmp_path / "runs").exists()
