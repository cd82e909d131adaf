"""Evaluation: pure functions over a model and data.

- ``classification``: clean accuracy, loss, confusion matrix, per-class accuracy.
- ``robust``: robust accuracy with AutoAttack's robust mask (``robust_accuracy``), accuracy over
  ε (``robust_accuracy_curve``), the cumulative worst case (``worst_case``), ε_ref
  (``eps_ref``) and ρ₂ (``rho2``).
- ``roc``: per-class one-vs-rest ROC curves and AUC (``per_class_roc``).
- ``transfer``: the transferability matrix between models (``transfer_matrix``).
- ``needed``: the relative ℓ2 perturbation needed for a confident targeted misclassification
  (``perturbation_needed``, the latent-classifier report's robustness).
- ``checks``: soundness checks that flag gradient masking (``soundness_checks``, ``reliable``).
- ``protocol``: the evaluation suites (``standard_evaluation`` with ``suite="standard"``,
  ``"autoattack"`` or ``"quick"``; ``ProtocolResult.report()``, ``save_points``).
- ``generative``: scores of generative models.

>>> from advlab import attacks, eval as ev  # doctest: +SKIP
>>> res = ev.robust_accuracy(model, x, y, attacks.create("pgd", eps=0.3))  # doctest: +SKIP
>>> res.robust_accuracy, res.success_rate, res.l2_median  # doctest: +SKIP
"""

from advlab.eval.checks import CheckResult, reliable, soundness_checks
from advlab.eval.needed import PerturbationNeeded, perturbation_needed
from advlab.eval.protocol import (
    SUITES,
    AutoAttackSettings,
    ProtocolResult,
    standard_evaluation,
)
from advlab.eval.robust import (
    AccuracyCurve,
    EpsRef,
    Rho2,
    RobustEvaluation,
    accuracy_from_norms,
    clean_accuracy,
    eps_ref,
    rho2,
    robust_accuracy,
    robust_accuracy_curve,
    worst_case,
)
from advlab.eval.roc import ROCResult, per_class_roc, softmax_scores
from advlab.eval.transfer import TransferMatrix, transfer_matrix, transfer_robust

__all__ = [
    "SUITES", "AccuracyCurve", "AutoAttackSettings", "CheckResult", "ProtocolResult",
    "standard_evaluation", "EpsRef", "PerturbationNeeded", "ROCResult",
    "RobustEvaluation", "Rho2", "TransferMatrix", "accuracy_from_norms", "clean_accuracy",
    "eps_ref", "per_class_roc", "perturbation_needed", "reliable", "rho2", "robust_accuracy",
    "robust_accuracy_curve", "soundness_checks", "softmax_scores", "transfer_matrix",
    "transfer_robust", "worst_case",
]
