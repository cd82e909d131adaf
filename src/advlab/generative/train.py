"""Training of generative models: one loop for the autoencoders and the adversarial family.

Data are in-memory tensors; batches are slices of a seeded index on the device. An *epoch* is
``steps_per_epoch`` generator (or autoencoder) steps; 0 means one pass over the training set
(for the adversarial models: the discriminator sees every real example once, in batches of
``batch_size``, ``d_steps`` of them per generator step). The 2-D toys use a fixed number of
steps per epoch instead, since their training sets are samples of a known density.

At the start of epoch e the global RNG is seeded with (seed, e) and the batch order drawn from
a generator seeded the same way, so an epoch's randomness (latent draws, gradient-penalty
interpolation, VAE noise) depends only on the seed, the epoch and the state at its start: a run
killed and resumed from its last checkpoint (written atomically after every epoch with the
weights, both optimizers, the history and the snapshots) ends with the same weights as an
uninterrupted one. A NaN or infinite loss raises ``TrainingDiverged``, keeping the last good
checkpoint.

Under torchrun (``advlab.distributed``) the processes train data-parallel as the classifier
loop does: every process holds the data and draws the same batch order, and each global batch
of ``batch_size`` rows is split over the processes (rank r takes the r-th contiguous part).
Every random tensor of a step (latent codes, VAE noise, the gradient penalty's interpolation
weights) is drawn for the whole global batch on every process, which keeps its rows: the
processes share one random stream, the single process's, and a step is that process's step on
the same batch. Gradients are averaged by ``DistributedDataParallel``: the autoencoder's loss
through one DDP module (``distributed.data_parallel_call``), the generator and the critic each
through their own (``distributed.data_parallel``); each process's loss is weighted by its share
of the rows, so the average is the global batch's mean. Batch-norm buffers are rank 0's after
every step, the epoch's numbers are summed over the processes, and rank 0 alone writes the
checkpoint and calls ``on_epoch``.

With ``amp="bf16"`` every step's forward passes and losses (the gradient penalty's input
gradient included) run under ``torch.autocast`` in bfloat16; backward passes, optimizers,
weights, the moving average and the snapshots stay in float32 (``advlab.train.loop``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from advlab import distributed
from advlab.config import check_types, to_dict
from advlab.data.base import TensorSet
from advlab.device import resolve_device
from advlab.generative.adversarial import AdversarialModel
from advlab.generative.autoencoder import AE, VAE, Autoencoder
from advlab.generative.base import GenerativeModel
from advlab.generative.losses import (
    GENERATOR_LOSSES,
    critic_loss,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
)
from advlab.generative.weights import load_checked
from advlab.io import load_state, save_state
from advlab.train.checkpoint import check_resumable, header_weights, kept_checkpoint, read_header
from advlab.train.config import check_precision
from advlab.train.loop import TrainingDiverged, autocast
from advlab.train.progress import EpochProgress

log = logging.getLogger(__name__)
CHECKPOINT_KIND = "advlab-generative-checkpoint"
LR_DECAYS = ("none", "linear")
AMP_MODES = ("none", "bf16")  # fp16 (a gradient scaler per network) is not offered here


@dataclass(frozen=True)
class GenerativeTrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3  # Adam step size of the generator / autoencoder
    lr_critic: float | None = None  # of the discriminator / critic (None: lr)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's (beta1, beta2)
    d_steps: int = 1  # discriminator (critic) steps per generator step: k, n_critic
    loss: str = "non-saturating"  # generator loss: non-saturating | minimax | wasserstein
    gp_weight: float = 10.0  # gradient-penalty lambda (wgan-gp only)
    real_label: float = 1.0  # gan/dcgan: target of real examples; 0.9 = one-sided smoothing
    steps_per_epoch: int = 0  # generator / autoencoder steps per epoch; 0 = one data pass
    lr_decay: str = "none"  # "linear": both step sizes fall linearly to 0 at the last step
    ema: float = 0.0  # adversarial: decay of a moving average of the generator's weights,
    #                   used for snapshots and kept at the end (0 = off; Yazici et al. 2019)
    snapshot_every: int = 1  # epochs between recorded fixed-noise samples (0 = end only)
    n_snapshot: int = 64  # fixed-noise samples per snapshot
    seed: int = 0  # init, batch order, latent draws
    device: str = "auto"  # auto | cpu | cuda | mps
    amp: str = "none"  # "bf16": the steps' forward passes and losses under torch.autocast

    def __post_init__(self) -> None:
        check_types(self)
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp: expected one of {AMP_MODES}, got {self.amp!r}")
        for name in ("epochs", "batch_size", "d_steps", "n_snapshot"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        for name in ("steps_per_epoch", "snapshot_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
        for name in ("lr", "lr_critic"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                none = " or None (lr)" if name == "lr_critic" else ""
                raise ValueError(f"{name}: expected a finite number > 0{none}, got {value!r}")
        if len(self.betas) != 2 or not all(math.isfinite(b) and 0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {self.betas!r}")
        if self.loss not in GENERATOR_LOSSES:
            raise ValueError(f"loss: expected one of {GENERATOR_LOSSES}, got {self.loss!r}")
        if not (math.isfinite(self.ema) and 0.0 <= self.ema < 1.0):
            raise ValueError(f"ema: expected a decay in [0, 1), got {self.ema!r}")
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"lr_decay: expected one of {LR_DECAYS}, got {self.lr_decay!r}")
        if not (math.isfinite(self.gp_weight) and self.gp_weight >= 0):
            raise ValueError(f"gp_weight: expected a finite number >= 0, got {self.gp_weight!r}")
        if not (math.isfinite(self.real_label) and 0.5 < self.real_label <= 1.0):
            raise ValueError(f"real_label: expected a target in (0.5, 1] (0.9: one-sided label "
                             f"smoothing), got {self.real_label!r}")


# Defaults by model and data kind ("image" / "points"), refined per data set; the fields not
# named keep GenerativeTrainConfig's defaults. Images: the papers' settings (wgan-gp: Gulrajani
# et al.'s lambda 10, n_critic 5, Adam 1e-4, betas (0, 0.9); gan: the source report's k = 4).
# Points: an epoch is a fixed number of generator steps (the toys' data are samples of a known
# mixture) and the adversarial models follow Gulrajani et al.'s toy code (gan_toy.py: lambda
# 0.1 "helps for toy tasks", betas (0.5, 0.9)) with a larger step size that falls linearly to
# 0, so the modes end sharp within a CPU budget: this is what `advlab train generative --model
# wgan-gp --dataset ring8` runs with no other option (see docs/guide-generative.md).
RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    ("ae", "image"): dict(epochs=20, batch_size=128, lr=1e-3),
    ("vae", "image"): dict(epochs=20, batch_size=128, lr=1e-3),
    ("ae", "points"): dict(epochs=10, batch_size=256, lr=1e-3, steps_per_epoch=500,
                           n_snapshot=2500),
    ("vae", "points"): dict(epochs=10, batch_size=256, lr=1e-3, steps_per_epoch=500,
                            n_snapshot=2500),
    ("gan", "image"): dict(epochs=30, batch_size=64, lr=2e-4, betas=(0.5, 0.999), d_steps=4,
                           loss="non-saturating"),
    ("gan", "points"): dict(epochs=10, batch_size=64, lr=1e-3, betas=(0.5, 0.9), d_steps=4,
                            loss="non-saturating", steps_per_epoch=400, lr_decay="linear",
                            n_snapshot=2500),
    ("dcgan", "image"): dict(epochs=10, batch_size=64, lr=2e-4, betas=(0.5, 0.999), d_steps=1,
                             loss="non-saturating"),
    ("wgan-gp", "image"): dict(epochs=10, batch_size=64, lr=1e-4, betas=(0.0, 0.9), d_steps=5,
                               loss="wasserstein", gp_weight=10.0),
    ("wgan-gp", "points"): dict(epochs=10, batch_size=64, lr=1e-3, betas=(0.5, 0.9), d_steps=5,
                                loss="wasserstein", gp_weight=0.1, steps_per_epoch=400,
                                lr_decay="linear", n_snapshot=2500),
    # 25 modes take longer to separate than 8
    ("gan", "grid25"): dict(steps_per_epoch=800),
    ("wgan-gp", "grid25"): dict(steps_per_epoch=800),
}


def default_config(model: str, kind: str, dataset: str | None = None,
                   **overrides: Any) -> GenerativeTrainConfig:
    """The recipe of ``model`` on ``kind`` data ("image" or "points"), refined for ``dataset``
    when ``RECIPES`` has a (model, dataset) entry, with ``overrides`` (None values ignored;
    unknown keys are a ``ValueError``)."""
    from advlab.config import from_dict
    from advlab.generative.base import GENERATIVE

    GENERATIVE.get(model)  # unknown name: ValueError listing the valid ones
    if (model, kind) not in RECIPES:
        valid = ", ".join(f"{m}/{k}" for m, k in RECIPES if k in ("image", "points"))
        raise ValueError(f"no training recipe for model {model!r} on {kind} data; valid: {valid}")
    given = {k: v for k, v in overrides.items() if v is not None}
    recipe = {**RECIPES[(model, kind)], **RECIPES.get((model, dataset), {})}
    return from_dict(GenerativeTrainConfig, {**recipe, **given})


@dataclass
class GenerativeFitResult:
    history: list[dict[str, float]]  # one row per completed epoch
    snapshots: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (epoch, samples)
    fixed_z: torch.Tensor | None = None  # (n_snapshot, latent_dim) the codes of the snapshots


class _Progress(EpochProgress):
    def end_epoch(self, row: dict[str, float]) -> None:
        if self._progress is None:
            return
        keys = [k for k in ("loss", "loss_d", "loss_g", "kl", "modes", "hq") if k in row]
        self._progress.update(self._task, completed=self.total,
                              info="  ".join(f"{k} {row[k]:.4g}" for k in keys))


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def _batch_index(n: int, count: int, batch_size: int, g: torch.Generator) -> torch.Tensor:
    """``count`` batches of indices into n examples: concatenated random permutations, so
    every example is seen once per pass (the last batch of a pass may straddle two)."""
    need = count * batch_size
    perms = [torch.randperm(n, generator=g) for _ in range(math.ceil(need / n))]
    return torch.cat(perms)[:need].reshape(count, batch_size)


def _steps(config: GenerativeTrainConfig, n: int, adversarial: bool) -> int:
    if config.steps_per_epoch:
        return config.steps_per_epoch
    per_step = config.batch_size * (config.d_steps if adversarial else 1)
    return max(1, math.ceil(n / per_step))


def _optimizers(model: GenerativeModel, config: GenerativeTrainConfig):
    betas = tuple(config.betas)
    if isinstance(model, AdversarialModel):
        opt_g = torch.optim.Adam(model.generator.parameters(), lr=config.lr, betas=betas)
        opt_d = torch.optim.Adam(model.critic.parameters(), lr=config.lr_critic or config.lr,
                                 betas=betas)
        return opt_g, opt_d
    return torch.optim.Adam(model.parameters(), lr=config.lr, betas=betas), None


# The settings only some models use: setting -> (the objectives that use it, with None for the
# autoencoders; the models as named in messages). The recipes leave them at
# GenerativeTrainConfig's defaults for the other models, so a value that differs from the
# default there was asked for and would be ignored: check_objective refuses it.
_ADVERSARIAL = ("the adversarial models (gan, dcgan, wgan-gp)", ("gan", "wgan-gp"))
ONLY_FOR: dict[str, tuple[str, tuple[str, ...]]] = {
    "loss": _ADVERSARIAL,
    "d_steps": _ADVERSARIAL,
    "lr_critic": _ADVERSARIAL,
    "real_label": ("gan and dcgan", ("gan",)),
    "gp_weight": ("wgan-gp", ("wgan-gp",)),
}


def check_objective(model: GenerativeModel, config: GenerativeTrainConfig,
                    given: Iterable[str] = ()) -> None:
    """Refuse a configuration ``model`` cannot train with as asked: the generator loss must
    match the model (wasserstein for wgan-gp, a GAN loss otherwise), the moving average of
    weights (``ema``) is for the adversarial models, and the settings of ``ONLY_FOR`` must keep
    their defaults for the models that ignore them. ``given``: the settings the user set
    explicitly (e.g. on the command line), refused for those models even at the default
    value."""
    objective = model.objective if isinstance(model, AdversarialModel) else None
    if objective is None and config.ema:
        raise ValueError("ema: a moving average of weights is for the adversarial models' "
                         "generators; use ema=0 for ae/vae")
    if objective == "wgan-gp" and config.loss != "wasserstein":
        raise ValueError(f"loss: wgan-gp trains with loss='wasserstein', got {config.loss!r}")
    if objective == "gan" and config.loss == "wasserstein":
        raise ValueError("loss: 'wasserstein' needs the wgan-gp critic; for gan/dcgan use "
                         "'non-saturating' or 'minimax'")
    defaults = {f.name: f.default for f in dataclasses.fields(GenerativeTrainConfig)}
    name = model.spec.get("name") or type(model).__name__
    for key, (models, objectives) in ONLY_FOR.items():
        value = getattr(config, key)
        if objective not in objectives and (value != defaults[key] or key in given):
            hint = ("do not set it" if key in given and value == defaults[key]
                    else f"leave it at {defaults[key]!r}")
            raise ValueError(f"{key} applies to {models} only; got {key}={value!r} for "
                             f"{name!r} ({hint})")


def fit_generative(
    model: GenerativeModel,
    train: TensorSet,
    config: GenerativeTrainConfig,
    *,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    epoch_metrics: Callable[[GenerativeModel, torch.Tensor], dict[str, float]] | None = None,
    on_epoch: Callable[[dict[str, float], GenerativeModel], None] | None = None,
    metadata: dict[str, Any] | None = None,
) -> GenerativeFitResult:
    """Train ``model`` in place on ``train.x`` (labels are not used).

    Every ``snapshot_every`` epochs (and after the last) the samples of ``n_snapshot`` fixed
    codes are recorded; ``epoch_metrics(model, samples)`` may add numbers computed from them
    to the epoch's history row (e.g. modes covered on the toys). ``on_epoch(row, model)`` runs
    after each epoch's checkpoint. ``resume=True`` continues from ``checkpoint``.

    Under torchrun the processes train data-parallel (module docstring); rank 0 alone writes
    the checkpoint, shows progress, computes ``epoch_metrics`` (every process gets its numbers)
    and calls ``on_epoch``.
    """
    check_objective(model, config)
    main = distributed.is_main()
    progress = progress and main
    device = resolve_device(config.device)
    check_precision(config.amp, device)
    model.to(device)
    model.check_data(train.x[:1], "training data")
    x_train = train.x.to(device)
    n = x_train.shape[0]
    adversarial = isinstance(model, AdversarialModel)
    steps = _steps(config, n, adversarial)
    opt_g, opt_d = _optimizers(model, config)
    g_fixed = torch.Generator().manual_seed(_epoch_seed(config.seed, 0))
    fixed_z = torch.randn(config.n_snapshot, model.latent_dim, generator=g_fixed)
    ema = _Ema(model.generator, config.ema, model.latent_dim) if config.ema else None
    history: list[dict[str, float]] = []
    snapshots: list[tuple[int, torch.Tensor]] = []
    start_epoch = 1
    if resume:
        if checkpoint is None or not Path(checkpoint).is_file():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {checkpoint}")
        state = load_state(checkpoint)
        _check_resumable(state, config, model, checkpoint)
        load_checked(model, state["model"], checkpoint)
        opt_g.load_state_dict(state["opt_g"])
        if opt_d is not None:
            opt_d.load_state_dict(state["opt_d"])
        torch.set_rng_state(state["rng"])
        history = state["history"]
        snapshots = [(int(s["epoch"]), s["samples"]) for s in state["snapshots"]]
        fixed_z = state["fixed_z"]
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start_epoch = state["epoch"] + 1
        log.info("resumed from %s after epoch %d", checkpoint, state["epoch"])

    bar = _Progress(enabled=progress, total_batches=steps)
    with bar, _data_parallel(model) as ddp:  # torchrun: gradients averaged
        for epoch in range(start_epoch, config.epochs + 1):
            t0 = time.perf_counter()
            bar.start_epoch(epoch, config.epochs)
            row = _train_epoch(model, x_train, config, epoch, steps, opt_g, opt_d, ema, bar,
                               checkpoint, ddp)
            if isinstance(model, AE):
                _fit_ae_prior(model, x_train)
                distributed.broadcast_buffers(model)  # rank 0's fit, to the last bit
            if (config.snapshot_every and epoch % config.snapshot_every == 0) \
                    or epoch == config.epochs:
                with _ema_weights(model, ema):  # the metrics see the averaged generator too
                    samples = _decode_fixed(model, fixed_z)
                    if epoch_metrics is not None:  # rank 0's numbers on every process
                        row.update(distributed.on_main(_alone, epoch_metrics, model,
                                                       samples))
                snapshots.append((epoch, samples))
            row["epoch_seconds"] = time.perf_counter() - t0
            history.append(row)
            bar.end_epoch(row)
            log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
            if checkpoint is not None and main:
                save_state(checkpoint, {
                    "kind": CHECKPOINT_KIND, "epoch": epoch, "spec": model.spec,
                    "config": to_dict(config), "model": model.state_dict(),
                    "opt_g": opt_g.state_dict(),
                    "opt_d": opt_d.state_dict() if opt_d is not None else None,
                    "rng": torch.get_rng_state(), "history": history,
                    "snapshots": [{"epoch": e, "samples": s} for e, s in snapshots],
                    "fixed_z": fixed_z, "ema": ema.state_dict() if ema is not None else None,
                    "metadata": metadata or {},
                })
            if on_epoch is not None and main:
                on_epoch(row, model)
    if ema is not None:  # the averaged generator is the result
        ema.copy_to(model.generator)
    model.eval()
    return GenerativeFitResult(history=history, snapshots=snapshots, fixed_z=fixed_z)


@torch.no_grad()
def recalibrate_batchnorm(generator: torch.nn.Module, latent_dim: int, batches: int = 20,
                          batch_size: int = 256, seed: int = 0) -> None:
    """Recompute the batch-norm statistics of ``generator`` from its own outputs on prior draws.

    Averaged (EMA) weights come without statistics of their own: the running means and
    variances tracked for the trained weights do not describe the averaged generator's
    activations, and sampling in eval mode with them degrades the samples. This resets every
    batch-norm layer, runs ``batches`` batches of z ~ N(0, I) in train mode with a cumulative
    average (momentum None), and restores each layer's momentum and the module's mode. Its
    draws come from a private generator seeded with ``seed``: the global RNG is untouched."""
    bns = [m for m in generator.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    was_training = generator.training
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    p = next(generator.parameters())
    g = torch.Generator().manual_seed(seed)
    generator.train()
    try:
        for _ in range(batches):
            generator(torch.randn(batch_size, latent_dim, generator=g).to(p.device, p.dtype))
    finally:
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
        generator.train(was_training)


class _Ema:
    """An exponential moving average of a module's parameters. Batch-norm statistics are not
    averaged: ``copy_to`` recomputes them for the averaged weights (``recalibrate_batchnorm``)."""

    def __init__(self, module: torch.nn.Module, decay: float, latent_dim: int) -> None:
        self.decay, self.latent_dim = decay, latent_dim
        self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self.params = {k for k, _ in module.named_parameters()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for k, v in module.state_dict().items():
            if k in self.params:
                self.state[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:  # buffers (batch-norm statistics) follow the trained generator
                self.state[k].copy_(v)

    def copy_to(self, module: torch.nn.Module) -> None:
        module.load_state_dict(self.state)
        recalibrate_batchnorm(module, self.latent_dim)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state = {k: v.clone() for k, v in state.items()}


@contextmanager
def _ema_weights(model: GenerativeModel, ema: _Ema | None) -> Iterator[None]:
    """Run the block with the averaged generator weights, then restore the trained ones."""
    if ema is None:
        yield
        return
    saved = {k: v.detach().clone() for k, v in model.generator.state_dict().items()}
    ema.copy_to(model.generator)
    try:
        yield
    finally:
        model.generator.load_state_dict(saved)


@dataclass(frozen=True)
class _Ddp:
    """The DDP modules of a data-parallel run (``_data_parallel``): ``loss`` for the
    autoencoders (their ``loss``), ``generator`` and ``critic`` for the adversarial models."""

    loss: torch.nn.Module | None = None
    generator: torch.nn.Module | None = None
    critic: torch.nn.Module | None = None


@contextmanager
def _data_parallel(model: GenerativeModel) -> Iterator[_Ddp | None]:
    """Under torchrun, the block's gradients of ``model`` averaged over the processes (None
    for a single process). An autoencoder's ``loss`` becomes one DDP module; the generator and
    the critic each get their own (their calls are routed through DDP for the block,
    ``distributed.data_parallel``), since each is stepped by its own optimizer."""
    if not distributed.active():
        yield None
        return
    if isinstance(model, AdversarialModel):
        with distributed.data_parallel(model.generator) as g, \
                distributed.data_parallel(model.critic) as d:
            yield _Ddp(generator=g, critic=d)
    else:
        yield _Ddp(loss=distributed.data_parallel_call(model, model.loss))


def _alone(fn: Callable[..., dict[str, float]], *args: Any) -> dict[str, float]:
    """``fn(*args)`` as one process (on rank 0, through ``distributed.on_main``)."""
    with distributed.local():
        return fn(*args)


@dataclass(frozen=True)
class _Rows:
    """This process's rows of a global batch of ``size``: ``part`` (a slice) and the ``weight``
    of its mean loss, ``world * rows / size``, so that DDP's average of the gradients is the
    global batch's mean. A process with no rows (fewer rows than processes) takes the first
    with weight 0 so that every process steps; ``used`` is the number of rows it counts."""

    size: int
    part: slice
    weight: float
    used: int

    @classmethod
    def of(cls, size: int) -> _Rows:
        lo, hi = distributed.split_batch(size)
        weight = distributed.world_size() * (hi - lo) / size
        return cls(size, slice(lo, hi) if hi > lo else slice(0, 1), weight, hi - lo)


def _backward(loss: torch.Tensor, rows: _Rows, ddp: torch.nn.Module | None) -> bool:
    """Back-propagate this process's ``loss`` (weighted by its rows); under torchrun, True
    when the loss was not finite on some process (the flag rides on the gradients,
    ``distributed.with_flag``: the same answer on every process)."""
    if ddp is None:
        loss.backward()
        return False
    weighted = loss if rows.weight == 1 else loss * rows.weight
    distributed.with_flag(ddp, weighted, ~torch.isfinite(loss.detach())).backward()
    return distributed.flag_raised(ddp)


def _train_epoch(model: GenerativeModel, x_train: torch.Tensor, config: GenerativeTrainConfig,
                 epoch: int, steps: int, opt_g: torch.optim.Optimizer,
                 opt_d: torch.optim.Optimizer | None, ema: _Ema | None, bar: _Progress,
                 checkpoint: str | Path | None, ddp: _Ddp | None = None) -> dict[str, float]:
    """One epoch of ``steps`` steps; returns its history row (mean losses, seconds). Under
    torchrun (``ddp``) the means are over every process's rows."""
    t0 = time.perf_counter()
    adversarial = isinstance(model, AdversarialModel)
    torch.manual_seed(_epoch_seed(config.seed, epoch))
    g = torch.Generator().manual_seed(_epoch_seed(config.seed, epoch))
    per_step = config.d_steps if adversarial else 1
    index = _batch_index(x_train.shape[0], steps * per_step, config.batch_size, g)
    index = index.to(x_train.device).reshape(steps, per_step, config.batch_size)
    rows = _Rows.of(config.batch_size)
    model.train()
    sums: dict[str, torch.Tensor] = {}
    for step in range(steps):
        if config.lr_decay == "linear":  # a function of the step: resume-safe
            done = ((epoch - 1) * steps + step) / (config.epochs * steps)
            _set_lr(opt_g, config.lr * (1 - done))
            if opt_d is not None:
                _set_lr(opt_d, (config.lr_critic or config.lr) * (1 - done))
        if adversarial:
            terms, flagged = _adversarial_step(model, x_train, index[step], config, opt_g,
                                               opt_d, rows, ddp)
            if ema is not None:
                ema.update(model.generator)
        else:
            terms, flagged = _autoencoder_step(model, x_train[index[step, 0]], opt_g, rows,
                                               ddp, config.amp)
        if ddp is not None:
            distributed.broadcast_buffers(model)  # rank 0's batch-norm statistics
        # under torchrun the flags alone decide, the same on every process: all stop together
        if flagged if ddp is not None else not all(torch.isfinite(v) for v in terms.values()):
            bad = {k: float(v) for k, v in terms.items()}
            where = "" if not all(math.isfinite(v) for v in bad.values()) \
                else ", not finite on another process"
            raise TrainingDiverged(
                f"a loss became NaN or infinite at epoch {epoch}, step {step + 1} ({bad}"
                f"{where}); stopping. {kept_checkpoint(epoch, checkpoint)}. Try a lower "
                f"learning rate.")
        for k, v in terms.items():  # under torchrun: this process's share of the global mean
            v = v.float() if v.dtype == torch.bfloat16 else v  # a term computed under autocast
            v = v if ddp is None else v * (rows.used / rows.size)
            sums[k] = sums.get(k, 0.0) + v
        bar.advance(terms["loss"] if "loss" in terms else terms["loss_g"])
    if ddp is not None:  # the global batches' means: the sum of every process's shares
        keys = sorted(sums)
        total = distributed.all_reduce_sum(torch.stack([sums[k].double() for k in keys]))
        sums = dict(zip(keys, total, strict=True))
    row: dict[str, float] = {"epoch": epoch, "steps": steps}
    row.update({k: float(v) / steps for k, v in sums.items()})
    row["train_seconds"] = time.perf_counter() - t0
    return row


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _autoencoder_step(model: Autoencoder, xb: torch.Tensor, opt: torch.optim.Optimizer,
                      rows: _Rows | None = None, ddp: _Ddp | None = None, amp: str = "none"
                      ) -> tuple[dict[str, torch.Tensor], bool]:
    """One step on the global batch ``xb``: (its loss terms, detached; whether a process
    flagged a loss that is not finite). Under torchrun this process's ``rows`` of it, the
    VAE's noise drawn for the whole batch (as one process draws it) and cut the same way."""
    if ddp is None:
        with autocast(amp, xb.device):
            loss, terms = model.loss(xb)
    else:
        kw = {}
        if isinstance(model, VAE):  # randn_like(mu) of the whole batch, as model.loss draws it
            p = next(model.parameters())
            kw["eps"] = torch.randn(len(xb), model.latent_dim, device=p.device,
                                    dtype=p.dtype)[rows.part]
        with autocast(amp, xb.device):
            loss, terms = ddp.loss(xb[rows.part], **kw)
    opt.zero_grad(set_to_none=True)
    flagged = _backward(loss, rows, None if ddp is None else ddp.loss)
    opt.step()
    return {"loss": loss.detach(), **terms}, flagged


def _adversarial_step(model: AdversarialModel, x_train: torch.Tensor, index: torch.Tensor,
                      config: GenerativeTrainConfig, opt_g: torch.optim.Optimizer,
                      opt_d: torch.optim.Optimizer, rows: _Rows | None = None,
                      ddp: _Ddp | None = None) -> tuple[dict[str, torch.Tensor], bool]:
    """``d_steps`` critic updates on the real batches ``index`` (d_steps, B), then one generator
    update. Returns the mean critic terms and the generator loss (detached scalars), and
    whether a process flagged a loss that is not finite (under torchrun).

    Under torchrun each process takes its ``rows`` of every batch; the codes and the gradient
    penalty's weights are drawn for the whole batch (so the random stream is one process's)
    and cut the same way. The penalty differentiates the critic twice (its input gradient,
    then the loss's gradient through it): DDP handles that, since ``autograd.grad`` with
    respect to the input does not reach the parameters' gradient hooks, and the one backward
    of the loss reaches each parameter once, its first- and second-order parts summed."""
    wgan = model.objective == "wgan-gp"
    b = index.shape[1]
    part = slice(None) if rows is None else rows.part
    d_sum = torch.zeros((), device=x_train.device)
    gp_sum = torch.zeros((), device=x_train.device)
    w_sum = torch.zeros((), device=x_train.device)
    flagged = False
    for k in range(index.shape[0]):
        real = x_train[index[k][part]]
        with torch.no_grad(), autocast(config.amp, real.device):
            fake = model.decode(model.prior_sample(b)[part])
        with autocast(config.amp, real.device):
            real_s, fake_s = model.score(real), model.score(fake)
            if wgan:  # the weights gradient_penalty would draw, (b,) cut like the batch
                alpha = torch.rand(b, device=real.device, dtype=real.dtype)[part]
                gp = gradient_penalty(model.score, real, fake, weight=config.gp_weight,
                                      alpha=alpha)
                loss_d = critic_loss(real_s, fake_s) + gp
                gp_sum += gp.detach()
                w_sum += (real_s.mean() - fake_s.mean()).detach()
            else:
                loss_d = discriminator_loss(real_s, fake_s, config.real_label)
        opt_d.zero_grad(set_to_none=True)
        flagged |= _backward(loss_d, rows, None if ddp is None else ddp.critic)
        opt_d.step()
        d_sum += loss_d.detach()
    model.critic.requires_grad_(False)  # the generator step needs no critic weight gradients
    try:
        z = model.prior_sample(b)[part]
        # the critic's DDP expects no gradient of this pass: it is not synchronized
        with nullcontext() if ddp is None else ddp.critic.no_sync(), \
                autocast(config.amp, z.device):
            loss_g = generator_loss(model.score(model.decode(z)), config.loss)
        opt_g.zero_grad(set_to_none=True)
        flagged |= _backward(loss_g, rows, None if ddp is None else ddp.generator)
        opt_g.step()
    finally:
        model.critic.requires_grad_(True)
    k = index.shape[0]
    terms = {"loss_d": d_sum / k, "loss_g": loss_g.detach()}
    if wgan:
        terms.update(wasserstein=w_sum / k, gp=gp_sum / k)
    return terms, flagged


@torch.no_grad()
def _decode_fixed(model: GenerativeModel, fixed_z: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        z = fixed_z.to(model.device)
        if isinstance(model, AE):  # codes of the fitted Gaussian, as in AE.prior_sample
            z = model.prior_loc + z @ model.prior_scale_tril.T
        return model.decode(z).cpu()
    finally:
        model.train(was_training)


@torch.no_grad()
def _fit_ae_prior(model: AE, x: torch.Tensor, limit: int = 10_000, batch: int = 1000) -> None:
    was_training = model.training
    model.eval()
    try:
        codes = torch.cat([model.encode(x[i:i + batch]) for i in range(0, min(limit, len(x)),
                                                                        batch)])
        model.fit_prior(codes)
    finally:
        model.train(was_training)


def _check_resumable(state: dict[str, Any], config: GenerativeTrainConfig,
                     model: GenerativeModel, checkpoint: str | Path | None = None) -> None:
    source = f"cannot resume from {checkpoint}" if checkpoint is not None else "cannot resume"
    if state.get("kind") == CHECKPOINT_KIND and state.get("spec") != model.spec:
        raise ValueError(f"{source}: the checkpoint holds another model "
                         f"({state.get('spec')} vs now {model.spec})")
    # A resumed run may be extended (more epochs) or moved to another device; nothing else
    # (a checkpoint from before amp trained without it).
    check_resumable(state, to_dict(config), kind=CHECKPOINT_KIND,
                    what="an advlab generative checkpoint", free=("epochs", "device"),
                    newer={"amp": "none"}, checkpoint=checkpoint)


def check_checkpoint(checkpoint: str | Path, config: GenerativeTrainConfig,
                     model: GenerativeModel) -> None:
    """Raise ``ValueError`` unless ``fit_generative`` would resume ``model`` with ``config``
    from ``checkpoint``: its kind, model spec, training configuration and tensor shapes, read
    from the header only (nothing is loaded or written)."""
    from advlab.weights import check_state_dict

    state = read_header(checkpoint)
    _check_resumable(state, config, model, checkpoint)
    check_state_dict(model, header_weights(state, checkpoint), checkpoint)


def config_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(GenerativeTrainConfig)]
