"""Defenses: training objectives by name, model transforms and post-training defenses.

>>> from advlab import defenses
>>> objective = defenses.create_objective("pgd-at", dataset="mnist")  # ε = 0.3, 40 × 0.01
>>> fit(model, train, config, objective=objective)                    # the ordinary loop

Names (``available()``): ``fgsm-at``, ``pgd-at``, ``fast-at`` (adversarial training),
``deep-defense`` and ``deepfool-finetune`` (fine-tuning a trained model), ``lipschitz``
(spectrally bounded layers, certified accuracy). Post-training: ``svd_truncate`` (the SVD
defense). Classifiers on latent codes and Defense-GAN: ``LatentClassifier``, ``DefenseGAN``,
``train_latent_classifier``; as run directories: ``advlab.defenses.jobs`` (CLI ``advlab defend
latent`` and ``advlab defend defense-gan``). See docs/guide-defenses.md.
"""

from advlab.defenses import adversarial, deepdefense, latent, lipschitz  # noqa: F401  (register)
from advlab.defenses.adversarial import AdversarialTraining
from advlab.defenses.deepdefense import (
    DeepDefense,
    DeepFoolFinetune,
    DeepFoolPerturbation,
    deep_defense_regularizer,
    deepfool_perturbation,
    deepfool_ratios,
)
from advlab.defenses.latent import (
    DefenseGAN,
    LatentClassifier,
    latent_codes,
    train_latent_classifier,
)
from advlab.defenses.lipschitz import (
    LipschitzMargin,
    SpectralBound,
    certified_accuracy,
    certified_radius,
    conv_operator_norm,
    is_lipschitz,
    lipschitz_bound,
    logit_margin,
    make_lipschitz,
)
from advlab.defenses.registry import DEFENSES, available, config, create_objective, register
from advlab.defenses.svd import svd_truncate, truncate_matrix

__all__ = [
    "DEFENSES", "AdversarialTraining", "DeepDefense", "DeepFoolFinetune", "DeepFoolPerturbation",
    "DefenseGAN", "LatentClassifier", "LipschitzMargin", "SpectralBound", "available",
    "certified_accuracy", "certified_radius", "config", "conv_operator_norm",
    "create_objective", "deep_defense_regularizer", "deepfool_perturbation", "deepfool_ratios",
    "is_lipschitz", "lipschitz_bound", "logit_margin", "make_lipschitz", "register", "svd_truncate",
    "latent_codes", "train_latent_classifier", "truncate_matrix",
]
