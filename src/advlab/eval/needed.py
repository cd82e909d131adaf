r"""The perturbation *needed* for a confident targeted misclassification ("noise required").

The robustness measure of the report 'Making Neural Nets Robust Again': for each example, the
relative size ‖x_adv − x‖₂ / ‖x‖₂ of the ``optim`` attack's adversary — descend
CE(f(x), target) + λ‖x − x̄‖₂ until the target's softmax probability reaches ``confidence``
(95%) — averaged over the examples.

With the report's λ = 0.1 the attack can stall short of the confidence: it settles where the
cross-entropy gradient balances the penalty, and models whose input gradients are small (latent
classifiers, robust models) stop there on many examples. A mean over only the examples that
reached the confidence then depends on which ones did, and is not comparable between models.
``perturbation_needed`` therefore escalates: the examples that did not reach the confidence at
``lams[0]`` are attacked again from x with ``lams[1]``, and so on (the last λ is 0 by default:
pure cross-entropy descent, with the same early stop). The result keeps, per example, the
first λ that reached the confidence, so both the report's number (``mean_first``: over the
examples reached at ``lams[0]``) and the number over all examples (``mean_all``) are available.

Examples with ‖x‖₂ = 0 (a black image) have no relative perturbation: their ``ratio`` is NaN
and every mean leaves them out (as ``rho2`` does), so one of them cannot turn a mean into a
division by a clamped zero (≈ 1e9). They are still attacked (``reached``, ``lam`` and ``adv``
are filled in, and the reached fractions count them); ``n_zero_norm`` says how many there were.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from advlab.attacks.base import Model
from advlab.eval.robust import check_data


@dataclass(frozen=True)
class PerturbationNeeded:
    """Per-example results of ``perturbation_needed``; tensors are (B,) on the CPU.

    ``ratio``: ‖x_adv − x‖₂/‖x‖₂ of the final adversary (NaN where ‖x‖₂ = 0: left out of
    every mean, counted by ``n_zero_norm``); ``reached``: the target's probability
    reached the confidence; ``lam``: the penalty weight of the run that produced the adversary
    (NaN where no λ reached it: the adversary of the last λ is kept); ``adv``: the adversaries.
    """

    ratio: Tensor
    reached: Tensor
    lam: Tensor
    lams: tuple[float, ...]
    confidence: float
    adv: Tensor

    @property
    def n(self) -> int:
        return int(self.ratio.numel())

    @property
    def n_zero_norm(self) -> int:
        """Examples with ‖x‖₂ = 0: no relative perturbation, left out of the means."""
        return int(self.ratio.isnan().sum())

    @property
    def _defined(self) -> Tensor:
        return ~self.ratio.isnan()

    def _mean(self, mask: Tensor) -> float:
        mask = mask & self._defined
        return self.ratio[mask].mean().item() if mask.any() else float("nan")

    @property
    def reached_fraction(self) -> float:
        return self.reached.float().mean().item() if self.n else float("nan")

    @property
    def reached_first_fraction(self) -> float:
        """Share of the examples that reached the confidence with the first λ (the report's)."""
        return (self.lam == self.lams[0]).float().mean().item() if self.n else float("nan")

    @property
    def mean_first(self) -> float:
        """Mean ratio over the examples reached with the first λ: the report's protocol."""
        return self._mean(self.lam == self.lams[0])

    @property
    def mean_reached(self) -> float:
        """Mean ratio over the examples that reached the confidence with any λ."""
        return self._mean(self.reached)

    @property
    def mean_all(self) -> float:
        """Mean ratio over all examples (the unreached ones with their last adversary: a lower
        bound of what they need); equal to ``mean_reached`` when every example reached."""
        return self._mean(torch.ones_like(self.reached))

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "lams": list(self.lams), "confidence": self.confidence,
                "mean_first": self.mean_first, "reached_first": self.reached_first_fraction,
                "mean_reached": self.mean_reached, "mean_all": self.mean_all,
                "reached": self.reached_fraction, "n_zero_norm": self.n_zero_norm}


def perturbation_needed(model: Model, x: Tensor, y: Tensor, target: Tensor, *,
                        lams: Sequence[float] | float = (0.1, 0.01, 0.0), confidence: float = 0.95,
                        steps: int = 500, lr: float = 0.01) -> PerturbationNeeded:
    """Relative ℓ2 perturbation the ``optim`` attack needs to make ``model`` give ``target``
    a probability ≥ ``confidence``, with λ escalated over ``lams`` for the examples a larger
    λ left short (see the module). x (B, ...) in [0, 1]; y, target (B,) int64.

    ``lams``: a sequence of penalty weights >= 0 (finite), or a single one (``lams=0.1`` is
    ``lams=(0.1,)``: no escalation). Examples with ‖x‖₂ = 0 get a NaN ratio and are left out of
    the means (``n_zero_norm`` counts them).

    Examples::
        >>> res = perturbation_needed(model, x, y, (y + 1) % 10)  # doctest: +SKIP
        >>> res.mean_all, res.reached_fraction, res.mean_first  # doctest: +SKIP
    """
    from advlab import attacks

    check_data(x, y)
    lams = _check_lams(lams)
    if not isinstance(target, Tensor) or target.shape != y.shape:
        shape = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"expected target of shape {tuple(y.shape)} like y, got {shape}")
    n = x.shape[0]
    adv = x.detach().clone()
    reached = torch.zeros(n, dtype=torch.bool)
    lam_used = torch.full((n,), float("nan"))
    todo = torch.arange(n)
    for lam in lams:
        attack = attacks.create("optim", lam=lam, lr=lr, steps=steps, confidence=confidence)
        idx = todo.to(x.device)
        result = attack(model, x[idx], y[idx], target[idx], index=idx)
        adv[idx] = result.adv.to(adv.dtype)
        ok = result.info["reached"].cpu()
        reached[todo[ok]] = True
        lam_used[todo[ok]] = lam
        todo = todo[~ok]
        if todo.numel() == 0:
            break
    delta = (adv - x).flatten(1).norm(dim=1)
    x_norm = x.flatten(1).norm(dim=1)
    # ‖x‖₂ = 0: no relative size (NaN, left out of the means), not delta / 1e-12
    ratio = torch.where(x_norm > 0, delta / x_norm.clamp_min(1e-12), torch.nan).detach().cpu()
    return PerturbationNeeded(ratio=ratio, reached=reached, lam=lam_used, lams=lams,
                              confidence=float(confidence), adv=adv.detach())


def _is_number(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_lams(lams: object) -> tuple[float, ...]:
    """``lams`` as a tuple of finite floats >= 0: a non-empty sequence, or a single number."""
    if isinstance(lams, Tensor) or (hasattr(lams, "tolist") and not _is_number(lams)):
        lams = lams.tolist()  # a tensor or array: its numbers (a 0-d one: a single number)
    if _is_number(lams):
        values: list[object] = [lams]
    elif isinstance(lams, Iterable) and not isinstance(lams, str | bytes):
        values = list(lams)
    else:
        values = []
    values = [v.item() if isinstance(v, Tensor) and v.dim() == 0 else v for v in values]
    if not values or not all(_is_number(v) and math.isfinite(v) and v >= 0 for v in values):
        shown = lams if isinstance(lams, Sequence) or not values else tuple(values)
        raise ValueError(f"expected lams to be a finite number >= 0 or a non-empty sequence of "
                         f"such numbers, got {shown!r}")
    return tuple(float(v) for v in values)
