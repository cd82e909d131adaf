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
    if not isinstance(t, Tensor):
        return np.asarray(t)
    t = t.detach().cpu()
    return (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).numpy()


def _dtype_name(t: object, arr: np.ndarray) -> str:
    return str(t.dtype) if isinstance(t, Tensor) else str(arr.dtype)


def per_class_roc(scores: Tensor | np.ndarray, y: Tensor | np.ndarray,
                  classes: Sequence[str] | None = None) -> ROCResult:
    """One-vs-rest ROC of every class from ``scores`` (N, K) and labels ``y`` (N,).

    ``scores``: finite real numbers (NaN or inf is refused: no ranking is defined for them);
    ``y``: integer class indices in [0, K) (any integer dtype; float and bool labels are refused,
    never rounded); ``classes``: K names (default "0", "1", ...).
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    s, labels = _numpy(scores), _numpy(y)
    if s.ndim != 2 or labels.shape != (s.shape[0],):
        raise ValueError(f"expected scores (N, K) and y (N,), got scores {s.shape} and "
                         f"y {labels.shape}")
    if labels.dtype.kind not in "iu" and (labels.size or isinstance(y, Tensor | np.ndarray)):
        # bool is kind "b", floats "f": never truncated (an empty list is float64: let it be)
        raise ValueError(f"expected y to be integer class indices, got dtype "
                         f"{_dtype_name(y, labels)}")
    if s.dtype.kind not in "biuf":
        raise ValueError(f"expected scores to be numbers, got dtype {_dtype_name(scores, s)}")
    s, labels = s.astype(np.float64), labels.astype(np.int64)
    if not np.isfinite(s).all():
        raise ValueError(f"expected finite scores, got {int((~np.isfinite(s)).sum())} NaN or "
                         f"inf values")
    k = s.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"expected y (class labels) in [0, {k - 1}], got values in "
                         f"[{labels.min()}, {labels.max()}]")
    if isinstance(classes, str | bytes):
        raise ValueError(f"expected classes to be a sequence of {k} names, got the "
                         f"{type(classes).__name__} {classes!r}")
    names = list(classes) if classes is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"expected classes to hold {k} names (one per score column), got "
                         f"{len(names)}")
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
