"""Training objectives: what one optimisation step minimises.

The training loop calls ``objective(model, x, y)`` on every batch and back-propagates the returned
loss. Adversarial training and regularisers (the defenses) are objectives too: they may run an
attack on ``model`` inside the call, and report extra numbers (e.g. adversarial accuracy) through
``StepOutput.metrics``, which the loop averages over the epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar, differentiable w.r.t. the model parameters
    logits: torch.Tensor | None = None  # (B, K) on the clean batch, for the running accuracy
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # scalars, averaged per epoch


class Objective(Protocol):
    name: str

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> StepOutput: ...


@dataclass(frozen=True)
class CrossEntropy:
    """Plain empirical risk: mean cross-entropy of the logits on the clean batch."""

    name: str = "cross-entropy"
    label_smoothing: float = 0.0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        logits = model(x)  # (B, K)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return StepOutput(loss=loss, logits=logits)
