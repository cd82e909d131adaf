"""Checks of a model's first output before it is attacked: logits, and a function of the input.

Two misuses make every attack report a robustness the model does not have, silently:

- a model that ends in a softmax returns probabilities: the cross-entropy of a saturated
  softmax has (numerically) zero gradient and the margins the attacks climb are squashed
  into [0, 1], so the attacks lose (on the digits MLP, CW's success rate halves). AutoAttack
  flags the same misuse (Croce & Hein 2020, "Reliable evaluation of adversarial robustness
  with an ensemble of diverse parameter-free attacks", its ``checks.py``); Carlini et al.
  2019, "On Evaluating Adversarial Robustness", §4.
- a model whose output does not depend on its input (a constant head, a broken wrapper that
  ignores ``x``): no attack can change its prediction, so its robust accuracy equals its clean
  accuracy whatever the threat model.

Both are pure functions of one batch's outputs raising ``ValueError``; the attacks call them on
the first batch they see (``check_logits_like``), the evaluations on the clean pass
(``check_depends_on_input``).
"""

from __future__ import annotations

import torch
from torch import Tensor

PROBABILITY_TOL = 1e-4  # |row sum - 1| of a probability vector, in float32 or wider


def check_logits_like(out: Tensor) -> None:
    """Raise ``ValueError`` when ``out`` (B, K) looks like probabilities rather than logits:
    every row non-negative and summing to 1 within ``PROBABILITY_TOL`` (a looser bound in
    half precision, whose rounding alone is larger). An empty batch says nothing and passes.
    Log-probabilities (a final ``log_softmax``) are logits up to a per-row constant and pass.
    """
    if not isinstance(out, Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"expected model outputs of shape (B, K), got {shape}")
    if out.shape[0] == 0 or not out.is_floating_point():
        return
    out = out.detach()
    k = out.shape[1]
    tol = max(PROBABILITY_TOL, k * torch.finfo(out.dtype).eps)
    sums = out.double().sum(dim=1)
    if bool((out >= 0).all()) and bool(((sums - 1).abs() <= tol).all()):
        raise ValueError(
            f"expected the model to return logits, got probabilities: every one of the "
            f"{out.shape[0]} rows of its first batch is >= 0 and sums to 1 (within {tol:g}); "
            f"a softmax output saturates the losses and hides the margins, so attacks fail "
            f"and the robustness measured is overstated. Pass logits instead, e.g. drop the "
            f"model's final softmax (a final log_softmax is fine)")


def check_depends_on_input(x: Tensor, out: Tensor) -> None:
    """Raise ``ValueError`` when ``out`` (B, K) does not depend on ``x`` (B, ...): at least
    two of the inputs differ, yet every output row is the same (bit for bit). A batch of one
    point, or of identical points, says nothing and passes."""
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"expected model outputs of shape ({x.shape[0]}, K), got {shape}")
    if x.shape[0] < 2:
        return
    flat = x.detach().reshape(x.shape[0], -1)
    if bool((flat == flat[:1]).all()):
        return  # every input the same: the same output is expected
    out = out.detach()
    if bool((out == out[:1]).all()):
        raise ValueError(
            f"expected the model's output to depend on its input, got the same output for "
            f"all {x.shape[0]} points of a batch of different inputs: no attack can change "
            f"its predictions, so any robust accuracy measured would equal the clean accuracy "
            f"(a model that ignores x: check its forward, or the wrapper around it)")
