"""Per-class one-vs-rest ROC curves and AUC (scikit-learn), on clean or adversarial scores.

Class k's curve ranks every point by its score for class k (usually the softmax probability)
and separates the points of class k from all the others. A class with no positive or no
negative point has no curve: empty arrays and AUC NaN (None in JSON), never a made-up value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from advlab.eval.robust import Model, finite_or_none, predict


@dataclass(frozen=True)
class ClassROC:
    fpr: np.ndarray  # (T,) false-positive rates, increasing
    tpr: np.ndarray  # (T,) true-positive rates
    thresholds: np.ndarray  # (T,) score thresholds, decreasing
    auc: float  # area under the curve (NaN when undefined)


@dataclass(frozen=True)
class ROCResult:
    classes: list[str]
    curves: list[ClassROC]  # one per class, index = label

    @property
    def auc(self) -> list[float]:
        return [c.auc for c in self.curves]

    @property
    def macro_auc(self) -> float:
        """Mean AUC over the classes where it is defined (NaN if none)."""
        defined = [a for a in self.auc if math.isfinite(a)]
        return float(np.mean(defined)) if defined else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"auc": {c: finite_or_none(a) for c, a in zip(self.classes, self.auc, strict=True)},
                "macro_auc": finite_or_none(self.macro_auc)}


def _numpy(t: Tensor | np.ndarray) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t)


def per_class_roc(scores: Tensor | np.ndarray, y: Tensor | np.ndarray,
                  classes: Sequence[str] | None = None) -> ROCResult:
    """One-vs-rest ROC of every class from ``scores`` (N, K) and labels ``y`` (N,)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    s, labels = _numpy(scores).astype(np.float64), _numpy(y).astype(np.int64)
    if s.ndim != 2 or labels.shape != (s.shape[0],):
        raise ValueError(f"expected scores (N, K) and labels (N,), got {s.shape} and "
                         f"{labels.shape}")
    k = s.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"expected labels in [0, {k - 1}], got values in "
                         f"[{labels.min()}, {labels.max()}]")
    names = list(classes) if classes is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"expected {k} class names (one per score column), got {len(names)}")
    curves = []
    empty = np.zeros(0)
    for c in range(k):
        pos = labels == c
        if pos.all() or not pos.any():
            curves.append(ClassROC(empty, empty, empty, float("nan")))
            continue
        fpr, tpr, thr = roc_curve(pos, s[:, c])
        curves.append(ClassROC(fpr, tpr, thr, float(roc_auc_score(pos, s[:, c]))))
    return ROCResult(names, curves)


def softmax_scores(model: Model, x: Tensor, batch_size: int = 1000,
                   device: torch.device | str | None = None) -> Tensor:
    """Softmax probabilities of ``model`` on ``x``, (N, K), on ``x``'s device."""
    return predict(model, x, batch_size, device).softmax(dim=1)
