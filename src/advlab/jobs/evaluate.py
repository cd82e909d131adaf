"""The ``advlab eval`` jobs: accuracy, the robustness protocol and the perturbation needed.

Each is a frozen dataclass of the command's options (``EvalAccuracyJob``, ``EvalRobustJob``,
``EvalNeededJob``) and a function that checks them all, then creates the run directory and
writes ``config.yaml``, ``log.txt``, ``metrics.json`` and the figures::

    >>> from advlab.jobs import EvalRobustJob, run_eval_robust
    >>> run, metrics = run_eval_robust(EvalRobustJob(run="runs/mlp", eps=0.1, n=200,
    ...                                              suite="quick"))  # doctest: +SKIP
    >>> metrics["robust_accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advlab.cli.common import eps_in_pixels, load_companion
from advlab.config import from_dict
from advlab.jobs.target import TargetOptions, pixels_to_units, target_options
from advlab.runs import RunDir

log = logging.getLogger(__name__)
ROBUST_DEFAULT_N = 1000  # eval robust: points of a built-in data set when n is None
NEEDED_TARGETS = ("next", "random")


def _check_command(config: dict[str, Any], command: str) -> dict[str, Any]:
    if config.get("command", command) != command:
        raise ValueError(f"expected the configuration of an {command!r} run, got one of "
                         f"{config.get('command')!r}")
    return config


def _check_eps(values: tuple[float, ...] | None, name: str, high: float | None = None) -> None:
    if values is None:
        return
    bad = [v for v in values if not math.isfinite(v) or v < 0]
    if not values or bad:
        raise ValueError(f"expected {name} values >= 0 (at least one), got "
                         f"{', '.join(map(str, bad)) or 'none'}")
    if high is not None and max(values) > high:
        raise ValueError(f"expected {name} <= {high:g} (pixels in [0, 1]), got "
                         f"{max(values):g}")


# --- eval accuracy ---------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class EvalAccuracyJob(TargetOptions):
    """``advlab eval accuracy``: accuracy, per-class accuracy, confusion matrix and ROC/AUC on
    ``n`` seeded points (None: all); on request the Deep Defense report's measures."""

    rho2_report: bool = False  # ρ₂ as the Deep Defense report measures it (DeepFool, 5 steps)
    eps_ref: bool = False  # ε_ref: the smallest FGSM ε (ℓ∞) at which accuracy falls to 50%
    fgsm_eps: tuple[float, ...] | None = None  # FGSM accuracy at these ε (ℓ∞, each afresh)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_eps(self.fgsm_eps, "--fgsm-eps", high=1)
        if self.n is not None and self.n < 1:
            raise ValueError(f"expected --n >= 1, got {self.n}")

    def to_dict(self, target=None) -> dict[str, Any]:
        """config.yaml of the job; with ``target`` (resolved) as the run writes it."""
        record, dataset, split = self.target_record(), self.dataset, self.split
        if target is not None:
            record, dataset, split = target.record, target.dataset, target.data.split
        return {"command": "eval", **record, "dataset": dataset, "split": split, "n": self.n,
                "seed": self.seed, "rho2_report": self.rho2_report, "eps_ref": self.eps_ref,
                "fgsm_eps": None if self.fgsm_eps is None else list(self.fgsm_eps)}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> EvalAccuracyJob:
        """The job of a config.yaml (``to_dict``'s, or an ``eval`` run's); ``device`` is not
        recorded: its default."""
        config = _check_command(config, "eval")
        return from_dict(cls, {**target_options(config), "n": config.get("n"),
                               **{k: config.get(k) for k in ("rho2_report", "eps_ref",
                                                             "fgsm_eps")}})


def run_eval_accuracy(job: EvalAccuracyJob, out: str | Path | None = None
                      ) -> tuple[RunDir, dict[str, Any]]:
    """Run ``job`` into a run directory (``out``, or ``runs/eval-<time>``) and return it with
    the metrics; every option is checked and the model loaded before the directory exists."""
    from advlab.runs import check_out, log_to_run, new_run_dir
    from advlab.train.classifier import report_classifier

    check_out(out)
    target = job.resolve()
    model, dataset, ds = target.model, target.dataset, target.data
    report = new_run_dir("eval", out)
    report.write_config(job.to_dict(target))
    with log_to_run(report):
        metrics = report_classifier(report, model, ds)
        metrics.update(_extra_measures(model, ds, job.rho2_report, job.eps_ref,
                                       None if job.fgsm_eps is None else list(job.fgsm_eps),
                                       target.device))
    metrics.update({**target.record, "dataset": dataset, "split": ds.split})
    report.write_metrics(metrics)
    return report, metrics


def _extra_measures(model, ds, rho2_report: bool, with_eps_ref: bool,
                    fgsm_eps: list[float] | None, device) -> dict:
    """Macro AUC always; the Deep Defense report's ρ₂, ε_ref and FGSM accuracies on request."""
    from advlab.eval import per_class_roc, robust_accuracy_curve, softmax_scores

    out: dict = {"auc": per_class_roc(softmax_scores(model, ds.x, device=device), ds.y,
                                      ds.classes).to_dict()}
    if rho2_report:
        from advlab.defenses import deepfool_ratios

        ratios = deepfool_ratios(model.to(device), ds.x.to(device), steps=5, overshoot=0.02)
        out["rho2_report"] = ratios.mean().item()
    if with_eps_ref:
        from advlab.eval import eps_ref

        out["eps_ref"] = eps_ref(model, ds.x, ds.y, device=device).to_dict()
    if fgsm_eps:
        curve = robust_accuracy_curve(model, ds.x, ds.y, "fgsm", list(fgsm_eps),
                                      cumulative=False, device=device)
        out["fgsm"] = {"eps": curve.eps, "accuracy": curve.accuracy}
    return out


# --- eval robust -----------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class EvalRobustJob(TargetOptions):
    """``advlab eval robust``: robust accuracy under a suite of attacks at ``norm`` ε = ``eps``
    on ``n`` seeded points (None: 1000 of a built-in data set, every point of a data file),
    with the soundness checks. ``eps`` and ``eps_list`` are in the data's units."""

    eps: float  # budget of the threat model, e.g. 0.3 (MNIST linf)
    norm: str = "linf"  # linf | l2
    suite: str = "standard"  # standard | autoattack | quick
    save_adv: bool = False  # write points.safetensors (worst-case adversarial inputs, ...)
    aa_steps: int = 100  # APGD / FAB iterations (AutoAttack: 100)
    aa_targets: int = 9  # APGD-T / FAB-T target classes (AutoAttack: 9)
    square_queries: int = 5000  # Square's query budget per point (AutoAttack: 5000)
    steps: int = 50  # PGD steps
    restarts: int = 10  # PGD random restarts (the best per point kept)
    minimal: str = "deepfool"  # minimal attack of the curve over ε: deepfool | cw (l2) | none
    eps_list: tuple[float, ...] | None = None  # where to read the curve [0.25ε to 2ε]
    surrogate: str | None = None  # an undefended classifier run: the transfer attack, check
    eot: int = 1  # EOT samples for a randomized model
    rho2: bool = True  # measure ρ₂ (DeepFool ℓ2)
    eps_ref: bool = True  # measure ε_ref (FGSM bisection; linf)
    n_checks: int = 200  # points used by the soundness checks
    batch_size: int | None = None  # points per attack call (None: measured); speed only

    def __post_init__(self) -> None:
        if isinstance(self.surrogate, Path):
            object.__setattr__(self, "surrogate", str(self.surrogate))
        super().__post_init__()
        if self.minimal not in ("deepfool", "cw", "none"):
            raise ValueError(f"expected --minimal deepfool, cw or none, got {self.minimal!r}")
        _check_eps(self.eps_list, "--eps-list")
        for name in ("aa_steps", "aa_targets", "square_queries"):
            if getattr(self, name) < 1:
                raise ValueError(f"expected {name} >= 1, got {getattr(self, name)}")

    def to_dict(self, target=None) -> dict[str, Any]:
        """config.yaml of the job; with ``target`` (resolved) as the run writes it: what was
        evaluated, its data set and split, the number of points, ``eps_list`` in pixels."""
        record, dataset, split, n = self.target_record(), self.dataset, self.split, self.n
        grid = None if self.eps_list is None else list(self.eps_list)
        eps_record: dict[str, Any] = {}
        if target is not None:
            record, dataset, split, n = (target.record, target.dataset, target.data.split,
                                         len(target.data))
            grid, eps_record = target.to_pixels(grid), target.eps_record(self.eps)
        elif self.bounds is not None and grid is not None:  # in pixels, as a run records it
            grid = [e / (self.bounds[1] - self.bounds[0]) for e in grid]
        return {"command": "eval robust", **record, "dataset": dataset, "split": split,
                "n": n, "seed": self.seed, "norm": self.norm, "eps": self.eps, **eps_record,
                "suite": self.suite, "steps": self.steps, "restarts": self.restarts,
                "save_adv": self.save_adv, "aa_steps": self.aa_steps,
                "aa_targets": self.aa_targets, "square_queries": self.square_queries,
                "minimal": self.minimal, "eps_list": grid, "eot": self.eot,
                "surrogate": self.surrogate, "batch_size": self.batch_size}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> EvalRobustJob:
        """The job of a config.yaml (``to_dict``'s, or an ``eval robust`` run's). ``rho2``,
        ``eps_ref``, ``n_checks`` and ``device`` are not recorded: their defaults."""
        config = _check_command(config, "eval robust")
        keys = ("eps", "norm", "suite", "save_adv", "aa_steps", "aa_targets", "square_queries",
                "steps", "restarts", "minimal", "eot", "surrogate", "batch_size")
        return from_dict(cls, {**target_options(config), "n": config.get("n"),
                               **{k: config.get(k) for k in keys},
                               "eps_list": pixels_to_units(config.get("eps_list"), config)})


def run_eval_robust(job: EvalRobustJob, out: str | Path | None = None, *,
                    progress: bool = True,
                    on_result: Callable[[Any], None] | None = None
                    ) -> tuple[RunDir, dict[str, Any]]:
    """Run ``job`` into a run directory (``out``, or ``runs/eval-robust-<time>``) and return
    it with the metrics; every option is checked and the model loaded before the directory
    exists. ``on_result`` is called with the ``ProtocolResult`` (per-point tensors,
    ``protocol_rows``) once the numbers are written."""
    from advlab.attacks import ThreatModel
    from advlab.distributed import is_main
    from advlab.eval.protocol import AutoAttackSettings, check_protocol, standard_evaluation
    from advlab.report.attack_figures import accuracy_curves
    from advlab.runs import check_out, log_to_run, new_run_dir
    from advlab.weights import library_versions

    units = job.units()
    threat = ThreatModel(job.norm, eps_in_pixels(job.eps, units))  # in the data's units
    minimal = None if job.minimal == "none" else job.minimal
    check_protocol(threat, steps=job.steps, restarts=job.restarts, eot=job.eot,
                   n_checks=job.n_checks, minimal=minimal, batch_size=job.batch_size,
                   suite=job.suite)
    grid = eps_in_pixels(None if job.eps_list is None else list(job.eps_list), units)
    aa = AutoAttackSettings(steps=job.aa_steps, n_target_classes=job.aa_targets,
                            square_queries=job.square_queries)
    check_out(out)
    target = job.resolve(default_n=ROBUST_DEFAULT_N)
    model, dataset, ds, dev = target.model, target.dataset, target.data, target.device
    sur = (load_companion(Path(job.surrogate), "--surrogate", dataset, dev)
           if job.surrogate else None)
    report = new_run_dir("eval-robust", out)
    report.write_config(job.to_dict(target))
    with log_to_run(report):
        result = standard_evaluation(
            model, ds.x, ds.y, threat=threat, suite=job.suite, surrogate=sur, steps=job.steps,
            restarts=job.restarts, minimal=minimal, eps_list=grid, with_rho2=job.rho2,
            with_eps_ref=job.eps_ref, eot=job.eot, n_checks=job.n_checks, seed=job.seed,
            batch_size=job.batch_size, device=dev, progress=progress, autoattack=aa)
    metrics = result.to_dict()
    metrics.update({**target.record, **target.eps_record(job.eps), "dataset": dataset,
                    "split": ds.split, "versions": library_versions()})
    report.write_metrics(metrics)
    if job.save_adv and is_main():  # under torchrun rank 0 alone writes
        result.save_points(report.path / "points.safetensors", ds.x, ds.y)
    if result.curve is not None:
        accuracy_curves({f"{result.curve.attack} ({job.norm})": (result.curve.eps,
                                                                 result.curve.accuracy)},
                        report.figures / "accuracy_vs_eps.png", xlabel=f"ε ({job.norm})",
                        title=f"{dataset}: accuracy under {result.curve.attack}")
    if on_result is not None:
        on_result(result)
    return report, metrics


# --- eval needed -----------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class EvalNeededJob(TargetOptions):
    """``advlab eval needed``: the perturbation needed for a confident targeted
    misclassification ("Making Neural Nets Robust Again"): mean ‖x_adv − x‖₂/‖x‖₂ of the optim
    attack run until the target class has ``confidence`` (``advlab.eval.perturbation_needed``),
    on ``n`` seeded points (the report: 180)."""

    n: int | None = 180  # a seeded random subset of n points (None: all)
    confidence: float = 0.95  # target probability at which a point stops, in (0, 1]
    target: str = "next"  # next: class (y + 1) mod K | random: a seeded class other than y
    lams: tuple[float, ...] = (0.1, 0.01, 0.0)  # penalty weights λ, tried in turn
    steps: int = 500  # gradient steps per λ
    lr: float = 0.01  # step size of the gradient descent
    save_adv: bool = False  # write adversarial.safetensors (x, y, target, reached, ratio, lam)

    def __post_init__(self) -> None:
        super().__post_init__()
        from advlab import attacks
        from advlab.eval.needed import _check_lams

        if self.target not in NEEDED_TARGETS:
            raise ValueError(f"expected --target in {', '.join(NEEDED_TARGETS)}, got "
                             f"{self.target!r}")
        object.__setattr__(self, "lams", _check_lams(self.lams))
        for lam in self.lams:  # the attack's own checks of confidence, steps and lr
            attacks.create("optim", lam=lam, lr=self.lr, steps=self.steps,
                           confidence=self.confidence)
        if self.n is not None and self.n < 1:
            raise ValueError(f"expected --n >= 1, got {self.n}")

    def to_dict(self, target=None) -> dict[str, Any]:
        """config.yaml of the job; with ``target`` (resolved) as the run writes it: what was
        evaluated, its data set and split, the number of points."""
        record, dataset, split, n = self.target_record(), self.dataset, self.split, self.n
        if target is not None:
            record, dataset, split, n = (target.record, target.dataset, target.data.split,
                                         len(target.data))
        return {"command": "eval needed", **record, "dataset": dataset, "split": split,
                "n": n, "seed": self.seed, "target": self.target,
                "confidence": self.confidence, "lams": list(self.lams), "steps": self.steps,
                "lr": self.lr, "save_adv": self.save_adv}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> EvalNeededJob:
        """The job of a config.yaml (``to_dict``'s, or an ``eval needed`` run's); ``device``
        is not recorded: its default."""
        config = _check_command(config, "eval needed")
        keys = ("n", "target", "confidence", "lams", "steps", "lr", "save_adv")
        return from_dict(cls, {**target_options(config), **{k: config.get(k) for k in keys}})


def run_eval_needed(job: EvalNeededJob, out: str | Path | None = None
                    ) -> tuple[RunDir, dict[str, Any]]:
    """Run ``job`` into a run directory (``out``, or ``runs/eval-needed-<time>``) and return
    it with the metrics; every option is checked and the model loaded before the directory
    exists."""
    import torch

    from advlab.eval import perturbation_needed
    from advlab.eval.robust import predict
    from advlab.report import attack_figures
    from advlab.runs import check_out, log_to_run, new_run_dir
    from advlab.weights import library_versions

    check_out(out)
    found = job.resolve()
    ds, dev = found.data, found.device
    k = len(ds.classes)
    if k < 2:
        raise ValueError(f"expected a data set of at least 2 classes, got {k}")
    y = ds.y
    if job.target == "next":
        goal = (y + 1) % k
    else:  # a class other than y: y shifted by 1 .. K-1
        g = torch.Generator().manual_seed(job.seed)
        goal = (y + torch.randint(1, k, y.shape, generator=g)) % k
    report = new_run_dir("eval-needed", out)
    config = job.to_dict(found)
    report.write_config(config)
    x = ds.x.to(dev)
    with log_to_run(report):
        t0 = time.perf_counter()
        res = perturbation_needed(found.model, x, y.to(dev), goal.to(dev), lams=job.lams,
                                  confidence=job.confidence, steps=job.steps, lr=job.lr)
        seconds = time.perf_counter() - t0
        clean = predict(found.model, x).softmax(1).cpu()
        adv_probs = predict(found.model, res.adv).softmax(1).cpu()
    metrics = {**res.to_dict(), "robustness": res.mean_all,
               "ratio_median": res.ratio[~res.ratio.isnan()].median().item()
               if res.n > res.n_zero_norm else float("nan"),
               "clean_accuracy": (clean.argmax(1) == y).float().mean().item(),
               "target_rate": (adv_probs.argmax(1) == goal).float().mean().item(),
               "seconds": seconds, **config, "versions": library_versions()}
    if job.save_adv:
        from advlab.io import save_state

        save_state(report.path / "adversarial.safetensors",
                   {"x": res.adv.float().cpu().contiguous(), "y": y, "target": goal,
                    "reached": res.reached, "ratio": res.ratio, "lam": res.lam})
    metrics["figures"] = _needed_figures(attack_figures, report.figures, res, ds, goal, clean,
                                         adv_probs)
    report.write_metrics(metrics)
    return report, metrics


def _needed_figures(attack_figures, figures: Path, res, ds, goal, clean, adv_probs) -> list[str]:
    """The ratios' histogram and the first examples with their adversaries; a figure that
    fails is logged and left out, never the numbers."""
    import torch

    k = min(8, res.n)
    idx = torch.arange(k)
    drawings = [
        lambda: attack_figures.norm_histogram(
            {"reached": res.ratio[res.reached & ~res.ratio.isnan()],
             "not reached": res.ratio[~res.reached & ~res.ratio.isnan()]},
            figures / "needed_ratios.png", xlabel="‖x_adv − x‖₂ / ‖x‖₂"),
        lambda: attack_figures.adversarial_grid(
            ds.x[idx], res.adv[idx].cpu(), ds.y[idx], clean[idx].argmax(1),
            clean[idx].max(1).values, adv_probs[idx].argmax(1), adv_probs[idx].max(1).values,
            ds.classes, figures / "adversarial_examples.png",
            title=f"targets: {', '.join(ds.classes[int(t)] for t in goal[idx])}")]
    names = []
    for draw in drawings:
        try:
            path = draw()
        except Exception as e:  # a figure never costs the run its numbers
            log.warning("a figure was not drawn (%s: %s); the numbers are not affected",
                        type(e).__name__, e)
            continue
        if path is not None:
            names.append(Path(path).name)
    return names
