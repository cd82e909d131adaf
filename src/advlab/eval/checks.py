"""Soundness checks that flag gradient masking and misuse (in the spirit of AutoAttack's checks).

Each check is a small pure function returning a ``CheckResult`` (name, pass/fail, the numbers
it compared, an explanation of what a failure means and what to do). ``soundness_checks`` runs
the ones that apply to an evaluation; ``reliable`` says whether all passed. A robustness number
printed next to a failed check is marked unreliable: the attack, not the model, may have lost.

The checks (Carlini et al. 2019, "On Evaluating Adversarial Robustness"; Athalye et al. 2018):
- ``logits``: the model returns logits, not probabilities (softmax outputs flatten gradients).
- ``deterministic``: two forward passes agree (a randomized model needs EOT).
- ``gradients``: input gradients of the loss are finite and not (almost all) zero.
- ``unbounded``: with ε unbounded (ℓ∞ ε = 1 covers the whole pixel box) PGD reaches ~0 accuracy.
- ``more-steps``: more PGD steps (and restarts) do not raise accuracy.
- ``fgsm-eps``: FGSM at a large ε is not more accurate than at a small ε.
- ``transfer``: white-box accuracy is not above black-box (transfer) accuracy.
- ``black-box``: Square (no gradient), run after the white-box attacks, does not lower their
  robust accuracy by more than half a point (AutoAttack's flag for gradient masking).
- ``transfer-points``: the transfer attack breaks no point that every white-box attack left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from advlab.attacks import Attack, create
from advlab.attacks.base import logits_of
from advlab.attacks.threat import ThreatModel
from advlab.eval.robust import (
    Model,
    check_batch_size,
    check_data,
    model_device,
    predict,
    robust_accuracy,
)
from advlab.eval.transfer import transfer_robust
from advlab.modes import eval_mode


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    message: str  # what was compared and, on failure, what it suggests
    values: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "message": self.message,
                "values": self.values}


def reliable(checks: list[CheckResult]) -> bool:
    """True when every check passed (an empty list is vacuously reliable)."""
    return all(c.passed for c in checks)


def _acc(model: Model, x: Tensor, y: Tensor, attack: Attack, batch_size: int | None,
         device: torch.device) -> float:
    return robust_accuracy(model, x, y, attack, batch_size=batch_size,
                           device=device).robust_accuracy


# --- checks on the model's outputs and gradients -------------------------------------------

def check_logits(model: Model, x: Tensor, *, batch_size: int | None = None,
                 device: torch.device | str | None = None) -> CheckResult:
    """Fails when every output row is a probability vector (non-negative, summing to 1)."""
    out = predict(model, x[:batch_size or 500], batch_size, device)
    sums = out.sum(dim=1)
    probs = bool((out >= 0).all() and torch.allclose(sums, torch.ones_like(sums), atol=1e-4))
    if probs:
        return CheckResult("logits", False, "the model's outputs are probabilities (rows >= 0 "
                           "summing to 1): attacks need logits, a softmax output saturates the "
                           "cross-entropy and masks gradients; remove the final softmax",
                           {"mean_row_sum": sums.mean().item()})
    return CheckResult("logits", True, "the model returns logits, not probabilities",
                       {"mean_row_sum": sums.mean().item()})


def check_deterministic(model: Model, x: Tensor, *, batch_size: int | None = None,
                        device: torch.device | str | None = None) -> CheckResult:
    """Fails when two forward passes on the same inputs differ (a randomized model)."""
    a = predict(model, x[:batch_size or 500], batch_size, device)
    b = predict(model, x[:batch_size or 500], batch_size, device)
    diff = (a - b).abs().max().item()
    scale = a.abs().max().item() + 1e-12
    if diff > 1e-5 * scale + 1e-6:
        return CheckResult("deterministic", False, "two forward passes on the same inputs "
                           "differ: the model is randomized, so single-sample gradients are "
                           "noisy; attack it with EOT (average gradients over the randomness)",
                           {"max_logit_difference": diff})
    return CheckResult("deterministic", True, "two forward passes agree",
                       {"max_logit_difference": diff})


def input_gradients(model: Model, x: Tensor, y: Tensor, *, batch_size: int | None = None,
                    device: torch.device | str | None = None) -> Tensor:
    """d CE(model(x), y) / dx per sample, (N, ...), in eval mode, on ``x``'s device.

    Raises ``ValueError`` when the model's output does not depend differentiably on ``x``.
    """
    check_data(x, y)
    check_batch_size(batch_size)
    batch_size = batch_size or 500
    dev = model_device(model, x, device)
    grads = []
    with eval_mode(model), torch.enable_grad():
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size].to(dev).float().requires_grad_(True)
            loss = F.cross_entropy(logits_of(model(xb)), y[i:i + batch_size].to(dev).long(),
                                   reduction="sum")
            if not loss.requires_grad:
                raise ValueError("expected the model output to depend differentiably on "
                                 "the input, got an output without gradient")
            (g,) = torch.autograd.grad(loss, xb, materialize_grads=True)
            grads.append(g.to(x.device))
    return torch.cat(grads)


def check_gradients(model: Model, x: Tensor, y: Tensor, *, zero_tol: float = 1e-12,
                    max_zero_fraction: float = 0.1, batch_size: int | None = None,
                    device: torch.device | str | None = None) -> CheckResult:
    """Fails when an input gradient is NaN/inf, or more than ``max_zero_fraction`` of the
    points have a gradient with every entry <= ``zero_tol`` in absolute value."""
    try:
        g = input_gradients(model, x, y, batch_size=batch_size, device=device)
    except ValueError as err:
        return CheckResult("gradients", False, f"no input gradient: {err}; attack a "
                           "differentiable approximation (BPDA)", {})
    flat = g.reshape(g.shape[0], -1)
    n_bad = int((~torch.isfinite(flat)).any(dim=1).sum())
    zero = flat.abs().amax(dim=1) <= zero_tol
    values = {"nonfinite_fraction": n_bad / flat.shape[0],
              "zero_fraction": zero.float().mean().item()}
    if n_bad:
        return CheckResult("gradients", False, f"{n_bad} of {flat.shape[0]} input gradients "
                           "contain NaN or inf: gradient attacks are meaningless there "
                           "(numerically unstable model or loss)", values)
    if values["zero_fraction"] > max_zero_fraction:
        return CheckResult("gradients", False, f"{values['zero_fraction']:.0%} of the input "
                           "gradients are zero: gradients are masked (quantization, "
                           "saturated softmax, non-differentiable step); use BPDA, a "
                           "margin loss on logits or transfer attacks", values)
    return CheckResult("gradients", True, "input gradients are finite and non-zero", values)


# --- checks comparing attacks ---------------------------------------------------------------

def check_unbounded(model: Model, x: Tensor, y: Tensor, *, steps: int = 20,
                    max_accuracy: float = 0.05, batch_size: int | None = None,
                    device: torch.device | str | None = None) -> CheckResult:
    """PGD with ℓ∞ ε = 1 (any image of the box is reachable), no random start, must bring
    accuracy to <= ``max_accuracy``."""
    dev = model_device(model, x, device)
    attack = create("pgd", eps=1.0, steps=steps, norm="linf", random_start=False,
                    early_stop=True)
    acc = _acc(model, x, y, attack, batch_size, dev)
    values = {"accuracy": acc, "eps": 1.0, "steps": float(steps)}
    if acc > max_accuracy + 1e-6:  # float32 accuracies: 1/20 must pass max_accuracy 0.05
        return CheckResult("unbounded", False, f"PGD-{steps} with unbounded eps (linf 1) "
                           f"leaves accuracy {acc:.1%} > {max_accuracy:.0%}: the attack cannot "
                           "even reach images of other classes, so gradients are masked or "
                           "the attack is broken", values)
    return CheckResult("unbounded", True, f"unbounded PGD reaches accuracy {acc:.1%}", values)


def check_more_steps(model: Model, x: Tensor, y: Tensor, *, eps: float, norm: str = "linf",
                     steps: int = 10, more_steps: int = 50, restarts: int = 1,
                     random_start: bool = False, tol: float = 0.02, batch_size: int | None = None,
                     device: torch.device | str | None = None) -> CheckResult:
    """PGD with ``more_steps`` (and ``restarts``) must not be more than ``tol`` more accurate
    than PGD with ``steps``; the step size follows the default 2.5·ε / steps of each."""
    dev = model_device(model, x, device)
    base = create("pgd", eps=eps, norm=norm, steps=steps, random_start=random_start,
                  early_stop=True)
    strong = create("pgd", eps=eps, norm=norm, steps=more_steps, restarts=restarts,
                    random_start=random_start or restarts > 1, early_stop=True)
    a_base = _acc(model, x, y, base, batch_size, dev)
    a_strong = _acc(model, x, y, strong, batch_size, dev)
    values = {"accuracy_base": a_base, "accuracy_strong": a_strong, "steps": float(steps),
              "more_steps": float(more_steps), "restarts": float(restarts)}
    label = f"PGD-{more_steps}" + (f" x{restarts} restarts" if restarts > 1 else "")
    if a_strong > a_base + tol:
        return CheckResult("more-steps", False, f"{label} is more accurate ({a_strong:.1%}) "
                           f"than PGD-{steps} ({a_base:.1%}): a stronger attack does worse, "
                           "the loss landscape misleads small steps (gradient masking) or the "
                           "step size is wrong; report the minimum over attacks", values)
    return CheckResult("more-steps", True, f"{label} ({a_strong:.1%}) is not more accurate "
                       f"than PGD-{steps} ({a_base:.1%})", values)


def check_fgsm_eps(model: Model, x: Tensor, y: Tensor, *, eps_small: float, eps_large: float,
                   tol: float = 0.02, batch_size: int | None = None,
                   device: torch.device | str | None = None) -> CheckResult:
    """FGSM at ``eps_large`` must not be more than ``tol`` more accurate than at ``eps_small``."""
    if not 0 <= eps_small < eps_large:
        raise ValueError(f"expected 0 <= eps_small < eps_large, got {eps_small!r} and "
                         f"{eps_large!r}")
    dev = model_device(model, x, device)
    a_small = _acc(model, x, y, create("fgsm", eps=eps_small), batch_size, dev)
    a_large = _acc(model, x, y, create("fgsm", eps=eps_large), batch_size, dev)
    values = {"eps_small": eps_small, "eps_large": eps_large, "accuracy_small": a_small,
              "accuracy_large": a_large}
    if a_large > a_small + tol:
        return CheckResult("fgsm-eps", False, f"FGSM at eps {eps_large:g} is more accurate "
                           f"({a_large:.1%}) than at eps {eps_small:g} ({a_small:.1%}): the "
                           "gradient at x points away from the nearby adversarial region "
                           "(gradient masking); use iterative attacks with restarts", values)
    return CheckResult("fgsm-eps", True, f"FGSM at eps {eps_large:g} ({a_large:.1%}) is not "
                       f"more accurate than at eps {eps_small:g} ({a_small:.1%})", values)


def check_transfer(model: Model, x: Tensor, y: Tensor, *, surrogate: Model, attack: Attack,
                   tol: float = 0.02, batch_size: int | None = None,
                   device: torch.device | str | None = None) -> CheckResult:
    """The white-box accuracy under ``attack`` must not exceed by more than ``tol`` the
    accuracy on ``attack``'s examples crafted on ``surrogate`` (a black-box transfer attack)."""
    dev = model_device(model, x, device)
    white = _acc(model, x, y, attack, batch_size, dev)
    src = robust_accuracy(surrogate, x, y, attack, batch_size=batch_size,
                          device=model_device(surrogate, x, device))
    black = transfer_robust(model, x, y, src.result.adv, batch_size=batch_size,
                            device=dev).float().mean().item()
    values = {"white_box_accuracy": white, "transfer_accuracy": black}
    if white > black + tol:
        return CheckResult("transfer", False, f"white-box accuracy {white:.1%} is above the "
                           f"transfer accuracy {black:.1%}: examples crafted on another model "
                           "beat the model's own gradients, so its gradients are masked", values)
    return CheckResult("transfer", True, f"white-box accuracy {white:.1%} <= transfer "
                       f"accuracy {black:.1%} (+{tol:.0%})", values)


def check_black_box(white: Tensor, after: Tensor, *, tol: float = 0.005) -> CheckResult:
    """``white`` (N,) bool: robust after every white-box attack; ``after``: robust once the
    score-based black-box attack (Square) also ran. A gradient-free attack finding more than
    ``tol`` of the points that gradients could not break is the mark of masked gradients."""
    _same_points(white, after)
    n = max(white.numel(), 1)
    drop = int((white & ~after).sum()) / n
    values = {"white_box_accuracy": white.float().mean().item() if white.numel() else 0.0,
              "after_black_box": after.float().mean().item() if after.numel() else 0.0,
              "drop": drop}
    if drop > tol:
        return CheckResult("black-box", False, f"Square, which uses no gradient, lowered the "
                           f"robust accuracy the white-box attacks left by {drop:.2%} (> "
                           f"{tol:.1%}): the model's gradients are likely masked (AutoAttack's "
                           f"flag); trust the worst case, not the white-box numbers, and look "
                           f"for the cause", values)
    return CheckResult("black-box", True, f"Square lowered the white-box robust accuracy by "
                       f"{drop:.2%} (<= {tol:.1%})", values)


def check_transfer_points(white: Tensor, transfer: Tensor) -> CheckResult:
    """``white`` (N,) bool: robust after every white-box attack; ``transfer``: not fooled by
    the examples crafted on a surrogate. A transferred example that breaks a point the model's
    own gradients could not break means those gradients are masked."""
    _same_points(white, transfer)
    beaten = int((white & ~transfer).sum())
    values = {"points": float(beaten)}
    if beaten:
        return CheckResult("transfer-points", False, f"the transfer attack broke {beaten} "
                           f"point(s) that every white-box attack left robust: the model's "
                           f"gradients are likely masked", values)
    return CheckResult("transfer-points", True, "the transfer attack broke no point the "
                       "white-box attacks left robust", values)


def _same_points(a: Tensor, b: Tensor) -> None:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.dtype != torch.bool \
            or b.dtype != torch.bool or a.shape != b.shape or a.dim() != 1:
        raise ValueError("expected two bool tensors of the same shape (N,)")


# --- the runner -----------------------------------------------------------------------------

def check_n_checks(n: object) -> None:
    """Raise ``ValueError`` unless ``n`` (points of the soundness checks) is None or an int >= 1."""
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"expected n_checks (points used by the soundness checks) to be an "
                         f"integer >= 1 or None (all points), got {n!r}")


def soundness_checks(model: Model, x: Tensor, y: Tensor, *, threat: ThreatModel | None = None,
                     surrogate: Model | None = None, transfer_attack: Attack | None = None,
                     n: int | None = 200, seed: int = 0, steps: int = 10,
                     more_steps: int = 50, restarts: int = 3, tol: float = 0.02,
                     batch_size: int | None = None, device: torch.device | str | None = None
                     ) -> list[CheckResult]:
    """Run every check that applies, on a seeded subset of ``n`` points (all if None).

    Always: logits, deterministic, gradients, unbounded. With a ``threat`` (fixed ε): more-steps
    (PGD-``steps`` vs PGD-``more_steps`` with ``restarts``) and, for ℓ∞, fgsm-eps (ε vs
    min(1, 2ε)). With a ``surrogate``: transfer, using ``transfer_attack`` (default PGD in the
    threat model, or PGD ℓ∞ ε = 0.1 without one).
    """
    check_data(x, y)
    check_n_checks(n)
    if n is not None and n < x.shape[0]:
        g = torch.Generator().manual_seed(seed)
        idx = torch.sort(torch.randperm(x.shape[0], generator=g)[:n]).values.to(x.device)
        x, y = x[idx], y[idx]
    kw: dict[str, Any] = {"batch_size": batch_size, "device": device}
    checks = [check_logits(model, x, **kw), check_deterministic(model, x, **kw),
              check_gradients(model, x, y, **kw), check_unbounded(model, x, y, **kw)]
    if threat is not None and threat.eps > 0:
        checks.append(check_more_steps(model, x, y, eps=threat.eps, norm=threat.norm,
                                       steps=steps, more_steps=more_steps, restarts=restarts,
                                       tol=tol, **kw))
        if threat.norm == "linf" and threat.eps < 1:
            checks.append(check_fgsm_eps(model, x, y, eps_small=threat.eps,
                                         eps_large=min(1.0, 2 * threat.eps), tol=tol, **kw))
    if surrogate is not None:
        if transfer_attack is None:
            t = threat if threat is not None and threat.eps > 0 else ThreatModel("linf", 0.1)
            transfer_attack = create("pgd", eps=t.eps, norm=t.norm, steps=more_steps,
                                     early_stop=False)
        checks.append(check_transfer(model, x, y, surrogate=surrogate, attack=transfer_attack,
                                     tol=tol, **kw))
    return checks
