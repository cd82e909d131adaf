"""Epoch selection on held-out training points: ``--select-by CRITERION --holdout N`` (issue 17).

The job trained here: fast adversarial training (no random start) of a 32-unit MLP on 500
digits, the held-out criterion PGD-5 at the defense's ε on 100 held-out points. Its learning
rate is multiplied by 100 after epoch 2 (``schedule="step"``), which wrecks the model in epoch 3
(Adam at 0.3: every ReLU dead, one output for every input): the selected epoch is then an
earlier one, and the saved model must be that epoch's, not the last.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from advlab import data, defenses, models
from advlab.cli.main import app
from advlab.io import load_state, load_state_meta
from advlab.runs import TrainingInterrupted
from advlab.train.classifier import ClassifierJob, load_sets, train_classifier
from advlab.train.config import TrainConfig
from advlab.train.loop import fit
from advlab.train.select import HoldoutScore, holdout_attack, parse_criterion, split_holdout
from advlab.weights import load_model

runner = CliRunner()
OBJECTIVE = "fast-at"
# no random start (one step of 1.25·ε from x, projected): deterministic, so that two processes
# train as one does (a random start is drawn per process, tests/test_distributed.py)
PARAMS = {"random_start": False}
JOB = ClassifierJob(
    dataset="digits", model="mlp", model_kwargs={"widths": [32]}, n_train=500,
    select_by="pgd5", holdout=100,
    train=TrainConfig(epochs=3, batch_size=32, lr=3e-3, schedule="step", step_size=2,
                      gamma=100.0, device="cpu"))
KEY = "holdout_pgd5_acc"


def objective():
    return defenses.create_objective(OBJECTIVE, dataset=JOB.dataset, **PARAMS)


def train(job: ClassifierJob, out: Path, **kwargs):
    objective = defenses.create_objective(OBJECTIVE, dataset=job.dataset, **PARAMS)
    extra = {"defense": OBJECTIVE, "defense_config": defenses.config(objective)}
    return train_classifier(job, out, objective=objective, progress=False, extra_config=extra,
                            **kwargs)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_state(path / "model.safetensors")["model"]


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    out = tmp_path_factory.mktemp("select") / "run"
    _, metrics = train(JOB, out)
    return out, metrics


# --- the selected epoch --------------------------------------------------------------------

def test_the_saved_model_is_the_best_held_out_epoch_not_the_last(selected):
    out, metrics = selected
    history = metrics["history"]
    scores = [r[KEY] for r in history]
    best = scores.index(max(scores)) + 1  # the first best epoch
    assert metrics["selected_epoch"] == metrics["best_epoch"] == best < len(history) == 3
    assert metrics[KEY] == max(scores) > scores[-1]
    assert (metrics["select_by"], metrics["holdout"]) == ("pgd5", 100)
    attack = metrics["select_attack"]  # the defense's ε (digits 0.1), step 2.5·ε/N
    assert (attack["attack"], attack["steps"], attack["norm"]) == ("pgd", 5, "linf")
    assert (attack["eps"], attack["alpha"], attack["early_stop"]) == (0.1, 0.05, True)
    # the test metrics are the selected model's
    assert metrics["test_acc"] == pytest.approx(history[best - 1]["test_acc"], abs=1e-6)
    assert metrics["test_acc"] != pytest.approx(history[-1]["test_acc"], abs=1e-3)
    # recomputed from model.safetensors: the held-out score of the selected epoch, exactly
    model = load_model(out)
    score = HoldoutScore("pgd5", load_sets(JOB).holdout, holdout_attack("pgd5", objective()))
    assert score(model) == metrics[KEY]
    saved = json.loads((out / "metrics.json").read_text())
    assert {k: saved[k] for k in ("selected_epoch", "select_by", "holdout", KEY)} == \
        {k: metrics[k] for k in ("selected_epoch", "select_by", "holdout", KEY)}
    assert json.loads((out / "model.json").read_text())["metrics"]["selected_epoch"] == best


def test_fit_keeps_the_weights_of_the_best_scoring_epoch_and_patience_watches_it():
    """A scripted score (0.2, 0.7, 0.4, 0.6): epoch 2's weights are kept; with patience 2
    the run stops after epoch 4 (two epochs without beating epoch 2), no validation split."""
    class Scripted:
        key = "scripted"

        def __init__(self, values):
            self.values = iter(values)

        def __call__(self, model):
            return next(self.values)

    train_set = data.load("digits", "train").subset(torch.arange(128))
    states = []

    def keep(row):
        states.append({k: v.clone() for k, v in model.state_dict().items()})

    torch.manual_seed(0)
    model = models.create("lrl", dataset="digits")
    config = TrainConfig(epochs=6, batch_size=32, lr=1e-2, patience=2, device="cpu")
    result = fit(model, train_set, config, progress=False, on_epoch=keep,
                 select=Scripted([0.2, 0.7, 0.4, 0.6, 0.9, 0.9]))
    assert [r["scripted"] for r in result.history] == [0.2, 0.7, 0.4, 0.6]
    assert result.best_epoch == 2 and result.stopped_early
    for k, v in model.state_dict().items():
        assert torch.equal(v, states[1][k]), k
        assert not torch.equal(states[1][k], states[-1][k]) or v.numel() == 0


def test_a_resumed_run_keeps_the_best_epoch_it_had_before_the_interruption(
        selected, tmp_path, monkeypatch):
    """Ctrl-C while epoch 3 is scored (epoch 2, the best, checkpointed): the resumed run ends
    with the history, selection and weights of the uninterrupted one, bit for bit; epoch 2's
    weights came back from the checkpoint."""
    out = tmp_path / "run"
    score, calls = HoldoutScore.__call__, []

    def interrupt_third(self, model):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return score(self, model)

    monkeypatch.setattr(HoldoutScore, "__call__", interrupt_third)
    with pytest.raises(TrainingInterrupted):
        train(JOB, out)
    monkeypatch.setattr(HoldoutScore, "__call__", score)
    ckpt = load_state_meta(out / "checkpoint.safetensors")
    assert ckpt["epoch"] == 2 and ckpt["best_epoch"] == selected[1]["selected_epoch"]
    assert not (out / "model.safetensors").exists()
    _, metrics = train(JOB, out, resume=True)
    reference = selected[1]
    assert [r[KEY] for r in metrics["history"]] == [r[KEY] for r in reference["history"]]
    assert metrics["selected_epoch"] == reference["selected_epoch"]
    assert metrics["test_acc"] == reference["test_acc"]
    ours, theirs = weights(out), weights(selected[0])
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


# --- the held-out points -------------------------------------------------------------------

def rows(ds) -> set[bytes]:
    return {r.numpy().tobytes() for r in ds.x.reshape(len(ds), -1)}


def test_holdout_points_come_out_first_and_are_never_trained_on(monkeypatch, tmp_path):
    full = data.load("digits", "train")
    assert len(rows(full)) == len(full) == 1438  # every image distinct: rows identify points
    sets = load_sets(JOB)
    assert (len(sets.holdout), len(sets.train), sets.val) == (100, 500, None)
    assert sets.holdout.split == "holdout"
    # drawn before --n-train and the validation split: the same points whatever they are
    with_val = load_sets(replace(JOB, n_train=None,
                                 train=replace(JOB.train, val_fraction=0.1)))
    assert torch.equal(with_val.holdout.x, sets.holdout.x)
    assert len(with_val.train) + len(with_val.val) == 1438 - 100
    held = rows(sets.holdout)
    for part in (sets.train, with_val.train, with_val.val):
        assert not held & rows(part)
    # seeded by the training seed
    other = load_sets(replace(JOB, train=replace(JOB.train, seed=1)))
    assert not torch.equal(other.holdout.x, sets.holdout.x)
    rest, again = split_holdout(full, 100, 0)
    assert torch.equal(again.y, sets.holdout.y) and len(rest) == 1338
    # and fit trains on the rest only
    trained_on = []
    real_fit = fit

    def spy(model, train_set, *args, **kwargs):
        trained_on.append(train_set)
        return real_fit(model, train_set, *args, **kwargs)

    monkeypatch.setattr("advlab.train.classifier.fit", spy)
    job = replace(JOB, n_train=None, model="lrl", model_kwargs={}, select_by="clean",
                  train=TrainConfig(epochs=1, device="cpu"))
    _, metrics = train_classifier(job, tmp_path / "clean", progress=False)
    assert len(trained_on[0]) == 1338 and not held & rows(trained_on[0])
    assert metrics["selected_epoch"] == 1 and 0 < metrics["holdout_clean_acc"] <= 1


# --- options -------------------------------------------------------------------------------

BASE = ["train", "classifier", "--dataset", "digits", "--model", "lrl", "--epochs", "1",
        "--device", "cpu", "--no-progress"]


@pytest.mark.parametrize("args, message", [
    (["--holdout", "100"], "--holdout needs --select-by"),
    (["--select-by", "pgd20"], "--select-by needs --holdout"),
    (["--select-by", "pgd20", "--holdout", "100"], "no defense is trained; expected "
                                                   "--select-eps"),
    (["--select-by", "fgsm", "--holdout", "100"], "no defense is trained"),
    (["--select-by", "pgd10", "--holdout", "100", "--defense", "deep-defense"],
     "'deep-defense' has no threat model"),
    (["--select-by", "pgd", "--holdout", "100"], "expected one of clean, fgsm, pgdN"),
    (["--select-by", "pgd0", "--holdout", "100"], "expected one of clean, fgsm, pgdN"),
    (["--select-by", "clean", "--holdout", "100", "--select-eps", "0.1"], "attacks nothing"),
    (["--select-by", "fgsm", "--holdout", "100", "--defense", "fast-at", "--select-alpha",
      "0.01"], "FGSM takes one step of ε"),
    (["--select-by", "fgsm", "--holdout", "100", "--defense", "pgd-at", "--defense-param",
      "norm=l2"], "expected a linf defense, got a l2 one"),
    (["--select-eps", "0.1"], "expected it with --select-by fgsm or pgdN"),
    (["--select-by", "pgd10", "--holdout", "100", "--select-eps", "-1"],
     "--select-eps: expected a finite number > 0"),
    (["--select-by", "clean", "--holdout", "0"], "--holdout: expected an integer >= 1"),
    (["--select-by", "clean", "--holdout", "1438"], "expected an integer in 1..1437"),
])
def test_bad_option_combinations_are_one_line_errors_before_anything_is_written(
        args, message, tmp_path):
    res = runner.invoke(app, [*BASE, *args, "--out", str(tmp_path / "run")])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and message in text, res.output
    assert not (tmp_path / "run").exists()


def test_criteria_and_their_attacks():
    assert [parse_criterion(c) for c in ("clean", "fgsm", "pgd1", "pgd20")] == \
        [("clean", 0), ("fgsm", 1), ("pgd", 1), ("pgd", 20)]
    for bad in ("pgd", "pgd-3", "pgd05", "PGD20", "apgd", None, 20):
        with pytest.raises(ValueError, match="expected one of clean, fgsm, pgdN"):
            parse_criterion(bad)
    mnist = defenses.create_objective("fast-at", dataset="mnist")  # ε 0.3
    pgd = holdout_attack("pgd20", mnist)
    assert (pgd.eps, pgd.alpha, pgd.steps, pgd.early_stop) == (0.3, 2.5 * 0.3 / 20, 20, True)
    assert holdout_attack("pgd20", mnist, alpha=0.025).alpha == 0.025  # Wong et al.'s check
    assert holdout_attack("pgd20", None, eps=0.2).threat.eps == 0.2
    assert holdout_attack("pgd20", mnist, eps=0.2).threat.eps == 0.2  # given ε wins
    l2 = defenses.create_objective("pgd-at", dataset="digits", norm="l2", eps=1.0)
    assert holdout_attack("pgd7", l2).threat.norm == "l2"
    fgsm = holdout_attack("fgsm", mnist)
    assert (fgsm.name, fgsm.eps) == ("fgsm", 0.3)
    assert holdout_attack("clean", None) is None


def test_a_constant_model_scores_its_clean_accuracy_under_attack():
    """Every ReLU dead (an epoch with a step too large): the output ignores the input, no
    attack can change it, and the score is its clean accuracy instead of an error."""
    model = models.create("mlp", dataset="digits", widths=[8])
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    held = load_sets(JOB).holdout
    score = HoldoutScore("pgd5", held, holdout_attack("pgd5", None, eps=0.1))
    logits = model(held.x)
    assert bool((logits == logits[:1]).all())
    expected = (logits.argmax(1) == held.y).float().mean().item()
    assert score(model) == expected == HoldoutScore("clean", held, None)(model)


def test_the_options_round_trip_through_config_yaml_and_a_bare_resume(tmp_path):
    job = replace(JOB, select_eps=0.2, select_alpha=0.05)
    assert ClassifierJob.from_dict(job.to_dict()) == job
    assert ClassifierJob.from_dict(yaml.safe_load(yaml.safe_dump(job.to_dict()))) == job
    plain = ClassifierJob()  # a run saved before the options existed resumes unchanged
    assert not {"select_by", "holdout", "select_eps", "select_alpha"} & set(plain.to_dict())
    out = tmp_path / "run"
    res = runner.invoke(app, [*BASE, "--select-by", "clean", "--holdout", "50", "--out",
                              str(out)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "selected epoch" in text and "1 (held-out clean accuracy" in text
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["select_by"], saved["holdout"]) == ("clean", 50)
    assert "select_eps" not in saved
    # --config: the same selection in another run
    res = runner.invoke(app, ["train", "classifier", "--config", str(out / "config.yaml"),
                              "--no-progress", "--out", str(tmp_path / "again")])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    first = json.loads((out / "metrics.json").read_text())
    assert (again["select_by"], again["holdout"]) == ("clean", 50)
    assert again["holdout_clean_acc"] == first["holdout_clean_acc"]
    # another --holdout is another job: a resume refuses it
    res = runner.invoke(app, [*BASE, "--select-by", "clean", "--holdout", "60", "--epochs",
                              "2", "--out", str(out), "--resume"])
    assert res.exit_code == 2 and "holdout: 50 in the run, 60 given" in \
        " ".join(res.output.split())
    # a bare --resume continues with the run's selection
    res = runner.invoke(app, ["train", "classifier", "--epochs", "2", "--no-progress",
                              "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["history"]] == [1, 2]
    assert all("holdout_clean_acc" in r for r in metrics["history"])
    assert metrics["holdout"] == 50 and metrics["selected_epoch"] in (1, 2)


# --- torch.distributed ---------------------------------------------------------------------

@pytest.mark.slow
def test_two_processes_score_the_same_and_keep_the_same_epoch(selected, tmp_path):
    """Two gloo processes train ``JOB``: every rank measures the same held-out scores, keeps
    the same epoch and ends with the same weights; rank 0's run matches one process's (the
    tolerance of tests/test_distributed.py: float rounding may flip a point, 2 of 100 here),
    and the saved model scores what metrics.json says (the sharded attack gives exactly one
    process's numbers)."""
    from test_distributed import env, launcher

    out = tmp_path / "ddp"
    worker = Path(__file__).with_name("select_worker.py")
    done = subprocess.run(launcher(str(worker), str(out)), cwd=tmp_path, env=env(),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[:6000]
    ranks = [json.loads(Path(f"{out}.{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]
    assert len(ranks[0]["seen"]) == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert ranks[0]["selected_epoch"] == ranks[0]["best_epoch"] == metrics["selected_epoch"]
    assert [r[KEY] for r in metrics["history"]] == ranks[0]["seen"]
    alone = selected[1]
    assert metrics["selected_epoch"] == alone["selected_epoch"]
    for a, b in zip(metrics["history"], alone["history"], strict=True):
        assert a[KEY] == pytest.approx(b[KEY], abs=0.02)
    score = HoldoutScore("pgd5", load_sets(JOB).holdout, holdout_attack("pgd5", objective()))
    assert score(load_model(out)) == metrics[KEY]



def test_a_run_written_before_newer_settings_resumes(tmp_path):
    """A run whose config.yaml predates a setting (amp, compile) continues with its default."""
    import yaml

    from advlab.runs import check_resume

    run = tmp_path / "old"
    run.mkdir()
    old = {"command": "train classifier", "dataset": "digits", "model": "lrl",
           "train": {"epochs": 2, "lr": 0.001}}
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    now = {**old, "train": {"epochs": 3, "lr": 0.001, "amp": "none", "compile": False}}
    check_resume(run, now)  # no error: amp's default, compile may change
    with pytest.raises(ValueError, match="train.amp: 'none' in the run, 'bf16' given"):
        check_resume(run, {**now, "train": {**now["train"], "amp": "bf16"}})
