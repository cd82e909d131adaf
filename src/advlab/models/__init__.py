"""Classifiers by name: ``create(name, dataset)``, ``from_spec(model.spec)``, ``available()``.

Every model takes pixels in [0, 1] (B, C, H, W) or points/codes (B, D) and returns logits
(B, num_classes); normalization, if any, is the model's first layer.

>>> import advlab.models as models
>>> model = models.create("mlp-100", "mnist")
>>> model.input_shape, model.num_classes, models.count_parameters(model)
((1, 28, 28), 10, 79510)
"""

from advlab.models import cnn, mlp, resnet  # noqa: F401  (register the models)
from advlab.models.base import (
    MODELS,
    NORMALIZATION_STATS,
    TRANSFORMS,
    Classifier,
    available,
    count_parameters,
    create,
    from_spec,
)
from advlab.models.layers import Normalize, UnsupportedInput

__all__ = [
    "MODELS",
    "NORMALIZATION_STATS",
    "TRANSFORMS",
    "Classifier",
    "Normalize",
    "UnsupportedInput",
    "available",
    "count_parameters",
    "create",
    "from_spec",
]
