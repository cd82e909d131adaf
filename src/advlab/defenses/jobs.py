"""Run directories for the defenses built from a generative model (CLI: ``advlab defend``).

- ``train_latent_run``: a ``LatentClassifier`` (head on the codes of a trained AE/VAE run),
  trained in the ordinary loop with a checkpoint, so an interrupted run resumes; the training
  set's projection codes (``code="project"``, the expensive part) are saved in the run first.
- ``build_defense_gan_run``: a ``DefenseGAN`` from a generator run and a classifier run (nothing
  to train), with its clean accuracy on a seeded subset of the test set.

Both save ``model.safetensors`` with the generative model inside, so ``load_model``,
``advlab attack RUN`` and ``advlab eval robust RUN`` take the run like any classifier's.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from advlab import data
from advlab import generative as gen
from advlab.defenses.common import check_choice, check_int
from advlab.defenses.latent import (
    CODES,
    HEADS,
    DefenseGAN,
    LatentClassifier,
    latent_codes,
    train_latent_classifier,
)
from advlab.device import resolve_device
from advlab.eval.robust import predict
from advlab.io import load_state, save_state
from advlab.runs import (
    RunDir,
    check_epochs,
    check_out,
    check_resume,
    new_run_dir,
    training_run,
)
from advlab.train import TrainConfig
from advlab.train.loop import check_checkpoint
from advlab.weights import library_versions, load_model, read_model_meta, save_model

log = logging.getLogger(__name__)
CODES_FILE = "train_codes.safetensors"
CHECKPOINT = "checkpoint.safetensors"


@dataclass(frozen=True)
class LatentJob:
    generative: str  # run directory (or file) of a trained ae / vae
    head: str = "lrl"
    code: str = "encode"
    steps: int = 500  # projection (code="project")
    restarts: int = 1
    n_train: int | None = None  # a seeded class-balanced subset of the training set
    n_test: int | None = None  # test accuracy on a seeded subset (projection is slow)
    train: TrainConfig = TrainConfig()

    def __post_init__(self) -> None:
        check_choice("head", self.head, HEADS)
        check_choice("code", self.code, CODES)
        check_int("steps", self.steps)
        check_int("restarts", self.restarts)
        for key in ("n_train", "n_test"):
            if getattr(self, key) is not None:
                check_int(key, getattr(self, key))


def _dataset_of(path: str | Path, what: str) -> str:
    meta = read_model_meta(path)
    dataset = meta.get("dataset") or meta.get("spec", {}).get("dataset")
    if not dataset:
        raise ValueError(f"{path}: the {what} file does not name its data set")
    return dataset


def _test_subset(dataset: str, n: int | None, seed: int):
    test = data.load(dataset, "test")
    return data.subset(test, n, seed=seed) if n is not None and n < len(test) else test


def train_latent_run(job: LatentJob, out: str | Path | None = None, *, resume: bool = False,
                     progress: bool = True) -> tuple[RunDir, dict[str, Any]]:
    """Train ``job``'s head on the codes of its generative run into a run directory."""
    if resume and out is None:
        raise ValueError("--resume needs --out DIR naming the run to continue")
    check_out(out, exist_ok=resume, resumable=True)
    # Everything that can fail on the user's input fails here, before the run directory exists.
    resolve_device(job.train.device)
    gm = gen.load_generative(job.generative)
    if not hasattr(gm, "encode"):  # encode: the codes; project: BPDA's gradient (the encoder)
        raise ValueError(f"{job.generative}: a {gm.spec.get('name', 'generative')} model has no "
                         f"encoder; code={job.code} needs an ae or vae run")
    dataset = _dataset_of(job.generative, "generative-model")
    train = data.load(dataset, "train")
    if job.n_train is not None and job.n_train > len(train):
        raise ValueError(f"expected n_train <= {len(train)} (the {dataset} training set), got "
                         f"{job.n_train}")
    if job.n_train is not None and job.n_train < len(train):
        train = data.subset(train, job.n_train, seed=job.train.seed, balanced=True)
    config = {"command": "defend latent", "dataset": dataset,
              **{k: v for k, v in asdict(job).items() if k != "train"},
              "train": asdict(job.train)}
    if resume:  # checked before anything is written: a refused resume leaves the run as it was
        check_resume(out, config, checkpoint=CHECKPOINT)
        if (Path(out) / CHECKPOINT).is_file():
            check_checkpoint(Path(out) / CHECKPOINT, job.train)
        check_epochs(RunDir(Path(out)), Path(out) / CHECKPOINT, job.train.epochs)
    run = new_run_dir("latent", out, exist_ok=resume, resumable=True)
    with training_run(run):
        run.write_config(config)
        params = {"steps": job.steps, "restarts": job.restarts}
        codes = None
        codes_path = run.path / CODES_FILE
        if job.code == "project":
            if codes_path.is_file():  # written atomically: complete, or absent
                codes = load_state(codes_path)["codes"]
                if codes.shape != (len(train), gm.latent_dim):
                    codes = None  # from another subset: computed again
            if codes is None:
                log.info("projecting %d training images (%d steps, %d restarts)", len(train),
                         job.steps, job.restarts)
                codes = latent_codes(LatentClassifier(gm, torch.nn.Identity(), "project",
                                                      **params), train.x)
                save_state(codes_path, {"codes": codes.contiguous()})
        torch.manual_seed(job.train.seed)
        ckpt = run.path / CHECKPOINT
        model = train_latent_classifier(gm, train, head=job.head, code=job.code,
                                        config=job.train, progress=progress, codes=codes,
                                        checkpoint=ckpt, resume=resume and ckpt.is_file(),
                                        **params)
        model.cpu()
        test = _test_subset(dataset, job.n_test, job.train.seed)
        acc = (predict(model, test.x).argmax(1) == test.y).float().mean().item()
        metrics = {"dataset": dataset, "test_acc": acc, "n_test": len(test),
                   "n_train": len(train), "versions": library_versions()}
        save_model(run.path, model, {"dataset": dataset, "config": config,
                                     "metrics": {"test_acc": acc}})
        run.write_metrics(metrics)
        log.info("latent classifier %s/%s: test accuracy %.4f on %d points", job.code,
                 job.head, acc, len(test))
        return run, metrics


def build_defense_gan_run(generator: str | Path, classifier: str | Path,
                          out: str | Path | None = None, *, steps: int = 500,
                          restarts: int = 10, n_test: int = 100,
                          seed: int = 0) -> tuple[RunDir, dict[str, Any]]:
    """Compose a ``DefenseGAN`` of a generator run and a classifier run of the same data set,
    save it, and measure its clean accuracy on ``n_test`` seeded test points (0 = skip)."""
    check_int("n_test", n_test, low=0)
    check_int("steps", steps)
    check_int("restarts", restarts)
    gm = gen.load_generative(generator)
    clf = load_model(classifier)
    d_gen, d_clf = _dataset_of(generator, "generative-model"), _dataset_of(classifier,
                                                                           "classifier")
    if d_gen != d_clf:
        raise ValueError(f"the generator was trained on {d_gen!r} and the classifier on "
                         f"{d_clf!r}: expected the same data set")
    if tuple(gm.data_shape) != tuple(getattr(clf, "input_shape", gm.data_shape)):
        raise ValueError(f"the generator draws {tuple(gm.data_shape)} images, the classifier "
                         f"takes {tuple(clf.input_shape)}")
    model = DefenseGAN(gm, clf, steps=steps, restarts=restarts, seed=seed).eval()
    run = new_run_dir("defense-gan", out)
    with training_run(run):
        config = {"command": "defend defense-gan", "dataset": d_gen,
                  "generator": str(generator), "classifier": str(classifier), "steps": steps,
                  "restarts": restarts, "n_test": n_test, "seed": seed}
        run.write_config(config)
        metrics: dict[str, Any] = {"dataset": d_gen, "n_test": 0,
                                   "versions": library_versions()}
        if n_test:
            test = _test_subset(d_gen, n_test, seed)
            metrics["n_test"] = len(test)  # all of the test set when n_test exceeds it
            with torch.no_grad():
                proj = model.project(test.x)
                metrics["test_acc"] = (clf(proj.x_hat).argmax(1) == test.y).float().mean().item()
                metrics["classifier_test_acc"] = (clf(test.x).argmax(1) == test.y).float() \
                    .mean().item()
                metrics["reconstruction"] = ((proj.x_hat - test.x).flatten(1).norm(dim=1)
                                             / test.x.flatten(1).norm(dim=1).clamp_min(1e-12)) \
                    .mean().item()
        save_model(run.path, model, {"dataset": d_gen, "config": config,
                                     "metrics": {k: v for k, v in metrics.items()
                                                 if k != "versions"}})
        run.write_metrics(metrics)
        return run, metrics
