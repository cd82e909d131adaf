"""One attack on one model and data set, reported: numbers, soundness checks, figures, tables.

``attack_report`` is the library function behind ``advlab attack RUN`` and the attack part of
``advlab demo``: it evaluates, runs the soundness checks, draws the figures into a directory
and returns JSON-ready metrics. ``summary_table`` and ``checks_table`` render them with rich.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from torch import Tensor

from advlab.attacks import ATTACKS, create
from advlab.eval.checks import check_n_checks, reliable, soundness_checks
from advlab.eval.robust import (
    AccuracyCurve,
    Model,
    RobustEvaluation,
    accuracy_from_norms,
    predict,
    robust_accuracy,
    robust_accuracy_curve,
    worst_case,
)
from advlab.eval.roc import per_class_roc
from advlab.report import attack_figures

log = logging.getLogger(__name__)

GRID_EXAMPLES = 8  # columns of the original / perturbation / adversarial figure


def default_eps_grid(norms: Tensor, points: int = 20) -> list[float]:
    """0 .. the largest successful perturbation norm in about ``points`` round steps
    (1, 2, 2.5 or 5 times a power of ten), for the curve of a minimal attack."""
    top = norms.max().item() if norms.numel() else 0.0
    top = top if top > 0 else 1.0
    raw = top / points
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    return [round(i * step, 10) for i in range(math.ceil(top / step - 1e-9) + 1)]


def grid_indices(ev: RobustEvaluation, k: int = GRID_EXAMPLES) -> Tensor:
    """Up to ``k`` points to draw: fooled ones first, then other attacked ones, then any."""
    order = [torch.nonzero(ev.fooled).squeeze(1),
             torch.nonzero(ev.attacked & ~ev.fooled).squeeze(1),
             torch.nonzero(~ev.attacked).squeeze(1)]
    return torch.cat(order)[:k]


def draw_grid(ev: RobustEvaluation, x: Tensor, y: Tensor, clean_probs: Tensor,
              classes: Sequence[str], path: Path, title: str = "") -> Path:
    """The original / perturbation / adversarial figure of ``grid_indices(ev)``."""
    idx = grid_indices(ev).to(x.device)
    adv_probs = ev.result.logits[idx].softmax(1)
    conf_c, pred_c = clean_probs[idx].max(1)
    conf_a, pred_a = adv_probs.max(1)
    return attack_figures.adversarial_grid(x[idx], ev.result.adv[idx], y[idx], pred_c, conf_c,
                                           pred_a, conf_a, classes, path, title=title)


def _rho2(ev: RobustEvaluation, x: Tensor) -> float | None:
    """ρ₂ of Moosavi-Dezfooli et al. (the DeepFool paper's ρ_adv): the mean of ‖r‖₂ / ‖x‖₂
    over the points the attack fooled (points with ‖x‖₂ = 0 left out); None if none."""
    from advlab.eval.robust import l2_ratios

    ratios, use = l2_ratios(ev, x, ev.fooled)
    return ratios[use].mean().item() if use.any() else None


def attack_report(model: Model, x: Tensor, y: Tensor, classes: Sequence[str], attack: str,
                  eps: Sequence[float] | None, params: dict[str, Any], figures_dir: Path, *,
                  batch_size: int = 500, device: torch.device | str | None = None,
                  progress: bool = False, checks: bool = True, surrogate: Model | None = None,
                  n_checks: int = 200, seed: int = 0, source: Model | None = None,
                  fit_on: tuple[Tensor, Tensor] | None = None,
                  save_numbers: Callable[[dict[str, Any]], None] | None = None
                  ) -> dict[str, Any]:
    """Evaluate ``attack`` (a registered name) with ``params`` on ``(x, y)``; draw figures.

    The numbers come first: ``save_numbers(metrics)`` (e.g. writing ``metrics.json``) is called
    before any figure is drawn, so a figure that cannot be written never loses them; the
    returned metrics then list the figures written (``figures``).

    - Fixed-budget attacks (fgsm, pgd, noise) run at every ε of ``eps`` (default: the attack's
      own ε) and at ε = 0 (free: the clean accuracy), cumulatively (``robust_accuracy_curve``);
      the headline numbers are the worst case up to the largest ε.
    - Minimal-perturbation attacks (deepfool, cw) run once; ``eps`` (default: about 20 round
      steps up to the largest perturbation found) only says where the curve is read.
    - Attacks without an ε budget that are not minimal (e.g. a transformation search) run once,
      without a curve; ``eps`` must then be None.

    - With a ``source`` model the attack is crafted on it and evaluated on ``model`` (a
      ``Transfer``: the black-box setting); the soundness checks still attack ``model`` itself.
    - An attack crafted once on a set (``universal``) is fitted on ``fit_on`` = (x_fit, y_fit)
      at every ε and applied to every point of ``x``.

    Returns the metrics dict (JSON-ready); figures go to ``figures_dir``.
    """
    cls = ATTACKS.get(attack)
    if checks:
        check_n_checks(n_checks)
    params = {k: v for k, v in params.items() if v is not None}
    minimal = cls.minimal
    if minimal and params.get("eps") is not None:
        raise ValueError(f"attack {attack!r} searches the smallest perturbation and takes no "
                         "eps; pass --eps only to choose where its accuracy curve is read")
    probe = create(attack, **params)  # unknown parameters fail before any work
    budget = probe.kind in ("budget", "fitted")
    if not minimal and not budget and eps:
        raise ValueError(f"attack {attack!r} has no eps budget; run it without --eps")
    clean_logits = predict(model, x, batch_size, device)
    clean_probs = clean_logits.softmax(1)
    curve, per_eps, top_eps, threat = None, [], None, None
    if budget:
        eps = sorted({0.0, *map(float, eps or [probe.threat.eps])})  # ε = 0 is free
        curve = robust_accuracy_curve(model, x, y, attack, eps, batch_size=batch_size,
                                      progress=progress, device=device, source=source,
                                      fit_on=fit_on, **params)
        ev, norm = worst_case(curve.evaluations), curve.norm  # strongest ε per point
        per_eps = [{"eps": e, **c.to_dict()} for e, c in zip(curve.eps, curve.evaluations,
                                                            strict=True)]
        top_eps = max(curve.eps)
        threat = create(attack, eps=top_eps, **params).threat
    else:
        run = probe if source is None else create("transfer", attack=probe, source=source)
        ev = robust_accuracy(model, x, y, run, batch_size=batch_size, device=device,
                             progress=progress, clean_logits=clean_logits)
        norm = probe.distance
        if minimal:
            norms = ev.result.l2 if norm == "l2" else ev.result.linf
            grid = sorted(float(e) for e in eps) if eps else default_eps_grid(norms[ev.fooled])
            curve = AccuracyCurve(attack, params, norm, grid,
                                  accuracy_from_norms(ev.clean_correct, ev.fooled, norms, grid),
                                  ev.clean_accuracy, ev.n, True, False, ev.seconds, [ev])
    roc_clean = per_class_roc(clean_probs, y, classes)
    roc_adv = per_class_roc(ev.result.logits.softmax(1), y, classes)
    check_results = []
    if checks:
        check_results = soundness_checks(model, x, y, threat=threat, surrogate=surrogate,
                                         n=n_checks, seed=seed, batch_size=batch_size,
                                         device=device)
    ok = reliable(check_results)
    if not ok:
        log.warning("soundness checks failed: the robust accuracy of %s is unreliable", attack)
    metrics = {
        "attack": attack, "params": params, "minimal": minimal, "norm": norm,
        "transfer": source is not None,
        "fit_n": None if fit_on is None else int(fit_on[0].shape[0]),
        "eps": top_eps, "n": ev.n,
        **{k: v for k, v in ev.to_dict().items() if k not in ("attack", "n")},
        "rho2": _rho2(ev, x) if minimal else None,
        "per_eps": per_eps,
        "curve": curve.to_dict() if curve is not None else None,
        "auc_clean": roc_clean.to_dict(), "auc_adversarial": roc_adv.to_dict(),
        "checks": [c.to_dict() for c in check_results], "reliable": ok,
        "figures": [],
    }
    if save_numbers is not None:
        save_numbers(metrics)
    title = attack + (f" eps={top_eps:g}" if top_eps is not None else "") + \
        (", crafted on the source" if source is not None else "")
    drawings = []
    if x.dim() == 4:  # images: clean, perturbation, adversarial
        drawings.append(lambda: draw_grid(ev, x, y, clean_probs, classes,
                                          figures_dir / "adversarial_grid.png", title))
    else:  # points (e.g. the 2-D toys): arrows from each clean point to its adversary
        drawings.append(lambda: attack_figures.point_attacks(
            x, ev.result.adv, ev.fooled, figures_dir / "adversarial_points.png", title))
    drawings.append(lambda: attack_figures.roc_curves(
        {"clean": roc_clean, "adversarial": roc_adv}, figures_dir / "roc.png"))
    if curve is not None:
        drawings.append(lambda: attack_figures.accuracy_curves(
            {attack: (curve.eps, curve.accuracy)}, figures_dir / "accuracy_vs_eps.png",
            xlabel=f"eps ({norm})"))
    if ev.n_fooled:
        drawings.append(lambda: attack_figures.norm_histogram(
            {"l2": ev.result.l2[ev.fooled], "linf": ev.result.linf[ev.fooled]},
            figures_dir / "perturbation_norms.png"))
    files = []
    for draw in drawings:
        try:
            files.append(draw())
        except Exception as e:  # a figure never costs the run its numbers
            log.warning("a figure was not drawn (%s: %s); the numbers are not affected",
                        type(e).__name__, e)
    metrics["figures"] = [str(Path(f).name) for f in files if f is not None]  # None: failed
    return metrics


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2%}"


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def summary_table(m: dict[str, Any], title: str | None = None) -> Table:
    """The headline numbers of ``attack_report``'s metrics."""
    if m.get("eps") is not None:
        head = f"{m['attack']} eps={m['eps']:g} ({m['norm']})"
    elif m["minimal"]:
        head = f"{m['attack']} ({m['norm']}, minimal perturbation)"
    else:
        head = f"{m['attack']} (no eps budget)"
    if m.get("transfer"):
        head += ", crafted on the source model (transfer)"
    if m.get("fit_n"):
        head += f", one perturbation fitted on {m['fit_n']} training points"
    t = Table("metric", "value", title=title or head)
    t.add_row("points", str(m["n"]))
    t.add_row("clean accuracy", _pct(m["clean_accuracy"]))
    flag = "" if m.get("reliable", True) else " [bold red](unreliable)[/]"
    label = "robust accuracy" + (" (any size)" if m["minimal"] else "")
    t.add_row(label, _pct(m["robust_accuracy"]) + flag)
    t.add_row("success rate", _pct(m["success_rate"]))
    t.add_row("l2 mean / median", f"{_num(m['l2_mean'])} / {_num(m['l2_median'])}")
    t.add_row("linf mean / median", f"{_num(m['linf_mean'])} / {_num(m['linf_median'])}")
    if m.get("rho2") is not None:
        t.add_row("rho2 (mean ‖r‖₂/‖x‖₂, fooled)", _num(m["rho2"]))
    t.add_row("seconds", f"{m['seconds']:.2f}")
    t.add_row("macro AUC clean / adv", f"{_num(m['auc_clean']['macro_auc'])} / "
              f"{_num(m['auc_adversarial']['macro_auc'])}")
    return t


def sweep_table(m: dict[str, Any]) -> Table:
    """Accuracy at every ε of the curve (fixed-budget sweeps: per-ε numbers too)."""
    if m["per_eps"]:
        t = Table("eps", "robust acc", "fooled here", "median l2", "median linf", "seconds",
                  title=f"{m['attack']}: sweep (a point fooled at a smaller eps stays fooled)")
        for r in m["per_eps"]:
            t.add_row(f"{r['eps']:g}", _pct(r["robust_accuracy"]), str(r["n_fooled"]),
                      _num(r["l2_median"]), _num(r["linf_median"]), f"{r['seconds']:.2f}")
        return t
    t = Table("eps", "accuracy", title=f"{m['attack']}: accuracy from one run")
    for e, a in zip(m["curve"]["eps"], m["curve"]["accuracy"], strict=True):
        t.add_row(f"{e:g}", _pct(a))
    return t


def checks_table(checks: list[dict[str, Any]]) -> Table:
    t = Table("check", "result", "detail", title="soundness checks")
    for c in checks:
        t.add_row(c["name"], "[green]pass[/]" if c["passed"] else "[bold red]FAIL[/]",
                  c["message"])
    return t


__all__ = ["attack_report", "checks_table", "default_eps_grid", "draw_grid", "grid_indices",
           "summary_table", "sweep_table"]
