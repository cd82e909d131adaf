"""Train a generative model on a named data set into a run directory (CLI, demo, benchmark).

The run directory holds ``config.yaml``, ``checkpoint.safetensors`` (resumable),
``model.safetensors`` (final weights + spec), ``metrics.json``, ``log.txt`` and ``figures/``:
samples of fixed codes (final grid and across epochs), loss curves, and by model and data kind
reconstructions, a 2-D latent map coloured by class, latent interpolations, and for the 2-D
toys the samples over the true modes at several epochs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from advlab import data, distributed
from advlab.config import from_dict, to_dict
from advlab.device import resolve_device
from advlab.eval import generative as scores
from advlab.generative import figures
from advlab.generative.autoencoder import VAE, Autoencoder
from advlab.generative.base import GenerativeModel, create
from advlab.generative.train import (
    GenerativeFitResult,
    GenerativeTrainConfig,
    check_checkpoint,
    check_objective,
    fit_generative,
)
from advlab.generative.weights import save_generative
from advlab.runs import (
    RunDir,
    check_epochs,
    check_out,
    check_resume,
    new_run_dir,
    training_run,
)
from advlab.train.tensorboard import EpochScalars, chain, check_available
from advlab.weights import library_versions

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.safetensors"
LOSS_KEYS = {"autoencoder": ("loss", "recon_nll", "kl"),
             "adversarial": ("loss_d", "loss_g", "wasserstein", "gp")}
QUALITY_KEYS = ("inception_score", "frechet_distance")


@dataclass(frozen=True)
class GenerativeJob:
    dataset: str = "digits"
    model: str = "vae"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    n_train: int | None = None  # a seeded subset of the training set
    n_eval: int | None = None  # test examples for the likelihood bounds (None: all)
    n_quality: int = 10_000  # samples scored with the classifier (IS / Fréchet distance)
    classifier: str | None = None  # advlab classifier (run dir or weights) for IS / FD
    figure_every: int = 5  # epochs between progress figures (the final ones are always drawn)
    n_epoch_quality: int = 2000  # with a classifier: samples scored after every epoch (0: off)
    data_dir: str | None = None
    train: GenerativeTrainConfig = field(default_factory=GenerativeTrainConfig)

    def __post_init__(self) -> None:
        for name in ("n_quality", "n_epoch_quality", "figure_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
        for name in ("n_train", "n_eval"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 1):
                raise ValueError(f"{name}: expected None or an integer >= 1, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"command": "train generative", "dataset": self.dataset, "model": self.model,
                "model_kwargs": json.loads(json.dumps(dict(self.model_kwargs))),
                "n_train": self.n_train, "n_eval": self.n_eval, "n_quality": self.n_quality,
                "classifier": self.classifier, "figure_every": self.figure_every,
                "n_epoch_quality": self.n_epoch_quality,
                "data_dir": self.data_dir,
                "train": to_dict(self.train)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenerativeJob:
        d = {k: v for k, v in d.items() if k != "command"}
        return from_dict(cls, d)


# what a resume may change besides epochs and device: the scoring and figure options
_FREE_ON_RESUME = ("data_dir", "model_spec", "classifier", "n_quality", "n_epoch_quality",
                   "figure_every")


def load_splits(job: GenerativeJob) -> tuple[data.TensorSet, data.TensorSet]:
    train = data.load(job.dataset, "train", root=job.data_dir)
    test = data.load(job.dataset, "test", root=job.data_dir)
    if job.n_train is not None:
        train = data.subset(train, job.n_train, seed=job.train.seed)
    return train, test


def train_generative(job: GenerativeJob, out: str | Path | None = None, *, resume: bool = False,
                     progress: bool = True, given: Iterable[str] = (),
                     tensorboard: bool = False) -> tuple[RunDir, dict[str, Any]]:
    """Train ``job`` into a run directory and return it with the final metrics.

    With ``resume=True`` the run in ``out`` continues from its last completed epoch; the saved
    configuration must match ``job`` (more epochs are allowed). ``given``: the training
    settings the user set explicitly (a model-specific one is refused for another model even
    at its default value).

    Under torchrun (``advlab.distributed``) the processes train data-parallel
    (``advlab.generative.train``) and rank 0 alone writes the run directory.
    """
    if resume and out is None:
        raise ValueError("--resume needs --out DIR naming the run to continue")
    check_out(out, exist_ok=resume, resumable=True)
    # Everything that can fail on the user's input fails here, before the run directory exists.
    classifier = _load_classifier(job) if job.classifier else None
    train, test = load_splits(job)
    torch.manual_seed(job.train.seed)
    model = create(job.model, dataset=job.dataset, **job.model_kwargs)
    check_objective(model, job.train, given)  # the loss, ema and model-specific settings
    resolve_device(job.train.device)  # an unknown or unavailable device
    config = {**job.to_dict(), "model_spec": model.spec}
    if resume:  # the run's config.yaml and its checkpoint (the reference) must fit the job
        ckpt = Path(out) / CHECKPOINT
        check_resume(out, config, _FREE_ON_RESUME, "--epochs, --device and the scoring "
                     "options --classifier, --n-epoch-quality", checkpoint=CHECKPOINT)
        if ckpt.is_file():
            check_checkpoint(ckpt, job.train, model)
        check_epochs(RunDir(Path(out)), ckpt, job.train.epochs)
    if tensorboard:
        check_available()  # before the run directory exists
    run = new_run_dir("generative", out, exist_ok=resume, resumable=True)
    with training_run(run):
        run.write_config(config)
        ckpt = run.path / CHECKPOINT
        toy = train.info.kind == "points"
        log.info("training %s on %s (%d examples) into %s", job.model, job.dataset, len(train),
                 run.path)
        if toy:
            epoch_metrics = _toy_metrics(job.dataset)
        elif classifier is not None and job.n_epoch_quality:
            epoch_metrics = _quality_metrics(classifier, test, job.n_epoch_quality)
        else:
            epoch_metrics = None
        result = fit_generative(
            model, train, job.train, checkpoint=ckpt, resume=resume and ckpt.is_file(),
            progress=progress, epoch_metrics=epoch_metrics,
            on_epoch=chain(lambda row, m: _progress_figures(run, m.family, ckpt, job, test, row),
                           EpochScalars(run.path)
                           if tensorboard and distributed.is_main() else None),
            metadata={"dataset": job.dataset, "run_config": config})
        model.cpu().eval()

        def finish() -> dict[str, Any]:  # scores, figures, weights and metrics.json
            with distributed.local():
                metrics = report_generative(run, model, train, test, result, job, classifier)
                save_generative(run.path, model, {"dataset": job.dataset, "config": config,
                                                  "metrics": _headline(metrics)})
                metrics["versions"] = library_versions()
                run.write_metrics(metrics)
                return metrics

        # under torchrun rank 0 alone scores, draws and writes; every process gets its numbers
        return run, distributed.on_main(finish)


def _load_classifier(job: GenerativeJob):
    from advlab.weights import load_model, read_model_meta

    clf = load_model(job.classifier)
    # a classifier of another data set of the same shape (fashion-mnist for mnist) would load
    # and score, with the wrong classes: its recorded data set must be the job's
    meta = read_model_meta(job.classifier)
    trained_on = meta.get("dataset") or (meta.get("spec") or {}).get("dataset")
    if trained_on is not None and trained_on != job.dataset:
        raise ValueError(f"classifier {job.classifier} is a model of {trained_on!r}, expected "
                         f"one of the job's data set {job.dataset!r}")
    shape = data.info(job.dataset).shape
    if tuple(clf.input_shape) != tuple(shape):
        raise ValueError(f"classifier {job.classifier}: expected inputs of shape {shape} "
                         f"({job.dataset}), it takes {tuple(clf.input_shape)}")
    return clf


def _toy_metrics(dataset: str):
    centers, sigma = data.toy_modes(dataset)

    def metrics(model: GenerativeModel, samples: torch.Tensor) -> dict[str, float]:
        cov = scores.mode_coverage(samples, centers, sigma)
        return {"modes": cov.modes_covered, "hq": cov.high_quality_fraction}

    return metrics


def _draw(model: GenerativeModel, n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` samples on the CPU, in batches of 1000, prior draws from ``g``."""
    return torch.cat([model.sample(min(1000, n - i), g).cpu() for i in range(0, n, 1000)])


def _quality_metrics(classifier, test: data.TensorSet, n: int):
    """After each epoch: IS and Fréchet distance of ``n`` samples (the same codes every epoch,
    drawn from a private generator: training's RNG stream is untouched) against the first
    ``n`` test images. The samples come from the weights the snapshots use (the moving
    average when there is one). Fewer samples than the final score: a curve to compare epochs
    of one run (the Fréchet distance of fewer samples is biased upwards)."""
    n = min(n, len(test))
    ref_feats, _ = scores.classifier_features(classifier, test.x[:n])

    def metrics(model: GenerativeModel, samples: torch.Tensor) -> dict[str, float]:
        x = _draw(model, n, torch.Generator().manual_seed(271828))
        feats, probs = scores.classifier_features(classifier, x)
        return {"inception_score": scores.inception_score(probs)[0],
                "frechet_distance": scores.frechet_distance(feats, ref_feats)}

    return metrics


def _progress_figures(run: RunDir, family: str, ckpt: Path, job: GenerativeJob,
                      test: data.TensorSet, row: dict[str, float]) -> None:
    """Every ``figure_every`` epochs but the last: loss curves and the samples so far, read
    back from the checkpoint (so a resumed run draws its whole history)."""
    from advlab.io import load_state

    epoch = int(row["epoch"])
    if not job.figure_every or epoch % job.figure_every or epoch == job.train.epochs:
        return
    state = load_state(ckpt)
    snapshots = [(int(s["epoch"]), s["samples"]) for s in state["snapshots"]]
    _history_figures(run, family, state["history"], snapshots, job, test)


def _history_figures(run: RunDir, family: str, history: list[dict[str, float]],
                     snapshots: list[tuple[int, torch.Tensor]], job: GenerativeJob,
                     test: data.TensorSet) -> None:
    """Loss curves; fixed-code samples (last and across epochs) or, for the toys, samples over
    the true modes at several epochs."""
    figs = run.figures
    figures.loss_curves(history, LOSS_KEYS[family], figs / "loss_curves.png",
                        title=f"{job.model}: mean losses per epoch")
    if history and "inception_score" in history[-1]:
        scored = [r for r in history if "inception_score" in r]
        figures.loss_curves(scored, QUALITY_KEYS, figs / "quality_over_epochs.png",
                            title=f"{job.model}: classifier scores of {job.n_epoch_quality} "
                                  f"samples per epoch")
    if not snapshots:
        return
    shown = _pick(snapshots)
    if test.info.kind == "points":
        centers, sigma = data.toy_modes(job.dataset)
        rows = {int(r["epoch"]): r for r in history}
        labels = [f"{rows[e]['modes']} modes, {100 * rows[e]['hq']:.1f}% hq"
                  if "modes" in rows.get(e, {}) else "" for e, _ in shown]
        figures.toy_snapshots(shown, centers, sigma, figs / "samples_over_modes.png",
                              real=test.x[:len(snapshots[-1][1])], scores=labels)
    else:
        epoch, last = snapshots[-1]
        figures.image_grid(last, figs / "samples.png",
                           title=f"{job.model} on {job.dataset}: fixed codes, epoch {epoch}")
        figures.sample_grids(shown, figs / "samples_over_epochs.png")


def _pick(snapshots: list[tuple[int, torch.Tensor]], k: int = 6) -> list[tuple[int, torch.Tensor]]:
    if len(snapshots) <= k:
        return list(snapshots)
    idx = torch.linspace(0, len(snapshots) - 1, k).round().long().unique().tolist()
    return [snapshots[i] for i in idx]


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("test_negative_elbo", "test_iw_nll", "test_recon_nll", "modes_covered",
            "high_quality_fraction", "inception_score", "frechet_distance")
    return {k: metrics[k] for k in keys if k in metrics}


def report_generative(run: RunDir, model: GenerativeModel, train: data.TensorSet,
                      test: data.TensorSet, result: GenerativeFitResult, job: GenerativeJob,
                      classifier=None) -> dict[str, Any]:
    """Final scores and figures of a trained model (CPU, eval mode)."""
    figs = run.figures
    history = result.history
    metrics: dict[str, Any] = {
        "dataset": job.dataset, "model": job.model, "epochs_completed": len(history),
        "mean_epoch_seconds": sum(r["train_seconds"] for r in history) / max(len(history), 1),
        "final": {k: v for k, v in (history[-1] if history else {}).items()},
        "history": history,
    }
    _history_figures(run, model.family, history, result.snapshots, job, test)
    g = torch.Generator().manual_seed(job.train.seed + 12345)
    if train.info.kind == "points":
        centers, sigma = data.toy_modes(job.dataset)
        final = result.snapshots[-1][1]
        cov = scores.mode_coverage(final, centers, sigma)
        real = test.x[:len(final)]
        real_cov = scores.mode_coverage(real, centers, sigma)
        metrics.update(modes_covered=cov.modes_covered, num_modes=cov.num_modes,
                       high_quality_fraction=cov.high_quality_fraction,
                       mode_counts=cov.counts, n_scored=len(final),
                       real_data={"modes_covered": real_cov.modes_covered,
                                  "high_quality_fraction": real_cov.high_quality_fraction},
                       mode_rule=f"high quality: within 3 sigma (sigma={sigma}) of the nearest "
                                 f"mode centre; a mode is covered by >= 1 such sample, "
                                 f"{len(final)} samples")
    if isinstance(model, Autoencoder):
        x_eval = test.x if job.n_eval is None else test.x[:job.n_eval]
        with torch.no_grad():
            recon = model.reconstruct(x_eval[:1000])
            codes = model.encode(test.x[:2000])
        if train.info.kind == "image":
            figures.reconstructions(test.x[:10], recon[:10], figs / "reconstructions.png")
        figures.latent_scatter(codes, test.y[:2000], test.classes, figs / "latent.png",
                               title=f"{job.model} codes of test data")
        if isinstance(model, VAE):
            metrics["test_negative_elbo"] = scores.negative_elbo(model, x_eval, generator=g)
            metrics["test_iw_nll"] = scores.iw_nll(model, x_eval, k=100, generator=g)
            metrics["n_eval"] = len(x_eval)
            metrics["units"] = "nats per example"
        else:
            with torch.no_grad():
                nll = -model.log_likelihood(x_eval[:1000], model.decoder_output(
                    model.encode(x_eval[:1000]))).mean()
            metrics["test_recon_nll"] = float(nll)
        z_ends = model.encode(test.x[:8]).detach()
    else:
        z_ends = model.prior_sample(8, g)
    if train.info.kind == "image":
        t = torch.linspace(0, 1, 10).reshape(1, 10, 1)
        z_path = z_ends[0::2, None] * (1 - t) + z_ends[1::2, None] * t  # (4, 10, d)
        with torch.no_grad():
            rows = model.decode(z_path.reshape(-1, model.latent_dim))
        figures.interpolations(rows.reshape(4, 10, *model.data_shape), figs / "interpolation.png")
    if classifier is not None and train.info.kind == "image":
        metrics.update(_quality(model, classifier, train, test, job, g))
        if any("inception_score" in r for r in history):
            metrics["epoch_quality"] = {
                "n": min(job.n_epoch_quality, len(test)),
                "note": "history rows: IS / FD of these many samples (same codes each epoch) "
                        "against as many test images; compare epochs, not runs of another n"}
    return metrics


def _quality(model: GenerativeModel, classifier, train, test, job: GenerativeJob,
             g: torch.Generator) -> dict[str, Any]:
    """Classifier-based IS and Fréchet distance of samples and of held-out real data."""
    n = min(job.n_quality, len(train), len(test))
    samples = _draw(model, n, g)
    ref = test.x[:n]
    fake = scores.sample_quality(classifier, samples, ref)
    idx = torch.randperm(len(train), generator=g)[:n]
    real = scores.sample_quality(classifier, train.x[idx], ref)
    return {"inception_score": fake.inception_score,
            "inception_score_std": fake.inception_score_std,
            "frechet_distance": fake.frechet_distance, "n_quality": n,
            "real_data": {"inception_score": real.inception_score,
                          "frechet_distance": real.frechet_distance,
                          "note": "training images vs the test set: the ceiling"},
            "classifier": job.classifier}
