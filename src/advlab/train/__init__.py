"""Classifier training: one loop (:func:`fit`), pluggable objectives, resumable checkpoints."""

from advlab.train.config import TrainConfig
from advlab.train.loop import FitResult, TrainingDiverged, fit
from advlab.train.objective import CrossEntropy, Objective, StepOutput

__all__ = ["TrainConfig", "fit", "FitResult", "TrainingDiverged", "CrossEntropy", "Objective",
           "StepOutput"]
