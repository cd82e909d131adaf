"""The training loop: learning, resume-after-kill equivalence, NaN handling, early stopping."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from advlab import data, models
from advlab.io import load_state
from advlab.train import StepOutput, TrainConfig, TrainingDiverged, fit
from advlab.train.classifier import ClassifierJob, train_classifier
from advlab.weights import load_model, save_model


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", "train"), data.load("digits", "test")


def _cfg(**kw):
    base = dict(epochs=4, batch_size=64, lr=2e-3, seed=3, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_fit_learns_digits(digits):
    train, test = digits
    torch.manual_seed(0)
    model = models.create("mlp", dataset="digits")
    result = fit(model, train, _cfg(epochs=8), test=test, progress=False)
    assert [r["epoch"] for r in result.history] == list(range(1, 9))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.history[-1]["test_acc"] > 0.9
    assert not model.training  # the loop leaves the model in eval mode


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted_run(digits, tmp_path):
    """A run killed after epoch 2 and resumed gives bit-identical weights (dropout included)."""
    train, _ = digits
    cfg = _cfg(epochs=4)

    torch.manual_seed(0)
    ref = models.create("fmnist-cnn", dataset="digits")  # has dropout: RNG state must resume
    fit(ref, train, cfg, progress=False)

    ckpt = tmp_path / "ckpt.safetensors"
    torch.manual_seed(0)
    first = models.create("fmnist-cnn", dataset="digits")

    def kill_after_two(row):
        if row["epoch"] == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        fit(first, train, cfg, checkpoint=ckpt, progress=False, on_epoch=kill_after_two)
    assert load_state(ckpt)["epoch"] == 2

    torch.manual_seed(123)  # a different process state: resume must not depend on it
    resumed = models.create("fmnist-cnn", dataset="digits")
    result = fit(resumed, train, cfg, checkpoint=ckpt, resume=True, progress=False)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_resume_refuses_a_changed_configuration(digits, tmp_path):
    train, _ = digits
    ckpt = tmp_path / "c.safetensors"
    fit(models.create("mlp", dataset="digits"), train, _cfg(epochs=1), checkpoint=ckpt,
        progress=False)
    with pytest.raises(ValueError, match="lr: checkpoint 0.002 vs now 0.1"):
        fit(models.create("mlp", dataset="digits"), train, _cfg(epochs=2, lr=0.1),
            checkpoint=ckpt, resume=True, progress=False)
    with pytest.raises(ValueError, match="another architecture"):
        fit(models.create("lrl", dataset="digits"), train, _cfg(epochs=2), checkpoint=ckpt,
            resume=True, progress=False)


class _NaNAfter:
    """Cross-entropy that turns NaN at a given call, as a diverging run would."""

    name = "nan-after"

    def __init__(self, at):
        self.at, self.calls = at, 0

    def __call__(self, model, x, y):
        self.calls += 1
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        if self.calls >= self.at:
            loss = loss * float("nan")
        return StepOutput(loss=loss, logits=logits)


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(digits, tmp_path):
    train, _ = digits
    ckpt = tmp_path / "c.safetensors"
    steps_per_epoch = (len(train) + 63) // 64
    model = models.create("mlp", dataset="digits")
    with pytest.raises(TrainingDiverged, match=r"epoch 2, batch 3.*epoch 1\) is kept"):
        fit(model, train, _cfg(epochs=3), objective=_NaNAfter(steps_per_epoch + 3),
            checkpoint=ckpt, progress=False)
    state = load_state(ckpt)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_nan_in_the_first_epoch_says_there_is_no_checkpoint(digits, tmp_path):
    train, _ = digits
    ckpt = tmp_path / "c.safetensors"
    model = models.create("mlp", dataset="digits")
    with pytest.raises(TrainingDiverged, match="No epoch finished, so there is no checkpoint"):
        fit(model, train, _cfg(epochs=2), objective=_NaNAfter(2), checkpoint=ckpt,
            progress=False)
    assert not ckpt.exists()


def test_logged_lr_is_the_one_used_in_the_last_step(digits):
    train, _ = digits
    model = models.create("mlp", dataset="digits")
    result = fit(model, train, _cfg(epochs=2, schedule="cyclic", lr=0.01), progress=False)
    lrs = [row["lr"] for row in result.history]
    assert all(0 < lr <= 0.01 for lr in lrs)  # the step after the last is never reported


def test_early_stopping_restores_best_weights(digits):
    train, test = digits
    train, val = data.train_val_split(train, 0.2, seed=0)
    model = models.create("mlp", dataset="digits")
    # A learning rate so high that validation accuracy stops improving quickly.
    result = fit(model, train, _cfg(epochs=30, lr=0.5, optimizer="sgd", patience=2), val=val,
                 progress=False)
    assert result.stopped_early
    assert len(result.history) < 30
    best = max(result.history, key=lambda r: r["val_acc"])
    assert result.best_epoch == best["epoch"]


def test_train_classifier_writes_a_complete_run_directory(tmp_path):
    job = ClassifierJob(dataset="digits", model="mlp", train=_cfg(epochs=2))
    run, metrics = train_classifier(job, tmp_path / "run", progress=False)
    for name in ("config.yaml", "metrics.json", "model.safetensors", "model.json", "log.txt",
                 "checkpoint.safetensors", "figures/learning_curves.png",
                 "figures/confusion_matrix.png", "figures/predictions.png"):
        assert (run.path / name).is_file(), name
    model = load_model(run.path)
    assert metrics["test_acc"] > 0.5
    assert len(metrics["confusion_matrix"]) == 10
    with pytest.raises(ValueError, match="not empty"):
        train_classifier(job, tmp_path / "run", progress=False)  # never overwrite a run
    other = models.create("lrl", dataset="digits")
    save_model(tmp_path / "other", other)
    from advlab.weights import load_weights_into

    with pytest.raises(ValueError, match="another architecture"):
        load_weights_into(model, tmp_path / "other")


def test_cli_train_killed_then_resumed(tmp_path):
    """A real `advlab train` process killed with SIGKILL resumes to the same final weights."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    args = [sys.executable, "-m", "advlab.cli.main", "train", "classifier", "--dataset",
            "digits", "--model", "mlp", "--epochs", "40", "--batch-size", "16", "--seed", "1",
            "--device", "cpu", "--no-progress"]
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(args + ["--out", str(ref_out)], check=True, env=env, capture_output=True)

    proc = subprocess.Popen(args + ["--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoint.safetensors"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and load_state(ckpt)["epoch"] >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.safetensors").exists()
    done = subprocess.run(args + ["--out", str(out), "--resume"], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    a, b = load_model(ref_out), load_model(out)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


@pytest.mark.parametrize("schedule", ["cosine", "step", "onecycle", "cyclic"])
def test_learning_rate_schedules(schedule):
    from advlab.train.loop import make_optimizer, make_scheduler

    config = TrainConfig(epochs=10, lr=5e-3, schedule=schedule, step_size=4, gamma=0.5)
    model = torch.nn.Linear(3, 2)
    opt = make_optimizer(model, config)
    scheduler, per_batch = make_scheduler(opt, config, steps_per_epoch=20)
    lrs = []
    for _ in range(config.epochs):
        for _ in range(20 if per_batch else 1):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            scheduler.step()
    assert per_batch == (schedule in ("onecycle", "cyclic"))
    assert max(lrs) == pytest.approx(5e-3, rel=1e-3)
    if schedule == "cyclic":  # Wong et al.: linear from ~0 up to lr at 2/5, then down to ~0
        assert lrs[0] < 1e-6 and lrs[-1] < 5e-3 * 0.01
        assert max(range(len(lrs)), key=lrs.__getitem__) == pytest.approx(0.4 * 200, abs=1)
        assert lrs[40] == pytest.approx(5e-3 * 40 / 79, rel=1e-3)  # linear ramp (peak at 79)
    if schedule == "step":
        assert lrs[4] == pytest.approx(2.5e-3) and lrs[8] == pytest.approx(1.25e-3)


def test_the_time_of_an_objectives_start_inputs_counts_in_the_first_epoch():
    """Inputs computed once before training (e.g. DeepFool examples of the starting model) are
    training cost: their time is in the first epoch's train_seconds, not lost."""
    from advlab.train.objective import CrossEntropy

    class Prepared(CrossEntropy):
        def start_inputs(self, model, x, y):
            time.sleep(0.3)
            return x.clone()

    train = data.load("digits", "train").subset(torch.arange(64))
    model = models.create("mlp", dataset="digits", widths=[8])
    result = fit(model, train, TrainConfig(epochs=2, batch_size=64, device="cpu"),
                 objective=Prepared(), progress=False)
    first, second = (r["train_seconds"] for r in result.history)
    assert first >= 0.3 > second
    assert result.history[0]["epoch_seconds"] >= first
