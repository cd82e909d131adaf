"""The classifier training configuration."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from advlab.config import check_types

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("none", "cosine", "step", "onecycle", "cyclic")
AMP_MODES = ("none", "bf16", "fp16")  # mixed precision of the training step (check_precision)


# Training settings per data set that the command line uses where an option is not given: a
# model trained with the defaults is worth attacking. digits (1437 training images): the
# generic 10 epochs of batch 128 at 1e-3 are 120 steps and underfit (MLP 0.90 test accuracy,
# FGSM adversarial training underfit too); 30 epochs of batch 64 at 3e-3 give 0.97, and FGSM
# adversarial training then lifts FGSM accuracy at eps 0.1 from 0.45 to 0.81
# (tests/test_train_defaults.py).
DATASET_DEFAULTS: dict[str, dict[str, object]] = {
    "digits": {"epochs": 30, "batch_size": 64, "lr": 3e-3},
}


def dataset_defaults(dataset: str | None) -> dict[str, object]:
    """The ``TrainConfig`` settings the command line uses for ``dataset`` unless given."""
    return dict(DATASET_DEFAULTS.get(dataset or "", {}))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10  # passes over the training set
    batch_size: int = 128
    optimizer: str = "adam"  # one of OPTIMIZERS
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    schedule: str = "none"  # one of SCHEDULES; stepped once per batch (onecycle, cyclic) or epoch
    step_size: int = 10  # "step" schedule: epochs between decays
    gamma: float = 0.1  # "step" schedule: decay factor
    seed: int = 0  # model init, shuffling, dropout
    val_fraction: float = 0.0  # held out of the training set for early stopping / model choice
    patience: int = 0  # early stopping: epochs without validation improvement (0 = off)
    eval_batch_size: int = 1000
    device: str = "auto"  # auto | cpu | cuda | mps
    # mixed precision of the training step: none | bf16 (torch.autocast; any device) | fp16
    # (CUDA only, with a GradScaler); the adversary crafting of a defense runs under it too
    amp: str = "none"
    compile: bool = False  # torch.compile the model's forward for training (float rounding)

    def __post_init__(self) -> None:
        check_types(self)
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp: expected one of {AMP_MODES}, got {self.amp!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {self.schedule!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "step_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(self, name)!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr: expected a finite positive number, got {self.lr!r}")
        for name in ("weight_decay", "momentum", "gamma"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(
                f"val_fraction: expected a number in [0, 1), got {self.val_fraction!r}")
        if self.patience < 0:
            raise ValueError(f"patience: expected >= 0, got {self.patience!r}")
        if self.amp == "fp16" and self.device in ("cpu", "mps"):  # "auto": checked by fit
            check_precision(self.amp, torch.device(self.device))


def check_precision(amp: str, device: torch.device) -> None:
    """Raise ``ValueError`` unless the training step can run in ``amp`` on ``device``: fp16
    needs CUDA (its gradients are scaled by a ``torch.amp.GradScaler``, which advlab runs
    only there), bf16 on CUDA a GPU with bfloat16 arithmetic (Ampere or newer)."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp: expected one of {AMP_MODES}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp 'fp16': expected a CUDA device (fp16 trains with a gradient "
                         f"scaler on CUDA only), got device {str(device)!r}; use --amp bf16 "
                         f"there")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"amp 'bf16': expected a GPU with bfloat16 arithmetic (Ampere or "
                         f"newer), got {torch.cuda.get_device_name(device)!r}; use --amp fp16 "
                         f"there")
