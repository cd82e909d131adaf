"""The ``advlab attack`` job: robust accuracy of a classifier under one attack, into a run.

``AttackJob`` holds every option of the command, typed; ``run_attack(job, out)`` checks them
all, then creates the run directory and writes ``config.yaml``, ``log.txt``, ``metrics.json``
(with the library versions) and the figures (``advlab.report.attack_report``)::

    >>> from advlab.jobs import AttackJob, run_attack
    >>> run, metrics = run_attack(AttackJob(run="runs/mlp", attack="pgd", eps=(0.1,),
    ...                                     steps=20, n=200), "runs/pgd")  # doctest: +SKIP
    >>> metrics["robust_accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advlab.cli.common import console, eps_in_pixels, load_companion
from advlab.jobs.target import TargetOptions, pixels_to_units, target_options
from advlab.runs import RunDir

# the attack parameters ``advlab attack`` has options for, in the order config.yaml lists them
OPTIONS = ("steps", "norm", "alpha", "restarts", "random_start", "c", "kappa", "lr",
           "binary_search_steps", "overshoot", "num_classes", "early_stop")
DEFAULT_N = 1000  # points of a built-in data set when n is None (a data file: every point)
DEFAULT_FIT_N = 1000  # training points a fitted attack (universal) is crafted on


@dataclass(frozen=True, kw_only=True)
class AttackJob(TargetOptions):
    """``advlab attack``: ``attack`` at each budget of ``eps`` on ``n`` seeded points (None:
    1000 of a built-in data set, every point of a data file), with the soundness checks.

    The attack's parameters: the typed fields (None: the attack's default; ``early_stop``
    None: on for the attacks that have it) and ``params`` for any other (``-p KEY=VALUE``).
    ``eps`` and ``alpha`` are in the data's units (``bounds``, or a data set's domain).
    """

    attack: str = "pgd"  # a registered attack (advlab.attacks.ATTACKS)
    eps: tuple[float, ...] | None = None  # budgets; minimal attacks: where to read the curve
    steps: int | None = None  # gradient steps (pgd, cw, deepfool, ...)
    norm: str | None = None  # linf | l2 (pgd, deepfool)
    alpha: float | None = None  # PGD step size [2.5·eps/steps]
    restarts: int | None = None  # PGD restarts (best per sample kept)
    random_start: bool | None = None  # PGD random start [on]
    c: float | None = None  # CW: weight of the classification term
    kappa: float | None = None  # CW: confidence margin
    lr: float | None = None  # CW: Adam learning rate
    binary_search_steps: int | None = None  # CW: search steps over c
    overshoot: float | None = None  # DeepFool: relative overshoot
    num_classes: int | None = None  # DeepFool: candidate classes
    early_stop: bool | None = None  # stop a sample once fooled [on where the attack has it]
    params: dict[str, Any] = field(default_factory=dict)  # any other parameter of the attack
    fit_n: int | None = None  # universal: training points its perturbation is crafted on
    batch_size: int | None = None  # points per attack call (None: measured); speed only
    surrogate: str | None = None  # another classifier run: the white-box vs transfer check
    transfer_from: str | None = None  # craft on this run, evaluate ``run`` on its examples
    checks: bool = True  # run the soundness checks (gradient masking)
    n_checks: int = 200  # points used by the soundness checks

    def __post_init__(self) -> None:
        for name in ("surrogate", "transfer_from"):
            if isinstance(getattr(self, name), Path):
                object.__setattr__(self, name, str(getattr(self, name)))
        if isinstance(self.params, dict):  # -p steps=3 without --steps: the option's field
            moved = {k for k in self.params if k in OPTIONS and getattr(self, k) is None}
            for k in moved:
                object.__setattr__(self, k, self.params[k])
            object.__setattr__(self, "params", {k: v for k, v in self.params.items()
                                                if k not in moved})
        super().__post_init__()
        from advlab.attacks import ATTACKS

        cls = ATTACKS.get(self.attack)  # unknown name: the error lists the valid attacks
        if self.attack == "transfer":
            raise ValueError("transfer wraps another attack: name that one and the model to "
                             "craft on, e.g. `advlab attack RUN -a pgd --eps 0.3 "
                             "--transfer-from SOURCE_RUN`")
        if self.eps is not None:
            bad = [v for v in self.eps if not math.isfinite(v) or v < 0]
            if not self.eps or bad:
                raise ValueError(f"expected --eps values >= 0 (at least one), got "
                                 f"{', '.join(map(str, bad)) or 'none'}")
        given = {k for k in OPTIONS if getattr(self, k) is not None and k != "early_stop"}
        both = sorted(set(self.params) & given)
        if both or "eps" in self.params:
            raise ValueError(f"--param {', '.join(both or ['eps'])}: give it with its own "
                             f"option (--{(both or ['eps'])[0].replace('_', '-')})")
        if self.fit_n is not None and not cls.fitted:
            raise ValueError(f"--fit-n is for attacks crafted once on training points "
                             f"(universal), not {self.attack!r}")
        for name in ("fit_n", "n_checks"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"expected {name} >= 1, got {value}")

    def attack_params(self) -> dict[str, Any]:
        """The parameters the attack is built with (besides eps), in the units given: the
        options set, ``seed``, ``early_stop`` on by default where the attack has it, then
        ``params``."""
        from advlab.attacks import params as attack_params

        out = {k: getattr(self, k) for k in OPTIONS if getattr(self, k) is not None}
        out["seed"] = self.seed
        if "early_stop" in attack_params(self.attack) and "early_stop" not in out:
            out["early_stop"] = True
        out.update(self.params)
        return out

    def to_dict(self, target=None, *, fit_n: int | None = None) -> dict[str, Any]:
        """config.yaml of the job. With ``target`` (the resolved ``Target``) as the run writes
        it: what was evaluated, its data set and split, the number of points, ``fit_n`` the
        training points a fitted attack was crafted on, the parameters in pixels."""
        params = self.attack_params()
        record, dataset, split, n = self.target_record(), self.dataset, self.split, self.n
        eps_record: dict[str, Any] = {}
        fits = fit_n if target is not None else self.fit_n
        if target is None and self.bounds is not None and params.get("alpha") is not None:
            params["alpha"] /= self.bounds[1] - self.bounds[0]  # in pixels, as a run records
        if target is not None:
            record, dataset, split, n = (target.record, target.dataset, target.data.split,
                                         len(target.data))
            if params.get("alpha") is not None:
                params["alpha"] = target.to_pixels(params["alpha"])
            eps_record = target.eps_record(_list(self.eps))
        return {"command": "attack", **record, "dataset": dataset, "split": split, "n": n,
                "seed": self.seed, "attack": self.attack, "fit_n": fits, "params": params,
                "eps": _list(self.eps), **eps_record, "batch_size": self.batch_size,
                "surrogate": self.surrogate, "transfer_from": self.transfer_from}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> AttackJob:
        """The job of a config.yaml (``to_dict``'s, or an attack run's): every option it
        records. ``checks``, ``n_checks`` and ``device`` are not recorded: their defaults."""
        from advlab.attacks import params as attack_params
        from advlab.config import from_dict

        config = dict(config)
        if config.get("command", "attack") != "attack":
            raise ValueError(f"expected the configuration of an 'attack' run, got one of "
                             f"{config.get('command')!r}")
        attack = config.get("attack") or "pgd"
        params = dict(config.get("params") or {})
        if params.get("seed") == config.get("seed", 0):
            params.pop("seed")  # the job's seed, unless a -p seed=... replaced it
        if params.get("alpha") is not None:
            params["alpha"] = pixels_to_units(params["alpha"], config)
        if params.get("early_stop") is True and "early_stop" in attack_params(attack):
            params.pop("early_stop")  # the default
        typed = {k: params.pop(k) for k in OPTIONS if k in params}
        return from_dict(cls, {**target_options(config), "n": config.get("n"),
                               "attack": attack, "eps": config.get("eps"), **typed,
                               "params": params, "fit_n": config.get("fit_n"),
                               **{k: config.get(k) for k in ("batch_size", "surrogate",
                                                             "transfer_from")}})


def check_linf_budget(probe, eps_list: list[float] | None, eps_given: list[float] | None,
                      bounds: str | None) -> None:
    """An ℓ∞ budget above 1 on pixels in [0, 1] means nothing (ε = 1 already allows every
    image): almost always ε given in 0..255 units. Refuse it with the fix."""
    threat = probe.threat
    if threat is None or threat.norm != "linf" or not eps_list:
        return
    big = [g for g, e in zip(eps_given or eps_list, eps_list, strict=True) if e > 1]
    if big:
        hint = ("" if bounds else "; for pixels in 0..255 divide by 255 (8 -> 0.0314) or give "
                "--bounds 0,255 to state eps in those units")
        raise ValueError(f"expected linf --eps <= 1 on pixels in [0, 1] (eps = 1 already "
                         f"allows any image), got {', '.join(f'{v:g}' for v in big)}{hint}")


def run_attack(job: AttackJob, out: str | Path | None = None, *,
               progress: bool = True) -> tuple[RunDir, dict[str, Any]]:
    """Run ``job`` into a run directory (``out``, or ``runs/attack-<time>``) and return it
    with the metrics. Every option is checked, the model and points loaded, before the run
    directory exists; the numbers are written before any figure is drawn."""
    from advlab.attacks import ATTACKS, create
    from advlab.eval.robust import check_batch_size
    from advlab.report.attack_report import attack_report
    from advlab.runs import check_out, log_to_run, new_run_dir
    from advlab.weights import library_versions

    cls = ATTACKS.get(job.attack)
    units = job.units()  # bounds, or a data set outside the pixel box
    eps_given = _list(job.eps)
    eps_list = eps_in_pixels(eps_given, units)  # in the data's units
    params = job.attack_params()
    if params.get("alpha") is not None:
        params["alpha"] = eps_in_pixels(params["alpha"], units)
    check_batch_size(job.batch_size)
    if cls.minimal:
        create(job.attack, **params)
    else:
        probe = create(job.attack, **params, **({"eps": eps_list[0]} if eps_list else {}))
        check_linf_budget(probe, eps_list, eps_given, units)
    check_out(out)
    target = job.resolve(default_n=DEFAULT_N)
    model, dataset, ds, dev = target.model, target.dataset, target.data, target.device
    sur = source = None
    if job.surrogate is not None:
        sur = load_companion(Path(job.surrogate), "--surrogate", dataset, dev)
    if job.transfer_from is not None:
        source = load_companion(Path(job.transfer_from), "--transfer-from", dataset, dev)
    fit_on = None
    if cls.fitted:  # crafted once on training points
        from advlab import data

        if target.train_dataset is None:
            raise ValueError(f"{job.attack!r} is crafted on training points of a built-in "
                             f"data set: give --dataset NAME instead of --data")
        fit_n = DEFAULT_FIT_N if job.fit_n is None else job.fit_n
        train = data.load(target.train_dataset, "train")
        if fit_n < len(train):
            train = data.subset(train, fit_n, seed=job.seed)
        fit_on = (train.x, train.y)
        if job.split == "train":
            console.print(f"[yellow]warning:[/] --split train: the points evaluated and "
                          f"the {len(train)} the universal perturbation is crafted on "
                          "both come from the training split and may overlap")
    report = new_run_dir("attack", out)
    config = job.to_dict(target, fit_n=None if fit_on is None else len(fit_on[0]))
    report.write_config(config)
    extra = {**target.record, **target.eps_record(eps_given), "dataset": dataset,
             "split": ds.split, "transfer_from": job.transfer_from,
             "versions": library_versions()}
    with log_to_run(report):  # the numbers are written before any figure is drawn
        metrics = attack_report(model, ds.x, ds.y, ds.classes, job.attack, eps_list, params,
                                report.figures, batch_size=job.batch_size, device=dev,
                                progress=progress, checks=job.checks, surrogate=sur,
                                n_checks=job.n_checks, seed=job.seed, source=source,
                                fit_on=fit_on,
                                save_numbers=lambda m: report.write_metrics({**m, **extra}))
    metrics.update(extra)
    report.write_metrics(metrics)
    return report, metrics


def _list(values: tuple[float, ...] | None) -> list[float] | None:
    return None if values is None else list(values)
