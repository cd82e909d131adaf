"""Clean-data metrics of a classifier: pure functions over a model and a data set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from advlab.data.base import TensorSet


@dataclass(frozen=True)
class Evaluation:
    loss: float  # mean cross-entropy
    accuracy: float
    pred: torch.Tensor  # (N,) int64, on the CPU
    probs: torch.Tensor  # (N, K) softmax, on the CPU


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1000,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode, batched; returned on the CPU. (N, K)"""
    was_training = model.training
    model.eval()
    if device is None:
        device = next(model.parameters()).device
    try:  # no points: the model runs once on the empty batch, so the result is (0, K)
        out = [model(x[i:i + batch_size].to(device)).float().cpu()
               for i in range(0, max(x.shape[0], 1), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out)


def evaluate(model: nn.Module, data: TensorSet, batch_size: int = 1000,
             device: torch.device | str | None = None) -> Evaluation:
    if len(data.y) == 0:
        raise ValueError("expected at least one example to evaluate, got none")
    logits = predict_logits(model, data.x, batch_size, device)
    y = data.y.cpu()
    loss = F.cross_entropy(logits, y).item()
    pred = logits.argmax(1)
    return Evaluation(loss=loss, accuracy=(pred == y).float().mean().item(), pred=pred,
                      probs=logits.softmax(1))


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> np.ndarray:
    """(K, K) counts; row = true class, column = predicted class."""
    idx = y_true.long().cpu() * num_classes + y_pred.long().cpu()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes).numpy()


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall of each class from a confusion matrix (NaN for a class with no example)."""
    totals = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(cm) / np.maximum(totals, 1), np.nan)
