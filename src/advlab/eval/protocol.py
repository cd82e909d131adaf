"""The standard robustness protocol: every attack a defense must face, with its soundness checks.

``standard_evaluation`` runs, on the same points and for one threat model (norm, ε):

1. clean accuracy;
2. FGSM at ε (ℓ∞ threats);
3. PGD with ``steps`` (default 50) steps and ``restarts`` (default 10) random restarts, the
   strongest result per point kept, on the cross-entropy and then, on the points still standing,
   on the CW logit margin (Madry et al.'s MNIST challenge ran both: a very confident point's CE
   gradient can vanish while its margin gradient does not);
4. a minimal-perturbation attack in the threat's norm (DeepFool by default, or CW for ℓ2): the
   accuracy over ε from one run, the average perturbation needed to fool each point ("noise
   required" of the sources) and ρ₂ = mean ‖r‖₂/‖x‖₂ (ℓ2 DeepFool);
5. ε_ref, the smallest FGSM ε that brings accuracy to 50% (ℓ∞);
6. with a ``surrogate`` (an undefended model), a transfer attack: PGD crafted on the surrogate,
   shown to the model (black box);
7. the soundness checks of ``advlab.eval.checks`` (gradient masking).

The headline number is the per-point worst case over every attack at ε (a point counts as
robust only if no attack fooled it within the budget). A failed check marks it unreliable.

Models that are randomized need EOT (Athalye et al. 2018): with ``eot=k`` the attacks see the
average logits of k forward passes (``advlab.attacks.EOT``), whose gradient is the EOT
gradient. Non-differentiable defenses (projection) expose BPDA gradients themselves
(``advlab.defenses.latent``); the ``gradients`` check fails when one does not.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from advlab.attacks import EOT, create
from advlab.attacks.threat import ThreatModel
from advlab.eval.checks import (
    CheckResult,
    check_deterministic,
    check_n_checks,
    reliable,
    soundness_checks,
)
from advlab.eval.robust import (
    AccuracyCurve,
    EpsRef,
    Model,
    Rho2,
    RobustEvaluation,
    check_batch_size,
    check_data,
    eps_ref,
    finite_or_none,
    model_device,
    predict,
    rho2,
    robust_accuracy,
    robust_accuracy_curve,
)
from advlab.eval.transfer import transfer_robust

MINIMAL_ATTACKS = ("deepfool", "cw")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProtocolResult:
    """Everything ``standard_evaluation`` measured (tensors kept out of ``to_dict``)."""

    threat: ThreatModel
    n: int
    clean_accuracy: float
    attacks: dict[str, RobustEvaluation] = field(repr=False)  # fgsm, pgd, pgd-margin (at ε)
    curve: AccuracyCurve | None = field(repr=False)  # minimal attack, accuracy over ε
    rho2: Rho2 | None = field(repr=False)
    eps_ref: EpsRef | None
    transfer_accuracy: float | None  # black-box accuracy on the surrogate's examples
    worst_robust: Tensor = field(repr=False)  # (N,) bool: no attack fooled it within ε
    checks: list[CheckResult]
    eot: int
    seconds: float

    @property
    def robust_accuracy(self) -> float:
        """The per-point worst case over every attack run at ε."""
        return self.worst_robust.float().mean().item()

    @property
    def reliable(self) -> bool:
        return reliable(self.checks)

    def minimal_at_eps(self) -> float | None:
        """Accuracy under the minimal-perturbation attack at the threat's ε."""
        if self.curve is None:
            return None
        return self.curve.accuracy[self.curve.eps.index(self.threat.eps)]

    def to_dict(self) -> dict[str, Any]:
        ev = self.curve.evaluations[0] if self.curve is not None else None
        return {
            "threat": {"norm": self.threat.norm, "eps": self.threat.eps}, "n": self.n,
            "clean_accuracy": self.clean_accuracy, "robust_accuracy": self.robust_accuracy,
            "reliable": self.reliable, "eot": self.eot, "seconds": self.seconds,
            "attacks": {k: v.to_dict() for k, v in self.attacks.items()},
            "minimal": None if ev is None else {
                **ev.to_dict(), "accuracy_at_eps": self.minimal_at_eps(),
                "curve": self.curve.to_dict()},
            "rho2": None if self.rho2 is None else self.rho2.to_dict(),
            "eps_ref": None if self.eps_ref is None else {
                "eps": finite_or_none(self.eps_ref.eps), "accuracy": finite_or_none(
                    self.eps_ref.accuracy)},
            "transfer_accuracy": self.transfer_accuracy,
            "checks": [c.to_dict() for c in self.checks],
        }


def _eps_grid(threat: ThreatModel, eps_list: list[float] | None) -> list[float]:
    grid = set(eps_list or [threat.eps * f for f in (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)])
    grid.add(threat.eps)
    return sorted(grid)


def check_protocol(threat: ThreatModel, *, steps: int = 50, restarts: int = 10,
                   minimal: str | None = "deepfool", eot: int = 1, n_checks: int | None = 200,
                   batch_size: int | None = None) -> None:
    """Raise ``ValueError`` for settings ``standard_evaluation`` cannot run (cheap: a command
    calls it before loading anything or creating its run directory)."""
    if not isinstance(threat, ThreatModel):
        raise ValueError(f"expected threat to be a ThreatModel, got {type(threat).__name__}")
    check_n_checks(n_checks)
    check_batch_size(batch_size)
    if threat.eps <= 0:
        raise ValueError(f"expected a threat with eps > 0, got eps={threat.eps}")
    if minimal is not None and minimal not in MINIMAL_ATTACKS:
        raise ValueError(f"expected minimal in {MINIMAL_ATTACKS} or None, got {minimal!r}")
    if minimal == "cw" and threat.norm != "l2":
        raise ValueError("expected minimal='deepfool' for an linf threat (CW is an l2 attack)")
    for name, v, low in (("steps", steps, 1), ("restarts", restarts, 1), ("eot", eot, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"expected {name} to be an integer >= {low}, got {v!r}")


def standard_evaluation(model: Model, x: Tensor, y: Tensor, *, threat: ThreatModel,
                        surrogate: Model | None = None, steps: int = 50, restarts: int = 10,
                        minimal: str | None = "deepfool", eps_list: list[float] | None = None,
                        with_eps_ref: bool = True, with_rho2: bool = True, eot: int = 1,
                        n_checks: int | None = 200, seed: int = 0,
                        batch_size: int | None = None, device: torch.device | str | None = None,
                        progress: bool = False) -> ProtocolResult:
    """Run the standard protocol (module docstring) on ``(x, y)`` for ``threat``."""
    check_data(x, y)
    check_protocol(threat, steps=steps, restarts=restarts, minimal=minimal, eot=eot,
                   n_checks=n_checks, batch_size=batch_size)
    start = time.perf_counter()
    dev = model_device(model, x, device)
    attacked_model = EOT(model, samples=eot) if eot > 1 else model
    if eot > 1 and check_deterministic(model, x[:64], device=dev).passed:
        log.warning("eot=%d on a deterministic model: every pass gives the same logits, so the "
                    "average changes nothing and costs %d times the forward passes", eot, eot)
    kw: dict[str, Any] = {"batch_size": batch_size, "device": dev, "progress": progress}
    clean_logits = predict(attacked_model, x, batch_size, dev)
    y_dev = y.to(x.device)
    clean_correct = clean_logits.argmax(1) == y_dev
    worst = clean_correct.clone()
    log.info("protocol %s eps=%g on %d points: clean accuracy %.4f", threat.norm, threat.eps,
             x.shape[0], clean_correct.float().mean().item())
    runs: dict[str, RobustEvaluation] = {}
    if threat.norm == "linf":
        runs["fgsm"] = robust_accuracy(attacked_model, x, y, create("fgsm", eps=threat.eps),
                                       clean_logits=clean_logits, **kw)
        worst &= runs["fgsm"].robust
        _log_run("fgsm", runs["fgsm"])
    for name, loss in (("pgd", "ce"), ("pgd-margin", "margin")):
        pgd = create("pgd", eps=threat.eps, norm=threat.norm, steps=steps, restarts=restarts,
                     alpha=2.5 * threat.eps / steps, random_start=True, early_stop=True,
                     seed=seed, loss=loss)
        # the margin run attacks only the points every attack so far left standing: the
        # per-point worst case is the same as attacking all, for less work
        runs[name] = robust_accuracy(attacked_model, x, y, pgd, clean_logits=clean_logits,
                                     mask=worst if loss == "margin" else None, **kw)
        worst &= runs[name].robust
        _log_run(name, runs[name])
    curve = None
    if minimal is not None:
        params: dict[str, Any] = {"norm": threat.norm} if minimal == "deepfool" else {}
        curve = robust_accuracy_curve(attacked_model, x, y, minimal, _eps_grid(threat, eps_list),
                                      **kw, **params)
        ev = curve.evaluations[0]
        norms = ev.result.l2 if threat.norm == "l2" else ev.result.linf
        broken = ev.fooled & (norms <= threat.eps)  # fooled within the budget
        worst &= ~broken
        log.info("%s (minimal): %d of %d attacked points fooled, median %s %.4g, accuracy "
                 "at eps %.4f", minimal, ev.n_fooled, ev.n_attacked, threat.norm,
                 norms[ev.fooled].median().item() if ev.fooled.any() else float("nan"),
                 (clean_correct & ~broken).float().mean().item())
    r2 = rho2(attacked_model, x, y, **kw) if with_rho2 else None
    if r2 is not None:
        log.info("rho2 %.4g over %d points (%d not fooled)", r2.value, r2.n_used, r2.n_failed)
    ref = None
    if with_eps_ref and threat.norm == "linf":
        ref = eps_ref(attacked_model, x, y, batch_size=batch_size, device=dev)
        log.info("eps_ref %.4g", ref.eps)
    transfer_acc = None
    if surrogate is not None:
        crafted = robust_accuracy(surrogate, x, y, create(
            "pgd", eps=threat.eps, norm=threat.norm, steps=steps, alpha=2.5 * threat.eps / steps,
            random_start=True, seed=seed), batch_size=batch_size, device=dev)
        still = transfer_robust(attacked_model, x, y, crafted.result.adv,
                                clean_logits=clean_logits, device=dev)
        transfer_acc = still.float().mean().item()
        worst &= still
        log.info("transfer accuracy %.4f", transfer_acc)
    checks = soundness_checks(attacked_model, x, y, threat=threat, surrogate=surrogate,
                              n=n_checks, seed=seed, batch_size=batch_size, device=dev)
    for c in checks:
        log.info("check %s: %s (%s)", c.name, "pass" if c.passed else "FAILED", c.message)
    log.info("worst case over the attacks: robust accuracy %.4f", worst.float().mean().item())
    return ProtocolResult(
        threat=threat, n=int(x.shape[0]), clean_accuracy=clean_correct.float().mean().item(),
        attacks=runs, curve=curve, rho2=r2, eps_ref=ref, transfer_accuracy=transfer_acc,
        worst_robust=worst, checks=checks, eot=eot, seconds=time.perf_counter() - start)


def protocol_rows(result: ProtocolResult) -> list[tuple[str, str]]:
    """(label, value) rows of a printed report, in protocol order."""
    def pct(v: float | None) -> str:
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2%}"

    t = result.threat
    rows = [("clean accuracy", pct(result.clean_accuracy))]
    if "fgsm" in result.attacks:
        rows.append((f"FGSM, ε = {t.eps:g}", pct(result.attacks["fgsm"].robust_accuracy)))
    p = result.attacks["pgd"]
    rows.append((f"PGD-{p.attack.get('steps')} × {p.attack.get('restarts')} restarts, CE "
                 f"({t.norm}, ε = {t.eps:g})", pct(p.robust_accuracy)))
    rows.append(("  then margin loss on the points left (cumulative)",
                 pct(result.attacks["pgd-margin"].robust_accuracy)))
    if result.curve is not None:
        ev = result.curve.evaluations[0]
        rows.append((f"{result.curve.attack} ({result.curve.norm}) at ε = {t.eps:g}",
                     pct(result.minimal_at_eps())))
        norm_key = "l2" if result.curve.norm == "l2" else "linf"
        rows.append((f"{result.curve.attack}: {norm_key} needed (mean / median of fooled)",
                     f"{getattr(ev, norm_key + '_mean'):.4g} / "
                     f"{getattr(ev, norm_key + '_median'):.4g}"))
    if result.rho2 is not None:
        rows.append(("ρ₂ (DeepFool ℓ2)", f"{result.rho2.value:.4g}"))
    if result.eps_ref is not None:
        rows.append(("ε_ref (FGSM ε at 50% accuracy)", f"{result.eps_ref.eps:.4g}"))
    if result.transfer_accuracy is not None:
        rows.append(("transfer from the surrogate (black box)",
                     pct(result.transfer_accuracy)))
    rows.append(("[bold]worst case over all attacks at ε", f"[bold]{pct(result.robust_accuracy)}"))
    return rows


def _log_run(name: str, ev: RobustEvaluation) -> None:
    log.info("%s: robust accuracy %.4f (%d of %d attacked points fooled, %.1f s)", name,
             ev.robust_accuracy, ev.n_fooled, ev.n_attacked, ev.seconds)
