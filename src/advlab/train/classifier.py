"""Train a classifier of the zoo on a named data set into a run directory (CLI and demo use it)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from advlab import data, distributed, models
from advlab.config import from_dict, to_dict
from advlab.device import resolve_device
from advlab.eval.classification import confusion_matrix, evaluate, per_class_accuracy
from advlab.report import figures
from advlab.runs import RunDir, check_epochs, check_out, check_resume, new_run_dir, training_run
from advlab.train.config import TrainConfig
from advlab.train.loop import check_checkpoint, fit
from advlab.train.objective import Objective
from advlab.train.select import HoldoutScore, check_options, holdout_attack, split_holdout
from advlab.weights import library_versions, load_weights_into, save_model

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.safetensors"
SELECT_KEYS = ("select_by", "holdout", "select_eps", "select_alpha")  # ClassifierJob's fields


@dataclass(frozen=True)
class ClassifierJob:
    dataset: str = "digits"
    model: str = "mlp"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    n_train: int | None = None  # a seeded, class-balanced subset of the training set
    data_dir: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    init: str | None = None  # weights (run directory or file) to start from: fine-tuning
    # epoch selection (advlab.train.select): the epoch whose weights score best on ``holdout``
    # training points held out of training is kept; clean | fgsm | pgdN (e.g. pgd20)
    select_by: str | None = None
    holdout: int | None = None  # points held out of the training split for select_by
    select_eps: float | None = None  # the attack's ε (default: the defense's)
    select_alpha: float | None = None  # the PGD step (default: 2.5·ε/N)

    def __post_init__(self) -> None:
        check_options(self.select_by, self.holdout, self.select_eps, self.select_alpha)

    def to_dict(self) -> dict[str, Any]:
        # optional keys only when set: a run saved before they existed resumes unchanged
        optional = {k: getattr(self, k) for k in ("init", *SELECT_KEYS)
                    if getattr(self, k) is not None}
        return {"command": "train classifier", "dataset": self.dataset, "model": self.model,
                # JSON round trip: tuples become lists, so YAML can hold them.
                "model_kwargs": json.loads(json.dumps(dict(self.model_kwargs))),
                "n_train": self.n_train, "data_dir": self.data_dir, "train": to_dict(self.train),
                **optional}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifierJob:
        d = {k: v for k, v in d.items() if k != "command"}
        return from_dict(cls, d)


@dataclass(frozen=True)
class Splits:
    train: data.TensorSet  # what is trained on
    val: data.TensorSet | None  # --val-fraction of the training split
    test: data.TensorSet
    holdout: data.TensorSet | None  # --holdout points for --select-by, never trained on


def load_sets(job: ClassifierJob) -> Splits:
    """The job's data: the held-out points come out of the training split first (a
    permutation seeded by the training seed), then the --n-train subset and the validation
    split are drawn from the rest."""
    root = job.data_dir
    train = data.load(job.dataset, "train", root=root)
    test = data.load(job.dataset, "test", root=root)
    holdout = None
    if job.holdout is not None:
        train, holdout = split_holdout(train, job.holdout, job.train.seed)
    if job.n_train is not None:
        train = data.subset(train, job.n_train, seed=job.train.seed, balanced=True)
    val = None
    if job.train.val_fraction > 0:
        train, val = data.train_val_split(train, job.train.val_fraction, seed=job.train.seed)
    return Splits(train, val, test, holdout)


def load_splits(job: ClassifierJob):
    """(train, val, test) of ``load_sets``."""
    sets = load_sets(job)
    return sets.train, sets.val, sets.test


def train_classifier(job: ClassifierJob, out: str | Path | None = None, *, resume: bool = False,
                     objective: Objective | None = None, progress: bool = True,
                     extra_config: dict[str, Any] | None = None,
                     tensorboard: bool = False) -> tuple[RunDir, dict[str, Any]]:
    """Train ``job`` into a run directory and return it with the final metrics.

    With ``resume=True`` the run in ``out`` continues from its last completed epoch; the saved
    configuration must match ``job`` (more epochs are allowed).
    """
    if resume and out is None:
        raise ValueError("--resume needs --out DIR naming the run to continue")
    if job.train.patience and not job.train.val_fraction and job.select_by is None:
        raise ValueError(f"--patience {job.train.patience}: early stopping watches the "
                         f"validation accuracy (or the --select-by criterion), and there is no "
                         f"validation split; pass --val-fraction (e.g. 0.1) or drop --patience")
    check_out(out, exist_ok=resume, resumable=True)
    # Everything that can fail on the user's input fails here, before the run directory exists.
    resolve_device(job.train.device)
    sets = load_sets(job)
    train, val, test = sets.train, sets.val, sets.test
    select = None
    if job.select_by is not None:  # the defense's ε and norm: the objective knows them
        attack = holdout_attack(job.select_by, objective, job.select_eps, job.select_alpha)
        select = HoldoutScore(job.select_by, sets.holdout, attack, job.train.eval_batch_size)
    torch.manual_seed(job.train.seed)
    model = models.create(job.model, dataset=job.dataset, **job.model_kwargs)
    if job.init is not None:
        load_weights_into(model, job.init)
    if hasattr(objective, "prepare_model"):  # a defense that transforms the model
        model = objective.prepare_model(model)
    config = {**job.to_dict(), **(extra_config or {})}
    if resume:  # the run's config.yaml and its checkpoint (the reference) must fit the job
        ckpt = Path(out) / CHECKPOINT
        check_resume(out, config, checkpoint=CHECKPOINT)
        if ckpt.is_file():
            check_checkpoint(ckpt, job.train, model)
        check_epochs(RunDir(Path(out)), ckpt, job.train.epochs)
    if tensorboard:
        from advlab.train.tensorboard import check_available

        check_available()  # before the run directory exists
    run = new_run_dir("train", out, exist_ok=resume, resumable=True)
    ckpt = run.path / CHECKPOINT
    scalars = None
    if tensorboard and distributed.is_main():
        from advlab.train.tensorboard import EpochScalars

        scalars = EpochScalars(run.path)
    with training_run(run):
        run.write_config(config)
        log.info("training %s on %s (%d examples) into %s", job.model, job.dataset,
                 len(train), run.path)
        result = fit(model, train, job.train, objective=objective, val=val, test=test,
                     checkpoint=ckpt, resume=resume and ckpt.is_file(), progress=progress,
                     metadata={"run_config": config}, select=select, on_epoch=scalars)
        if scalars is not None:
            scalars.close()
        model.cpu()
        extra = {"best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
                 "epochs_completed": len(result.history),
                 "mean_epoch_seconds": sum(r["train_seconds"] for r in result.history)
                 / max(len(result.history), 1), "versions": library_versions()}
        if select is not None:  # the model holds the selected epoch's weights
            chosen = next(r for r in result.history if r["epoch"] == result.best_epoch)
            log.info("selected epoch %d of %d by %s on %d held-out points: %.4f",
                     result.best_epoch, len(result.history), job.select_by,
                     len(sets.holdout), chosen[select.key])
            extra.update({"selected_epoch": result.best_epoch, "select_by": job.select_by,
                          "holdout": len(sets.holdout), select.key: chosen[select.key],
                          "select_attack": select.attack.config() if select.attack else None})

        def save_numbers(m: dict[str, Any]) -> None:  # weights and metrics before figures
            selected = {k: extra[k] for k in ("selected_epoch",) if k in extra}
            save_model(run.path, model, {"dataset": job.dataset, "config": config,
                                         "metrics": {"test_acc": m["test_acc"], **selected}})
            run.write_metrics({**m, **extra})

        # under torchrun rank 0 alone saves and draws; every process gets its numbers
        metrics = distributed.on_main(report_classifier, run, model, test, result.history,
                                      save_numbers=save_numbers)
        metrics.update(extra)
        return run, metrics


def report_classifier(run: RunDir, model: torch.nn.Module, test, history=None, *,
                      save_numbers: Callable[[dict[str, Any]], None] | None = None
                      ) -> dict[str, Any]:
    """Test accuracy, per-class accuracy, confusion matrix and the figures of a classifier.

    The numbers come first: ``save_numbers(metrics)`` (saving the weights and metrics.json) is
    called before any figure is drawn, and a figure that fails is reported and skipped.
    Images get a grid of predictions; 2-D points a scatter coloured by prediction.
    """
    ev = evaluate(model, test)
    k = test.info.num_classes
    cm = confusion_matrix(test.y, ev.pred, k)
    per_class = per_class_accuracy(cm)
    metrics = {
        "dataset": test.info.name,
        **({"dataset_title": test.info.title} if test.info.title != test.info.name else {}),
        "n_test": len(test),
        "test_acc": ev.accuracy,
        "test_loss": ev.loss,
        "per_class_acc": {c: float(a) for c, a in zip(test.classes, per_class)},
        "confusion_matrix": cm.tolist(),
        "history": list(history or []),
    }
    if save_numbers is not None:
        save_numbers(metrics)
    figs = run.figures
    drawings: list[tuple[str, Callable[[], object]]] = []
    if history:
        drawings.append(("learning_curves", lambda: figures.learning_curves(
            history, figs / "learning_curves.png")))
    drawings.append(("confusion_matrix", lambda: figures.confusion_matrix(
        cm, test.classes, figs / "confusion_matrix.png")))
    if test.info.kind == "points":
        drawings.append(("predictions", lambda: figures.point_predictions(
            test.x, test.y, ev.pred, figs / "predictions.png")))
    else:
        g = torch.Generator().manual_seed(0)
        idx = torch.randperm(len(test), generator=g)[:32]
        conf, _ = ev.probs[idx].max(1)
        drawings.append(("predictions", lambda: figures.prediction_grid(
            test.x[idx], test.y[idx], ev.pred[idx], conf, test.classes,
            figs / "predictions.png")))
    for name, draw in drawings:
        try:
            draw()
        except Exception as e:  # a figure never costs the run its numbers
            log.warning("figure %s was not drawn (%s: %s); the numbers are not affected",
                        name, type(e).__name__, e)
    return metrics
