"""Robustness evaluation suites: every attack a defense must face, with its soundness checks.

``standard_evaluation(model, x, y, threat=..., suite=...)`` runs an ordered list of *steps* on
the same points for one threat model (norm, ε) and combines them with one worst-case function
(``combine_robust``): a point counts as robust only if no step broke it within the budget.

Suites:

- ``autoattack`` — AutoAttack's "standard" version (Croce & Hein 2020): APGD-CE, APGD-T (DLR,
  9 target classes), FAB-T (9 target classes) and Square (5000 queries), each run only on the
  points still robust. With ``eot > 1`` (a randomized model) its "rand" version: APGD-CE and
  APGD-DLR on the EOT-averaged model.
- ``quick`` — APGD-CE and APGD-T with 3 target classes.
- ``standard`` (the default) — the autoattack suite plus advlab's own protocol:

  1. clean accuracy;
  2. FGSM at ε (ℓ∞ threats), on every correctly classified point;
  3. PGD with ``steps`` (default 50) steps and ``restarts`` (default 10) random restarts, the
     strongest result per point kept, on the cross-entropy (every point) and then, on the
     points still standing, on the CW logit margin (Madry et al.'s MNIST challenge ran both);
  4. APGD-CE, APGD-T and FAB-T on the points still standing;
  5. a minimal-perturbation attack in the threat's norm (DeepFool by default, or CW for ℓ2) on
     every point: the accuracy over ε from one run, the perturbation needed to fool each point
     and, with it, the points it breaks within ε;
  6. Square (score-based black box, no gradient) on the points every white-box attack left;
  7. with a ``surrogate`` (an undefended model), a transfer attack: PGD crafted on the
     surrogate, shown to the model (black box);
  8. ρ₂ = mean ‖r‖₂/‖x‖₂ (ℓ2 DeepFool) and ε_ref, the FGSM ε at 50% accuracy (ℓ∞);
  9. the soundness checks of ``advlab.eval.checks`` (gradient masking).

Every suite ends with AutoAttack's own flag, the ``black-box`` check: when Square lowers the
robust accuracy the white-box attacks left by more than half a point, gradients are likely
masked and the result is marked unreliable; likewise (``transfer-points``) when the transfer
attack breaks a point every white-box attack left standing.

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
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from advlab.attacks import EOT, Attack, create
from advlab.attacks.threat import ThreatModel, lp_norm
from advlab.eval.checks import (
    CheckResult,
    check_black_box,
    check_deterministic,
    check_n_checks,
    check_transfer_points,
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
SUITES = ("standard", "autoattack", "quick")
BLACK_BOX_TOL = 0.005  # Square may lower the white-box robust accuracy by at most half a point

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AutoAttackSettings:
    """The budgets of AutoAttack's attacks in the suites (AutoAttack's "standard" values by
    default; smaller ones trade strength for time, and the report says which were used)."""

    steps: int = 100  # APGD and FAB iterations per restart
    n_target_classes: int = 9  # APGD-T and FAB-T targets (the quick suite uses 3)
    square_queries: int = 5000  # Square's query budget per point

    def __post_init__(self) -> None:
        for name in ("steps", "n_target_classes", "square_queries"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"expected {name} to be an integer >= 1, got {v!r}")


@dataclass(frozen=True)
class Step:
    """One attack of a suite: its key in the results, the attack, and whether it runs only on
    the points every earlier step left robust (AutoAttack's order) or on every point."""

    name: str
    attack: Attack
    masked: bool = True


def suite_steps(suite: str, threat: ThreatModel, *, steps: int = 50, restarts: int = 10,
                seed: int = 0, eot: int = 1,
                aa: AutoAttackSettings = AutoAttackSettings()) -> list[Step]:
    """The fixed-budget and minimal attacks of ``suite`` at ``threat``, in the order they run
    (the minimal-perturbation curve, Square's place and the transfer attack of ``standard``
    are added by ``standard_evaluation``)."""
    check_suite(suite)
    t = {"eps": threat.eps, "norm": threat.norm, "seed": seed}
    a = {**t, "steps": aa.steps}
    if eot > 1 and suite != "quick":  # AutoAttack's "rand" version: no FAB, no Square
        auto = [Step("apgd-ce", create("apgd", loss="ce", **a)),
                Step("apgd-dlr", create("apgd", loss="dlr", **a))]
    elif suite == "quick":
        auto = [Step("apgd-ce", create("apgd", loss="ce", **a)),
                Step("apgd-t", create("apgd-t", n_target_classes=min(3, aa.n_target_classes),
                                      **a))]
    else:
        auto = [Step("apgd-ce", create("apgd", loss="ce", **a)),
                Step("apgd-t", create("apgd-t", n_target_classes=aa.n_target_classes, **a)),
                Step("fab-t", create("fab-t", n_target_classes=aa.n_target_classes, **a))]
    if suite != "standard":
        return auto
    pre = []
    if threat.norm == "linf":
        pre.append(Step("fgsm", create("fgsm", eps=threat.eps), masked=False))
    for name, loss in (("pgd", "ce"), ("pgd-margin", "margin")):
        pre.append(Step(name, create("pgd", steps=steps, restarts=restarts,
                                     alpha=2.5 * threat.eps / steps, random_start=True,
                                     early_stop=True, loss=loss, **t),
                        masked=loss == "margin"))
    return pre + auto


def black_box_step(threat: ThreatModel, seed: int = 0, queries: int = 5000) -> Step:
    """Square on the points the white-box attacks left: AutoAttack's last step."""
    return Step("square", create("square", eps=threat.eps, norm=threat.norm, queries=queries,
                                 seed=seed))


def combine_robust(robust: dict[str, Tensor], start: Tensor) -> Tensor:
    """The per-point worst case: robust (``start``, the clean-correct points) and robust in
    every step's ``robust`` (N,) bool mask."""
    worst = start.clone()
    for mask in robust.values():
        worst &= mask
    return worst


def within_budget(ev: RobustEvaluation, threat: ThreatModel) -> Tensor:
    """(N,) bool: the points ``ev``'s attack fooled with a perturbation inside ``threat``'s ball
    (a minimal-perturbation attack may fool a point only beyond ε)."""
    norms = ev.result.l2 if threat.norm == "l2" else ev.result.linf
    return ev.fooled & (norms <= threat.eps * (1 + 1e-6))


@dataclass(frozen=True)
class ProtocolResult:
    """Everything ``standard_evaluation`` measured (tensors kept out of ``to_dict``)."""

    threat: ThreatModel
    n: int
    clean_accuracy: float
    attacks: dict[str, RobustEvaluation] = field(repr=False)  # every step at ε, in run order
    curve: AccuracyCurve | None = field(repr=False)  # minimal attack, accuracy over ε
    rho2: Rho2 | None = field(repr=False)
    eps_ref: EpsRef | None
    transfer_accuracy: float | None  # black-box accuracy on the surrogate's examples
    worst_robust: Tensor = field(repr=False)  # (N,) bool: no attack fooled it within ε
    checks: list[CheckResult]
    eot: int
    seconds: float
    suite: str = "standard"
    step_robust: dict[str, Tensor] = field(default_factory=dict, repr=False)  # (N,) per step
    masked: dict[str, bool] = field(default_factory=dict)  # step ran on the points left only
    transfer_adv: Tensor | None = field(default=None, repr=False)  # (N, ...) surrogate's adv
    transfer_pred: Tensor | None = field(default=None, repr=False)  # (N,) model's label on it
    clean_pred: Tensor | None = field(default=None, repr=False)  # (N,)

    @property
    def clean_correct(self) -> Tensor:
        return next(iter(self.attacks.values())).clean_correct

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

    def cumulative(self) -> list[tuple[str, float]]:
        """(step, robust accuracy after it and every step before it), in run order."""
        worst = self.worst_robust.new_ones(self.n)
        out = []
        for name, mask in self.step_robust.items():
            worst = worst & mask
            out.append((name, worst.float().mean().item()))
        return out

    def to_dict(self) -> dict[str, Any]:
        ev = self.curve.evaluations[0] if self.curve is not None else None
        after = dict(self.cumulative())
        return {
            "suite": self.suite,
            "threat": {"norm": self.threat.norm, "eps": self.threat.eps}, "n": self.n,
            "clean_accuracy": self.clean_accuracy, "robust_accuracy": self.robust_accuracy,
            "reliable": self.reliable, "eot": self.eot, "seconds": self.seconds,
            "attacks": {k: {**v.to_dict(), "masked": self.masked.get(k, False),
                            "not_broken_within_eps": self.step_robust[k].float().mean().item(),
                            "robust_accuracy_after": after.get(k)}
                        for k, v in self.attacks.items()},
            "robust_accuracy_after": after,
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

    def points(self, x: Tensor) -> dict[str, Tensor]:
        """Per-point tensors (N rows) for the evaluated inputs ``x``: ``adv``, the worst-case
        adversarial input (from the first step that broke the point within ε, else ``x``) and
        ``pred`` its predicted label; ``l2``/``linf`` its perturbation; ``robust`` (worst
        case) and ``robust.<step>`` per step; ``first_break`` (the index in ``steps`` of the
        first step that broke the point, -1 if none); ``iterations.<step>`` (gradient steps, or
        model queries for a black-box attack)."""
        if x.shape[0] != self.n:
            raise ValueError(f"expected the {self.n} evaluated points, got {x.shape[0]}")
        adv = x.detach().clone()
        pred = self.clean_pred.clone()
        first = torch.full((self.n,), -1, dtype=torch.int64, device=self.worst_robust.device)
        for i, (name, mask) in enumerate(self.step_robust.items()):
            broken = ~mask & (first < 0) & self.clean_correct
            if name == "transfer":
                adv[broken] = self.transfer_adv[broken].to(adv.dtype)
                pred[broken] = self.transfer_pred[broken]
            else:
                adv[broken] = self.attacks[name].result.adv[broken].to(adv.dtype)
                pred[broken] = self.attacks[name].result.pred[broken]
            first[broken] = i
        delta = (adv.float() - x.float()).flatten(1)
        out = {"adv": adv, "pred": pred, "robust": self.worst_robust.clone(),
               "first_break": first, "l2": delta.norm(dim=1), "linf": lp_norm(delta, "linf")}
        for name, mask in self.step_robust.items():
            out[f"robust.{name}"] = mask.clone()
        for name, ev in self.attacks.items():
            out[f"iterations.{name}"] = ev.result.iterations.clone()
        return out

    def save_points(self, path: str | Path, x: Tensor, y: Tensor) -> Path:
        """Write ``points.safetensors``: the points (``x``, ``y``) and every per-point tensor of
        ``points`` (keys as there), the step names in run order (``steps``) and the threat;
        it loads without executing code (``advlab.io.load_state``)."""
        from advlab.io import save_state

        state = {"kind": "robust-points", "steps": list(self.step_robust),
                 "threat": {"norm": self.threat.norm, "eps": self.threat.eps},
                 "x": x.detach(), "y": y.detach(),
                 **{k: v.detach() for k, v in self.points(x).items()}}
        path = Path(path)
        save_state(path, state)
        return path

    def report(self) -> str:
        """The result as plain text (no console markup): one row per measure, then checks."""
        rows = protocol_rows(self)
        width = max(len(label) for label, _, _ in rows)
        lines = [f"{self.suite} evaluation, {self.n} points, {self.threat.norm} "
                 f"ε = {self.threat.eps:g}"]
        lines += [f"{label:<{width}}  {value}" for label, value, _ in rows]
        lines.append("checks:")
        lines += [f"  {'pass' if c.passed else 'FAILED'}  {c.name}: {c.message}"
                  for c in self.checks] or ["  (none)"]
        if not self.reliable:
            lines.append("UNRELIABLE: a soundness check failed; the robust accuracy above is an "
                         "overestimate until the failure is explained.")
        return "\n".join(lines)


def _eps_grid(threat: ThreatModel, eps_list: list[float] | None) -> list[float]:
    grid = set(eps_list or [threat.eps * f for f in (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)])
    grid.add(threat.eps)
    return sorted(grid)


def check_suite(suite: object) -> str:
    if suite not in SUITES:
        raise ValueError(f"expected suite in {', '.join(map(repr, SUITES))}, got {suite!r}")
    return suite  # type: ignore[return-value]


def check_protocol(threat: ThreatModel, *, steps: int = 50, restarts: int = 10,
                   minimal: str | None = "deepfool", eot: int = 1, n_checks: int | None = 200,
                   batch_size: int | None = None, suite: str = "standard") -> None:
    """Raise ``ValueError`` for settings ``standard_evaluation`` cannot run (cheap: a command
    calls it before loading anything or creating its run directory)."""
    if not isinstance(threat, ThreatModel):
        raise ValueError(f"expected threat to be a ThreatModel, got {type(threat).__name__}")
    check_suite(suite)
    check_n_checks(n_checks)
    check_batch_size(batch_size)
    if threat.eps <= 0:
        raise ValueError(f"expected a threat with eps > 0, got eps={threat.eps}")
    if threat.norm == "linf" and threat.eps >= 1:
        raise ValueError(f"expected an linf eps < 1 for inputs in [0, 1] (eps = 1 allows any "
                         f"image: nothing is robust), got {threat.eps:g}; pixels in 0..255? "
                         f"divide eps by 255")
    if minimal is not None and minimal not in MINIMAL_ATTACKS:
        raise ValueError(f"expected minimal in {MINIMAL_ATTACKS} or None, got {minimal!r}")
    if minimal == "cw" and threat.norm != "l2":
        raise ValueError("expected minimal='deepfool' for an linf threat (CW is an l2 attack)")
    for name, v, low in (("steps", steps, 1), ("restarts", restarts, 1), ("eot", eot, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"expected {name} to be an integer >= {low}, got {v!r}")


def standard_evaluation(model: Model, x: Tensor, y: Tensor, *, threat: ThreatModel,
                        suite: str = "standard", surrogate: Model | None = None,
                        steps: int = 50, restarts: int = 10,
                        minimal: str | None = "deepfool", eps_list: list[float] | None = None,
                        with_eps_ref: bool = True, with_rho2: bool = True, eot: int = 1,
                        n_checks: int | None = 200, seed: int = 0,
                        batch_size: int | None = None, device: torch.device | str | None = None,
                        progress: bool = False,
                        autoattack: AutoAttackSettings | None = None) -> ProtocolResult:
    """Run ``suite`` (module docstring) on ``(x, y)`` for ``threat``.

    ``steps``, ``restarts``, ``minimal``, ``eps_list``, ``with_rho2``, ``with_eps_ref``,
    ``surrogate`` and ``n_checks`` shape the ``standard`` suite's own steps; ``autoattack``
    and ``quick`` run AutoAttack's attacks only (and the black-box check).
    ``autoattack`` sets the budgets of AutoAttack's attacks (default: AutoAttack's own).
    """
    check_data(x, y)
    check_protocol(threat, steps=steps, restarts=restarts, minimal=minimal, eot=eot,
                   n_checks=n_checks, batch_size=batch_size, suite=suite)
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
    log.info("%s suite, %s eps=%g on %d points: clean accuracy %.4f", suite, threat.norm,
             threat.eps, x.shape[0], clean_correct.float().mean().item())
    runs: dict[str, RobustEvaluation] = {}
    step_robust: dict[str, Tensor] = {}
    masked: dict[str, bool] = {}

    def run_step(step: Step) -> None:
        worst = combine_robust(step_robust, clean_correct)
        ev = robust_accuracy(attacked_model, x, y, step.attack, clean_logits=clean_logits,
                             mask=worst if step.masked else None, **kw)
        runs[step.name], masked[step.name] = ev, step.masked
        broken = within_budget(ev, threat) if step.attack.minimal else ev.fooled
        step_robust[step.name] = clean_correct & ~broken
        _log_run(step.name, ev, combine_robust(step_robust, clean_correct))

    aa = autoattack if autoattack is not None else AutoAttackSettings()
    if not isinstance(aa, AutoAttackSettings):
        raise ValueError(f"expected autoattack to be an AutoAttackSettings, got "
                         f"{type(aa).__name__}")
    for step in suite_steps(suite, threat, steps=steps, restarts=restarts, seed=seed, eot=eot,
                            aa=aa):
        run_step(step)
    standard = suite == "standard"
    curve = None
    if standard and minimal is not None:
        params: dict[str, Any] = {"norm": threat.norm} if minimal == "deepfool" else {}
        curve = robust_accuracy_curve(attacked_model, x, y, minimal, _eps_grid(threat, eps_list),
                                      **kw, **params)
        ev = curve.evaluations[0]
        runs[minimal], masked[minimal] = ev, False
        step_robust[minimal] = clean_correct & ~within_budget(ev, threat)
        _log_run(minimal, ev, combine_robust(step_robust, clean_correct))
    checks: list[CheckResult] = []
    if eot == 1 or suite == "quick":
        white = combine_robust(step_robust, clean_correct)
        if suite != "quick":
            run_step(black_box_step(threat, seed, aa.square_queries))
            checks.append(check_black_box(white, step_robust["square"] & white,
                                          tol=BLACK_BOX_TOL))
    transfer_acc = transfer_adv = transfer_pred = None
    if standard and surrogate is not None:
        white = combine_robust(step_robust, clean_correct)
        crafted = robust_accuracy(surrogate, x, y, create(
            "pgd", eps=threat.eps, norm=threat.norm, steps=steps, alpha=2.5 * threat.eps / steps,
            random_start=True, seed=seed), batch_size=batch_size, device=dev)
        still = transfer_robust(attacked_model, x, y, crafted.result.adv,
                                clean_logits=clean_logits, device=dev)
        transfer_acc, transfer_adv = still.float().mean().item(), crafted.result.adv
        transfer_pred = predict(attacked_model, transfer_adv, batch_size, dev).argmax(1)
        step_robust["transfer"], masked["transfer"] = still & clean_correct, False
        checks.append(check_transfer_points(white, still))
        log.info("transfer accuracy %.4f", transfer_acc)
    r2 = ref = None
    if standard:
        r2 = rho2(attacked_model, x, y, **kw) if with_rho2 else None
        if r2 is not None:
            log.info("rho2 %.4g over %d points (%d not fooled)", r2.value, r2.n_used,
                     r2.n_failed)
        if with_eps_ref and threat.norm == "linf":
            ref = eps_ref(attacked_model, x, y, batch_size=batch_size, device=dev)
            log.info("eps_ref %.4g", ref.eps)
        checks = soundness_checks(attacked_model, x, y, threat=threat, surrogate=surrogate,
                                  n=n_checks, seed=seed, batch_size=batch_size,
                                  device=dev) + checks
    for c in checks:
        log.info("check %s: %s (%s)", c.name, "pass" if c.passed else "FAILED", c.message)
    worst = combine_robust(step_robust, clean_correct)
    log.info("worst case over the attacks: robust accuracy %.4f", worst.float().mean().item())
    return ProtocolResult(
        threat=threat, n=int(x.shape[0]), clean_accuracy=clean_correct.float().mean().item(),
        attacks=runs, curve=curve, rho2=r2, eps_ref=ref, transfer_accuracy=transfer_acc,
        worst_robust=worst, checks=checks, eot=eot, seconds=time.perf_counter() - start,
        suite=suite, step_robust=step_robust, masked=masked, transfer_adv=transfer_adv,
        transfer_pred=transfer_pred, clean_pred=clean_logits.argmax(1))


STEP_LABELS = {
    "fgsm": "FGSM", "pgd": "PGD-{steps} × {restarts} restarts, CE",
    "pgd-margin": "PGD-{steps} × {restarts} restarts, margin loss",
    "apgd-ce": "APGD-CE", "apgd-dlr": "APGD-DLR", "apgd-t": "APGD-T ({n_target_classes} targets)",
    "fab-t": "FAB-T ({n_target_classes} targets)", "square": "Square ({queries} queries)",
    "deepfool": "DeepFool (minimal), fooled within ε", "cw": "CW (minimal), fooled within ε",
    "transfer": "transfer from the surrogate (black box)",
}


def _label(name: str, result: ProtocolResult) -> str:
    params = result.attacks[name].attack if name in result.attacks else {}
    try:
        return STEP_LABELS.get(name, name).format(**params)
    except (KeyError, IndexError):
        return STEP_LABELS.get(name, name)


def protocol_rows(result: ProtocolResult) -> list[tuple[str, str, bool]]:
    """(label, value, headline) rows of a printed report, in run order: the robust accuracy
    after each step (cumulative: a point broken once stays broken), then the measures."""
    def pct(v: float | None) -> str:
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2%}"

    t = result.threat
    rows = [("clean accuracy", pct(result.clean_accuracy), False)]
    for name, acc in result.cumulative():
        alone = ""
        if name in result.attacks and not result.masked.get(name, False) and name != "pgd":
            alone = f" (alone {pct(result.attacks[name].robust_accuracy)})"
        if name == "transfer" and result.transfer_accuracy is not None:
            alone = f" (alone {pct(result.transfer_accuracy)})"
        rows.append((f"after {_label(name, result)}", pct(acc) + alone, False))
    if result.curve is not None:
        ev = result.curve.evaluations[0]
        norm_key = "l2" if result.curve.norm == "l2" else "linf"
        rows.append((f"{result.curve.attack}: {norm_key} needed (mean / median of fooled)",
                     f"{getattr(ev, norm_key + '_mean'):.4g} / "
                     f"{getattr(ev, norm_key + '_median'):.4g}", False))
    if result.rho2 is not None:
        rows.append(("ρ₂ (DeepFool ℓ2)", f"{result.rho2.value:.4g}", False))
    if result.eps_ref is not None:
        rows.append(("ε_ref (FGSM ε at 50% accuracy)", f"{result.eps_ref.eps:.4g}", False))
    rows.append((f"worst case over all attacks ({t.norm}, ε = {t.eps:g})",
                 pct(result.robust_accuracy), True))
    return rows


def _log_run(name: str, ev: RobustEvaluation, worst: Tensor) -> None:
    log.info("%s: %d of %d attacked points fooled (%.1f s); robust accuracy so far %.4f", name,
             ev.n_fooled, ev.n_attacked, ev.seconds, worst.float().mean().item())
