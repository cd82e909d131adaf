"""The attack part of ``advlab demo``: FGSM, PGD and DeepFool on the demo's digits classifier.

Images are sklearn's 8x8 digits in [0, 1]; budgets are ℓ∞ ε up to 0.3 (a change of up to
about 5 of the 16 grey levels per pixel). Writes figures and ``metrics.json`` into ``out`` and
prints a short table; returns the numbers for the demo's own metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from advlab import data
from advlab.attacks.threat import ThreatModel
from advlab.device import resolve_device
from advlab.eval.checks import reliable, soundness_checks
from advlab.eval.robust import (
    accuracy_from_norms,
    eps_ref,
    finite_or_none,
    predict,
    rho2,
    robust_accuracy_curve,
    worst_case,
)
from advlab.io import write_json
from advlab.report import attack_figures
from advlab.report.attack_report import draw_grid
from advlab.weights import load_model

console = Console()


@dataclass(frozen=True)
class DemoSettings:
    n: int | None  # test points (None: the whole digits test set, 359)
    eps: float  # the headline ℓ∞ budget of FGSM and PGD
    fgsm_grid: tuple[float, ...]  # plain FGSM accuracy at each (the published kind of curve)
    pgd_grid: tuple[float, ...]  # PGD robust accuracy, cumulative over the grid
    pgd_steps: int
    deepfool_steps: int
    deepfool_classes: int  # candidate classes per DeepFool step (the cost is linear in it)
    check_points: int
    check_more_steps: int
    check_restarts: int


FULL = DemoSettings(n=None, eps=0.1, fgsm_grid=tuple(i / 40 for i in range(13)),
                    pgd_grid=(0.0, 0.05, 0.1, 0.15, 0.2, 0.3), pgd_steps=20, deepfool_steps=50,
                    deepfool_classes=10, check_points=200, check_more_steps=50, check_restarts=3)
QUICK = DemoSettings(n=100, eps=0.1, fgsm_grid=(0.0, 0.05, 0.1, 0.2, 0.3),
                     pgd_grid=(0.0, 0.1, 0.2), pgd_steps=10, deepfool_steps=30,
                     deepfool_classes=4, check_points=50, check_more_steps=20, check_restarts=1)


def demo_attacks(out: Path, classifier_run: Path, device: str = "auto",
                 quick: bool = False) -> dict[str, Any]:
    """Attack the classifier saved in ``classifier_run`` on the digits test set (see module)."""
    start = time.perf_counter()
    s = QUICK if quick else FULL
    dev = resolve_device(device)
    model = load_model(classifier_run, dev)
    ds = data.load("digits", "test")
    if s.n is not None and s.n < len(ds):
        ds = data.subset(ds, s.n, seed=0)
    x, y, classes = ds.x, ds.y, ds.classes
    out = Path(out)
    figs = out / "figures"
    clean_probs = predict(model, x, device=dev).softmax(1)

    fgsm = robust_accuracy_curve(model, x, y, "fgsm", s.fgsm_grid, cumulative=False, device=dev)
    pgd = robust_accuracy_curve(model, x, y, "pgd", s.pgd_grid, steps=s.pgd_steps,
                                early_stop=True, device=dev)
    rho = rho2(model, x, y, steps=s.deepfool_steps, num_classes=s.deepfool_classes,
               device=dev)
    df = rho.evaluation
    ref = eps_ref(model, x, y, eps_max=0.4, tol=2e-3, device=dev)
    checks = soundness_checks(model, x, y, threat=ThreatModel("linf", s.eps),
                              n=s.check_points, more_steps=s.check_more_steps,
                              restarts=s.check_restarts, device=dev)

    at = {"fgsm": fgsm.evaluations[fgsm.eps.index(s.eps)],
          "pgd": worst_case(pgd.evaluations[:pgd.eps.index(s.eps) + 1]), "deepfool": df}
    for name, ev in at.items():
        budget = f" eps={s.eps:g}" if name != "deepfool" else " (minimal l2)"
        draw_grid(ev, x, y, clean_probs, classes, figs / f"{name}_grid.png", name + budget)
    attack_figures.accuracy_curves({"FGSM": (fgsm.eps, fgsm.accuracy),
                                    f"PGD-{s.pgd_steps}": (pgd.eps, pgd.accuracy)},
                                   figs / "accuracy_vs_eps.png", xlabel="eps (linf)",
                                   title="digits: accuracy under linf attacks")
    norms = df.result.l2[df.fooled]
    grid = sorted({0.0, *[round(float(norms.max()) * i / 20, 4) for i in range(1, 21)]}) \
        if norms.numel() else [0.0]
    attack_figures.accuracy_curves(
        {"DeepFool": (grid, accuracy_from_norms(df.clean_correct, df.fooled, df.result.l2,
                                                grid))},
        figs / "deepfool_accuracy_vs_l2.png", xlabel="eps (l2)",
        title="digits: accuracy vs the DeepFool perturbation needed")
    if norms.numel():
        attack_figures.norm_histogram({"DeepFool l2": norms}, figs / "deepfool_norms.png",
                                      xlabel="l2 norm of the DeepFool perturbation")

    rows = {name: {"robust_accuracy": ev.robust_accuracy, "success_rate": ev.success_rate,
                   "l2_median": ev.l2_median, "linf_median": ev.linf_median,
                   "seconds": ev.seconds} for name, ev in at.items()}
    results = {
        "n": len(ds), "clean_accuracy": fgsm.clean_accuracy, "eps": s.eps,
        "attacks": {k: {kk: finite_or_none(vv) for kk, vv in v.items()}
                    for k, v in rows.items()},
        "fgsm_curve": fgsm.to_dict(), "pgd_curve": pgd.to_dict(), "rho2": rho.to_dict(),
        "eps_ref": ref.to_dict(), "checks": [c.to_dict() for c in checks],
        "reliable": reliable(checks), "seconds": time.perf_counter() - start,
    }
    write_json(out / "metrics.json", results)
    _print(results, s)
    return results


def _fmt(v: float | None, spec: str = ".3g") -> str:
    return "n/a" if v is None else format(v, spec)


def _print(r: dict[str, Any], s: DemoSettings) -> None:
    t = Table("attack", "robust acc", "success", "median l2", "median linf", "seconds",
              title=f"attacks on digits ({r['n']} test points, clean accuracy "
                    f"{r['clean_accuracy']:.1%})")
    for name, a in r["attacks"].items():
        budget = f" eps={s.eps:g}" if name != "deepfool" else " (minimal)"
        t.add_row(name + budget, _fmt(a["robust_accuracy"], ".1%"),
                  _fmt(a["success_rate"], ".1%"), _fmt(a["l2_median"]),
                  _fmt(a["linf_median"]), _fmt(a["seconds"], ".2f"))
    console.print(t)
    ref = r["eps_ref"]["eps"]
    failed = [c["name"] for c in r["checks"] if not c["passed"]]
    console.print(f"rho2 (DeepFool, over correct points) = {_fmt(r['rho2']['rho2'], '.4f')}; "
                  f"eps_ref (FGSM accuracy <= 50%) = {_fmt(ref, '.3f')}; soundness checks: "
                  + ("all passed" if not failed else f"[bold red]FAILED {', '.join(failed)}[/]"))
