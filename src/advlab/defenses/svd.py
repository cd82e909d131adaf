r"""The SVD defense: after training, remove or shrink the smallest singular values of the weights.

Every weight matrix of a trained model — ``nn.Linear`` weights (out, in) and ``nn.Conv2d``
kernels reshaped to (out, in/groups·kh·kw) — is decomposed W = U·diag(s)·Vᵀ, and the bottom
``fraction`` of its r = min(out, in) singular values, ⌊fraction·r⌋ of them, is set to zero
(``mode="zero"``, a low-rank approximation) or divided by ``factor`` = 10 (``mode="scale"``).
Biases are kept. The report ('Making Neural Nets Robust Again') sweeps the fraction and draws
test accuracy and adversarial accuracy against it (its Figure 7): ``sweep`` below, and
``advlab defend svd RUN --fraction 0:0.9:0.05``.

A spectrally bounded (``lipschitz``) layer is truncated on its stored weight, before the bound.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from advlab.defenses.common import check_choice, check_fraction, check_number

MODES = ("zero", "scale")


def n_truncated(rank: int, fraction: float) -> int:
    """How many singular values of a rank-``rank`` matrix the bottom ``fraction`` is:
    ⌊fraction·rank⌋ (a tiny tolerance absorbs float error, e.g. 0.3·10 = 2.9999…)."""
    return min(rank, int(math.floor(fraction * rank + 1e-9)))


def truncate_matrix(w: Tensor, fraction: float, mode: str = "zero",
                    factor: float = 10.0) -> Tensor:
    """``w`` (m, n) with its bottom ⌊fraction·min(m, n)⌋ singular values zeroed or ÷ factor."""
    k = n_truncated(min(w.shape), fraction)
    if k == 0:
        return w.clone()
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)  # s descending
    s = s.clone()
    s[s.shape[0] - k:] = 0.0 if mode == "zero" else s[s.shape[0] - k:] / factor
    return ((u * s) @ vh).to(w.dtype)


def _weight_param(module: nn.Module) -> Tensor:
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) of every Linear and Conv2d layer of ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


@torch.no_grad()
def svd_truncate(model: nn.Module, fraction: float, *, mode: str = "zero",
                 factor: float = 10.0) -> nn.Module:
    """A copy of ``model`` whose every weight matrix lost its bottom ``fraction`` of singular
    values (``mode`` 'zero') or had them divided by ``factor`` ('scale'); ``model`` is kept."""
    check_fraction("fraction", fraction)
    check_choice("mode", mode, MODES)
    check_number("factor", factor, positive=True)
    out = copy.deepcopy(model)
    for _, m in weight_layers(out):
        p = _weight_param(m)
        mat = p.reshape(p.shape[0], -1)  # conv: (out, in/groups·kh·kw)
        p.copy_(truncate_matrix(mat, fraction, mode, factor).reshape(p.shape))
    return out


def check_sweep(fractions: Sequence[float], *, mode: str = "zero", factor: float = 10.0,
                craft_on: str = "truncated", attack: Any = None, suite: str | None = None,
                threat: Any = None, **protocol: Any) -> None:
    """Raise ``ValueError`` for settings ``sweep`` cannot run (cheap: a command calls it before
    loading anything or creating its run directory); with a ``suite``, ``threat`` and the
    ``protocol`` options as ``advlab.eval.protocol.check_protocol`` checks them."""
    for f in fractions:
        check_fraction("fraction", f)
    check_choice("mode", mode, MODES)
    check_number("factor", factor, positive=True)
    check_choice("craft_on", craft_on, ("truncated", "original"))
    if suite is None:
        return
    from advlab.eval.protocol import check_protocol

    if attack is not None:
        raise ValueError("give an attack or a suite, not both")
    if craft_on != "truncated":
        raise ValueError("a suite attacks each truncated model white-box, and its transfer "
                         "step already crafts on the original model: drop "
                         "craft_on='original' (--craft-on original)")
    checked = ("steps", "restarts", "minimal", "eot", "n_checks", "batch_size")
    check_protocol(threat, suite=suite, **{k: v for k, v in protocol.items() if k in checked})


@dataclass(frozen=True)
class SweepRow:
    fraction: float
    clean_accuracy: float
    adversarial_accuracy: float | None  # None without an attack
    removed: int  # singular values changed, summed over layers
    extra: dict[str, Any] = field(default_factory=dict)


def sweep(model: nn.Module, x: Tensor, y: Tensor, fractions: Sequence[float], *,
          mode: str = "zero", factor: float = 10.0, attack: Any = None,
          craft_on: str = "truncated", batch_size: int = 500, suite: str | None = None,
          threat: Any = None, **protocol: Any) -> list[SweepRow]:
    """Clean and adversarial accuracy of ``svd_truncate(model, f)`` for every f in ``fractions``.

    ``attack`` (an ``advlab.attacks`` attack, or None) is run white-box on each truncated model
    (``craft_on="truncated"``), or once on the original ``model`` and its adversarial examples
    passed to every truncated model (``craft_on="original"``, a transfer setting).

    ``suite`` (``standard``, ``autoattack`` or ``quick``, with ``threat``) instead evaluates
    each truncated model with ``advlab.eval.standard_evaluation``, the original model as the
    transfer surrogate; ``protocol`` goes to it (``n_checks``, ``seed``, ``autoattack``, ...).
    The row's ``adversarial_accuracy`` is then the per-point worst case, and ``extra`` holds
    ``reliable``, the failed checks, the transfer accuracy and the worst case after each step.
    """
    from advlab.eval.robust import predict, robust_accuracy

    check_sweep(fractions, mode=mode, factor=factor, craft_on=craft_on, attack=attack,
                suite=suite, threat=threat, **protocol)
    ranks = [min(m.weight.shape[0], math.prod(m.weight.shape[1:]))
             for _, m in weight_layers(model)]
    adv_original = None
    if attack is not None and craft_on == "original":
        adv_original = robust_accuracy(model, x, y, attack, batch_size=batch_size).result.adv
    rows = []
    for f in fractions:
        m = svd_truncate(model, f, mode=mode, factor=factor)
        m.eval()
        clean_logits = predict(m, x, batch_size)
        clean = (clean_logits.argmax(1) == y).float().mean().item()
        adv_acc, extra = None, {}
        if suite is not None:
            adv_acc, extra = _suite_row(m, model, x, y, suite, threat, batch_size, protocol)
        elif attack is not None and adv_original is None:
            ev = robust_accuracy(m, x, y, attack, batch_size=batch_size,
                                 clean_logits=clean_logits)
            adv_acc = ev.robust_accuracy
        elif adv_original is not None:
            adv_acc = (predict(m, adv_original, batch_size).argmax(1) == y).float().mean().item()
        rows.append(SweepRow(float(f), clean, adv_acc, sum(n_truncated(r, f) for r in ranks),
                             extra))
    return rows


def _suite_row(truncated: nn.Module, original: nn.Module, x: Tensor, y: Tensor, suite: str,
               threat: Any, batch_size: int, protocol: dict[str, Any]
               ) -> tuple[float, dict[str, Any]]:
    """The worst case of ``standard_evaluation`` on the truncated model, and what to keep."""
    from advlab.eval.protocol import standard_evaluation

    res = standard_evaluation(truncated, x, y, threat=threat, suite=suite, surrogate=original,
                              batch_size=batch_size, **protocol)
    return res.robust_accuracy, {
        "reliable": res.reliable,
        "failed_checks": [c.name for c in res.checks if not c.passed],
        "transfer_accuracy": res.transfer_accuracy,
        # the worst case after each step and every step before it, in run order (eval
        # robust's robust_accuracy_after): later steps attack only the points left
        "robust_accuracy_after": dict(res.cumulative()),
        "seconds": res.seconds}
