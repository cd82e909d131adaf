"""The one classifier training loop: epochs of an objective, evaluation, checkpoints, resume.

Data sets are in-memory tensors (``TensorSet``), so batches are slices of a permuted index on the
device: no DataLoader workers, no per-sample Python. Shuffling uses a generator seeded by
``(seed, epoch)`` and the global RNG state (dropout) is saved with every checkpoint, so a run that
is killed and resumed from its last completed epoch ends with the same weights as an
uninterrupted one.

Under torchrun (``advlab.distributed``) every process holds the data and draws the same
permutation; each global batch of ``batch_size`` is split over the processes, which average
their gradients with ``DistributedDataParallel`` (the objectives get the model itself, its
calls routed through DDP: ``distributed.data_parallel``), so one step is the single process's
step on the same global batch. Batch-norm buffers are rank 0's after every step, the epoch's
numbers and the evaluations are summed over the processes, and rank 0 alone writes the
checkpoint (with every rank's RNG state, for ``--resume``).

Mixed precision (``TrainConfig.amp``, Micikevicius et al. 2018, "Mixed Precision Training",
https://arxiv.org/abs/1710.03740): the objective's call, i.e. the forward passes and the loss
of a step, runs under ``torch.autocast`` in bf16 or fp16; the backward, the optimizer and the
weights stay in fp32, and fp16's loss is scaled by a ``GradScaler`` (CUDA only; its state is
checkpointed). A defense's adversary crafting runs inside the objective, so under autocast too,
as Wong et al. 2020 trained "fast" adversarial training in mixed precision
(https://arxiv.org/abs/2001.03994): the input gradients are low precision, the adversaries and
their projection onto the threat set stay fp32. ``compile`` runs the model's forward through
``torch.compile`` for the training loop (``compiled_forward``: the module is not wrapped, so
its state dict, checkpoints and weights keep their names). The data sets are copied to the
device once, through pinned memory on CUDA; batches are slices of them, with no per-batch
host-to-device copy.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from advlab import distributed
from advlab.config import to_dict
from advlab.data.base import TensorSet
from advlab.device import resolve_device
from advlab.eval.classification import evaluate
from advlab.io import load_state, save_state
from advlab.train.checkpoint import check_resumable, header_weights, kept_checkpoint, read_header
from advlab.train.config import TrainConfig, check_precision
from advlab.train.objective import CrossEntropy, Objective
from advlab.train.progress import EpochProgress
from advlab.train.sources import as_tensor_set
from advlab.weights import check_spec, check_state_dict

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class EpochScore(Protocol):
    """Scores the weights after every epoch, higher is better (``fit(..., select=...)``;
    e.g. ``advlab.train.select.HoldoutScore``)."""

    key: str  # the history column of the score

    def __call__(self, model: nn.Module) -> float: ...


@dataclass
class FitResult:
    history: list[dict[str, float]]  # one row per completed epoch
    best_epoch: int  # epoch whose weights the model holds at the end (1-based)
    stopped_early: bool


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """Return ``(scheduler, per_batch)``; ``scheduler`` is None for a constant rate."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs), False
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, config.step_size, config.gamma), False
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=config.lr, epochs=config.epochs, steps_per_epoch=steps_per_epoch
        ), True
    if config.schedule == "cyclic":  # Wong et al. 2020: linear 0 -> lr at 2/5 -> 0, per batch
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=config.lr, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
            pct_start=0.4, anneal_strategy="linear", cycle_momentum=False,
            div_factor=1e4, final_div_factor=1e4,
        ), True
    return None, False


def _epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed * 1_000_003 + epoch)
    return g


def autocast(amp: str, device: torch.device) -> AbstractContextManager:
    """The mixed-precision context of a training step's forward passes and loss: nothing for
    ``amp="none"``, else ``torch.autocast`` on ``device`` in bf16 or fp16."""
    if amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@contextmanager
def compiled_forward(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Inside the block, ``model``'s forward is ``torch.compile`` d (a no-op if not
    ``enabled``). The module is not wrapped (``torch.compile(model)`` would prefix every key
    of its state dict with ``_orig_mod.``): the compiled function is set as the instance's
    ``forward`` for the block, which is not a module attribute, so the state dict, the
    checkpoints and the saved weights are the eager model's; hooks and the objectives' use of
    the model's attributes and layers are unchanged, and under torchrun DDP wraps the compiled
    forward (``distributed.data_parallel`` keeps a forward set on the instance)."""
    if not enabled:
        yield
        return
    before = model.__dict__.get("forward")  # a forward set on the instance is compiled
    own = before if before is not None else type(model).forward.__get__(model)
    object.__setattr__(model, "forward", torch.compile(own))
    try:
        yield
    except RuntimeError as e:
        # e.g. Deep Defense differentiates through input gradients (create_graph), DeepFool
        # takes one per class from the same graph (retain_graph): compiled graphs do neither
        if any(s in str(e) for s in ("double backward", "donated buffer")):
            raise ValueError(f"compile: expected an objective whose backward passes torch."
                             f"compile supports (no double backward, no retained graph), got "
                             f"one that needs them ({str(e).splitlines()[0]}); train it "
                             f"without --compile") from e
        raise
    finally:
        if before is None:
            model.__dict__.pop("forward", None)
        else:
            object.__setattr__(model, "forward", before)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; to a GPU from page-locked memory without blocking the host (the
    copies overlap each other and the set-up that follows; the stream orders them before
    the kernels that read them)."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _set_on_device(ds: TensorSet | None, device: torch.device) -> TensorSet | None:
    """``ds`` with its tensors on ``device`` (the evaluations after every epoch then copy no
    batch to the device)."""
    if ds is None or ds.x.device == device:
        return ds
    return TensorSet(_to_device(ds.x, device), _to_device(ds.y, device), ds.info, ds.split)


def _wide(v: torch.Tensor) -> torch.Tensor:
    """A half-precision scalar (a metric computed under autocast) as float32, for sums."""
    return v.float() if v.dtype in (torch.float16, torch.bfloat16) else v


def fit(
    model: nn.Module,
    train: TensorSet,
    config: TrainConfig,
    *,
    objective: Objective | None = None,
    val: TensorSet | None = None,
    test: TensorSet | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    metadata: dict[str, Any] | None = None,
    select: EpochScore | None = None,
) -> FitResult:
    """Train ``model`` in place on ``train`` with ``objective`` (cross-entropy by default).

    ``train``, ``val`` and ``test`` are advlab data sets, or a user's own: tuples ``(x, y)``,
    ``TensorDataset`` or ``DataLoader`` of ``(x, y)`` (``advlab.train.sources``).

    Each epoch ends with an evaluation on ``val`` (used for early stopping and to pick the best
    weights) and ``test`` (reported only), and, when ``checkpoint`` is a path, with an atomic
    checkpoint of everything needed to resume: weights, optimizer and scheduler state, RNG
    state, history. ``resume=True`` continues from that file's last completed epoch.

    ``select`` (epoch selection, e.g. held-out PGD accuracy) scores the weights after every
    epoch; the score goes in the epoch's row under ``select.key`` and replaces the validation
    accuracy as what picks the weights kept at the end and what ``patience`` watches. The best
    epoch's weights travel in the checkpoint, so a resumed run keeps them. Under torchrun
    every process calls it (it may shard its work) and it must return the same number on all.

    Under torchrun the processes train data-parallel (module docstring); rank 0 alone writes
    the checkpoint, shows progress and calls ``on_epoch``.
    """
    train = as_tensor_set(train, "train")  # also (x, y), a TensorDataset or a DataLoader
    val = None if val is None else as_tensor_set(val, "val")
    test = None if test is None else as_tensor_set(test, "test")
    if config.patience and val is None and select is None:
        raise ValueError(f"patience {config.patience}: early stopping watches the validation "
                         f"accuracy, expected validation data (--val-fraction > 0), got none")
    tracked = val is not None or select is not None  # the best epoch's weights are kept
    objective = objective or CrossEntropy()
    device = resolve_device(config.device)
    check_precision(config.amp, device)
    model.to(device)
    x_train, y_train = _to_device(train.x, device), _to_device(train.y, device)
    val, test = _set_on_device(val, device), _set_on_device(test, device)
    n = x_train.shape[0]
    world, main = distributed.world_size(), distributed.is_main()
    progress = progress and main
    steps_per_epoch = math.ceil(n / config.batch_size)
    opt = make_optimizer(model, config)
    scheduler, per_batch = make_scheduler(opt, config, steps_per_epoch)
    # fp16 gradients underflow: the loss is scaled up, the gradients unscaled before the step
    scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" else None

    history: list[dict[str, float]] = []
    best = {"epoch": 0, "score": -math.inf, "state": None}
    bad_epochs = 0
    start_epoch = 1
    torch.manual_seed(distributed.rank_seed(config.seed))  # config.seed on rank 0
    # an objective may train on inputs computed once from the weights training starts from
    # (e.g. DeepFool examples of the model being fine-tuned); on resume they are recomputed
    # from the same starting weights, which the fingerprint in the checkpoint vouches for
    start_inputs = getattr(objective, "start_inputs", None)
    start_fingerprint = weights_fingerprint(model) if start_inputs is not None else None
    if resume:
        if checkpoint is None or not Path(checkpoint).is_file():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {checkpoint}")
        state = load_state(checkpoint)
        _check_resumable(state, config, checkpoint)
        if start_fingerprint is not None:
            _check_start(state, start_fingerprint, checkpoint)
    x_fixed, prep_seconds = None, 0.0
    if start_inputs is not None:  # before a resumed state replaces the starting weights
        t_prep = time.perf_counter()
        x_fixed = _sharded_inputs(start_inputs, model, x_train, y_train)
        prep_seconds = time.perf_counter() - t_prep  # counted in this call's first epoch
        if x_fixed.shape != x_train.shape:
            raise ValueError(f"start_inputs returned shape {tuple(x_fixed.shape)}, expected "
                             f"the training inputs' {tuple(x_train.shape)}")
    if resume:
        _load_model_state(model, state["model"], state.get("spec"), checkpoint)
        opt.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(_rank_rng(state, config.seed))
        history = state["history"]
        best = {"epoch": state["best_epoch"], "score": state["best_score"],
                "state": state.get("best_model")}
        bad_epochs = state["bad_epochs"]
        start_epoch = state["epoch"] + 1
        log.info("resumed from %s after epoch %d", checkpoint, state["epoch"])

    stopped_early = False
    bar = EpochProgress(enabled=progress, total_batches=steps_per_epoch)
    # compiled first: under torchrun DDP wraps the compiled forward
    with bar, compiled_forward(model, config.compile), \
            distributed.data_parallel(model) as ddp:  # torchrun: gradients averaged
        for epoch in range(start_epoch, config.epochs + 1):
            t0 = time.perf_counter() - prep_seconds
            prep_seconds = 0.0
            model.train()
            perm = torch.randperm(n, generator=_epoch_generator(config.seed, epoch, device))
            perm = _to_device(perm, device)
            # an objective may supply this epoch's inputs (e.g. adversarial examples of the
            # whole training set, computed once per epoch from the current weights)
            epoch_inputs = getattr(objective, "epoch_inputs", None)
            if x_fixed is not None:
                x_epoch = x_fixed
            elif epoch_inputs is not None:
                x_epoch = _sharded_inputs(epoch_inputs, model, x_train, y_train)
            else:
                x_epoch = x_train
            model.train()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            extra_sums: dict[str, torch.Tensor] = {}
            bar.start_epoch(epoch, config.epochs)
            for b in range(steps_per_epoch):
                idx = perm[b * config.batch_size:(b + 1) * config.batch_size]
                # this process's rows of the global batch (all of them for one process); the
                # loss is weighted so that the averaged gradient is the global batch's mean
                lo, hi = distributed.split_batch(idx.numel())
                rows, weight = idx[lo:hi], world * (hi - lo) / idx.numel()
                if hi == lo:  # fewer rows than processes: a zero-weight row keeps step
                    rows = idx[:1]
                xb, yb = x_epoch[rows], y_train[rows]
                with autocast(config.amp, device):  # forward passes and loss (crafting too)
                    out = objective(model, xb, yb)
                loss = out.loss if weight == 1 else out.loss * weight
                bad = ~torch.isfinite(out.loss.detach())
                if ddp is None and bad:
                    raise TrainingDiverged(_diverged(out.loss, epoch, b, checkpoint))
                opt.zero_grad(set_to_none=True)
                if ddp is not None:  # every process learns whether a loss was not finite,
                    loss = distributed.with_flag(ddp, loss, bad)  # in the all-reduce
                (loss if scaler is None else scaler.scale(loss)).backward()
                if ddp is not None and distributed.flag_raised(ddp):  # the same on every
                    raise TrainingDiverged(_diverged(out.loss, epoch, b, checkpoint))  # process
                lr_used = opt.param_groups[0]["lr"]  # before a per-batch schedule moves it
                if scaler is None:
                    opt.step()
                else:  # skipped when a gradient is not finite; the scale adapts
                    scaler.step(opt)
                    scaler.update()
                distributed.broadcast_buffers(model)  # rank 0's running statistics
                if per_batch:
                    scheduler.step()
                with torch.no_grad():
                    used = hi - lo  # 0 for a zero-weight row
                    loss_sum += out.loss.detach() * used
                    if out.logits is not None and used:
                        correct += (out.logits.argmax(1) == yb).sum()
                    for k, v in out.metrics.items():
                        extra_sums[k] = extra_sums.get(k, 0.0) + _wide(v.detach()) * used
                bar.advance(out.loss)
            if scheduler is not None and not per_batch:
                scheduler.step()
            if world > 1:  # the epoch's sums over every process's rows
                keys = sorted(extra_sums)
                total = distributed.all_reduce_sum(torch.stack(
                    [loss_sum.double(), correct.double(),
                     *(torch.as_tensor(extra_sums[k]).double().to(device) for k in keys)]))
                loss_sum, correct = total[0], total[1]
                extra_sums = dict(zip(keys, total[2:], strict=True))
            train_seconds = time.perf_counter() - t0
            row: dict[str, float] = {
                "epoch": epoch,
                "train_loss": loss_sum.item() / n,
                "train_acc": correct.item() / n,
                "lr": lr_used,  # of the epoch's last step
                "train_seconds": train_seconds,
            }
            row.update({k: float(v) / n for k, v in extra_sums.items()})
            for split_name, ds in (("val", val), ("test", test)):
                if ds is not None:
                    loss, acc = _evaluate(model, ds, config.eval_batch_size, device)
                    row[f"{split_name}_loss"] = loss
                    row[f"{split_name}_acc"] = acc
            if select is not None:  # every process: the same number
                row[select.key] = float(select(model))
            row["epoch_seconds"] = time.perf_counter() - t0
            history.append(row)
            bar.end_epoch(row)
            log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})

            score = row[select.key] if select is not None else \
                row.get("val_acc", row["train_acc"] if val is None else -math.inf)
            if tracked and score > best["score"]:
                best = {"epoch": epoch, "score": score,
                        "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
                bad_epochs = 0
            elif tracked:
                bad_epochs += 1
            rng_ranks = distributed.all_gather_tensor(torch.get_rng_state()[None])  # (W, S)
            if checkpoint is not None and main:
                save_state(checkpoint, {
                    "kind": "advlab-train-checkpoint",
                    "epoch": epoch,
                    "config": to_dict(config),
                    "objective": getattr(objective, "name", type(objective).__name__),
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "rng": torch.get_rng_state(),
                    "rng_ranks": rng_ranks if world > 1 else None,
                    "history": history,
                    "best_epoch": best["epoch"],
                    "best_score": best["score"] if math.isfinite(best["score"]) else -1.0,
                    "best_model": best["state"],
                    "bad_epochs": bad_epochs,
                    "spec": getattr(model, "spec", None),
                    "metadata": metadata or {},
                    "start_fingerprint": start_fingerprint,
                })
            if on_epoch is not None and main:
                on_epoch(row)
            if tracked and config.patience and bad_epochs >= config.patience:
                log.info("early stopping after epoch %d (best epoch %d)", epoch, best["epoch"])
                stopped_early = True
                break

    best_epoch = len(history) and history[-1]["epoch"]
    if tracked and best["state"] is not None:
        model.load_state_dict(best["state"])
        best_epoch = best["epoch"]
    model.eval()
    return FitResult(history=history, best_epoch=int(best_epoch), stopped_early=stopped_early)


def _diverged(loss: torch.Tensor, epoch: int, batch: int, checkpoint: str | Path | None
              ) -> str:
    """The message of ``TrainingDiverged`` at ``batch`` (0-based) of ``epoch``."""
    value = loss.item()
    shown = value if not math.isfinite(value) else "not finite on another process"
    return (f"loss became {shown} at epoch {epoch}, batch {batch + 1}; stopping. "
            f"{kept_checkpoint(epoch, checkpoint)}. Try a lower learning rate.")


def _sharded_inputs(make: Callable, model: nn.Module, x: torch.Tensor,
                    y: torch.Tensor) -> torch.Tensor:
    """``make(model, x, y)`` (an objective's inputs for the whole training set), each process
    computing its contiguous share of the rows; every process gets all of them."""
    if not distributed.active():
        return make(model, x, y)
    lo, hi = distributed.split_batch(x.shape[0])
    mine = make(model, x[lo:hi], y[lo:hi]) if hi > lo else x[:0]
    return distributed.all_gather_tensor(mine)


def _evaluate(model: nn.Module, ds: TensorSet, batch_size: int,
              device: torch.device) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` on ``ds``; under torchrun each process evaluates its
    share of the points and the sums are combined (every process gets the same numbers)."""
    if not distributed.active():
        ev = evaluate(model, ds, batch_size=batch_size, device=device)
        return ev.loss, ev.accuracy
    lo, hi = distributed.split_batch(len(ds))
    sums = torch.zeros(3, dtype=torch.float64)
    if hi > lo:
        ev = evaluate(model, ds.subset(torch.arange(lo, hi)), batch_size=batch_size,
                      device=device)
        sums = torch.tensor([ev.loss * (hi - lo), ev.accuracy * (hi - lo), hi - lo],
                            dtype=torch.float64)
    total = distributed.all_reduce_sum(sums)
    return (total[0] / total[2]).item(), (total[1] / total[2]).item()


def _rank_rng(state: dict[str, Any], seed: int) -> torch.Tensor:
    """This process's RNG state from a checkpoint: its own when the checkpoint was written by
    as many processes (``rng_ranks``), rank 0's ``rng`` on rank 0 (a single process resumes
    rank 0's stream), else a fresh stream derived from the seed and the epoch."""
    ranks = state.get("rng_ranks")
    if isinstance(ranks, torch.Tensor) and ranks.shape[0] == distributed.world_size() > 1:
        return ranks[distributed.rank()].clone()
    if distributed.is_main():
        return state["rng"]
    g = torch.Generator().manual_seed(distributed.rank_seed(seed) + int(state["epoch"]))
    return g.get_state()


RESUME_FREE = ("epochs", "device", "compile")  # TrainConfig settings a resume may change
NEWER_SETTINGS = {"amp": "none", "compile": False}  # the defaults of settings added later


def _check_resumable(state: dict[str, Any], config: TrainConfig,
                     checkpoint: str | Path | None = None) -> None:
    # A resumed run may be extended (more epochs), moved to another device or (un)compiled;
    # nothing else. A setting newer than the checkpoint had its default there.
    check_resumable(state, to_dict(config), kind="advlab-train-checkpoint",
                    what="an advlab training checkpoint", free=RESUME_FREE,
                    newer=NEWER_SETTINGS, checkpoint=checkpoint)


def check_checkpoint(checkpoint: str | Path, config: TrainConfig,
                     model: nn.Module | None = None) -> None:
    """Raise ``ValueError`` unless ``fit(model, ..., config, checkpoint=checkpoint,
    resume=True)`` would accept the checkpoint: its kind, training configuration and (given
    ``model``) architecture and tensor shapes, read from the header only (cheap; nothing is
    loaded or written)."""
    state = read_header(checkpoint)
    _check_resumable(state, config, checkpoint)
    if model is None:
        return
    weights = header_weights(state, checkpoint)
    check_spec(model, state.get("spec"), f"cannot resume: {checkpoint}")
    check_state_dict(model, weights, checkpoint)


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's state (names, shapes, dtypes, values): which weights a run
    started from."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_start(state: dict[str, Any], fingerprint: str, checkpoint: str | Path) -> None:
    """Refuse to resume a run whose objective's fixed inputs came from other weights."""
    saved = state.get("start_fingerprint")
    if saved != fingerprint:
        raise ValueError(
            f"cannot resume from {checkpoint}: the objective trains on inputs computed from "
            "the weights training started from, and the model given now does not hold those "
            "weights (start it from the same initial weights, e.g. the same --init run)"
            + ("" if saved else "; the checkpoint records no starting weights"))


def _load_model_state(model: nn.Module, weights: dict[str, torch.Tensor],
                      spec: dict[str, Any] | None, source: Any) -> None:
    check_spec(model, spec, f"cannot resume: {source}")
    check_state_dict(model, weights, source)
    model.load_state_dict(weights)
