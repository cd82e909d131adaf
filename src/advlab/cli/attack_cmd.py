"""``advlab attack RUN --attack pgd --eps 0.3``: robust accuracy of a trained classifier.

Prints the numbers, the accuracy over ε and the soundness checks; writes ``config.yaml``,
``metrics.json`` and figures into a run directory. ``--eps 0:0.3:0.05`` sweeps ε.
"""

from __future__ import annotations

from pathlib import Path

import typer

from advlab.cli.common import (
    BoundsOption,
    DataDirOption,
    DataOption,
    DatasetOption,
    DeviceOption,
    MeanOption,
    ModelOption,
    NprocOption,
    OutOption,
    OutputKeyOption,
    StdOption,
    WeightsOption,
    apply_data_dir,
    console,
    eps_in_pixels,
    fail,
    key_values,
    load_companion,
    parse_floats,
    relaunch,
    resolve_target,
    run_domain,
    setup_logging,
)


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


def _params(attack: str, given: dict[str, object]) -> dict[str, object]:
    """The options given (None dropped); evaluations stop per sample on success by default."""
    from advlab.attacks import params as attack_params

    out = {k: v for k, v in given.items() if v is not None}
    if "early_stop" in attack_params(attack) and "early_stop" not in out:
        out["early_stop"] = True
    return out


def attack_command(
    run: Path = typer.Argument(None, help="Classifier run directory (or model.safetensors); "
                               "or your own model with --model."),
    attack: str = typer.Option("pgd", "--attack", "-a", help="Attack name (fgsm, pgd, "
                               "deepfool, cw, noise, ...)."),
    eps: str = typer.Option(None, help="Budget: 0.3, a list 0.1,0.2 or a sweep 0:0.3:0.05. "
                            "For deepfool/cw: where to read the accuracy curve."),
    steps: int = typer.Option(None, help="Gradient steps (pgd, cw, deepfool)."),
    norm: str = typer.Option(None, help="linf | l2 (pgd, deepfool)."),
    alpha: float = typer.Option(None, help="PGD step size [2.5*eps/steps]."),
    restarts: int = typer.Option(None, help="PGD restarts (best per sample kept)."),
    random_start: bool = typer.Option(None, "--random-start/--no-random-start",
                                      help="PGD random start (default: on)."),
    c: float = typer.Option(None, "--c", help="CW: weight of the classification term."),
    kappa: float = typer.Option(None, help="CW: confidence margin."),
    lr: float = typer.Option(None, help="CW: Adam learning rate."),
    binary_search_steps: int = typer.Option(None, help="CW: search steps over c."),
    overshoot: float = typer.Option(None, help="DeepFool: relative overshoot."),
    num_classes: int = typer.Option(None, help="DeepFool: candidate classes."),
    param: list[str] = typer.Option(None, "--param", "-p", help="Any other parameter of the "
                                    "attack as KEY=VALUE, repeatable (e.g. -p queries=1000 for "
                                    "square, -p n_target_classes=3 for apgd-t)."),
    early_stop: bool = typer.Option(None, "--early-stop/--no-early-stop",
                                    help="PGD: stop a sample once fooled (default here: on)."),
    n: int = typer.Option(None, help="Evaluate a seeded random subset of n points (all if "
                          "the split is smaller) [1000; with --data: every point]."),
    split: str = typer.Option("test", help="train | test"),
    seed: int = typer.Option(0, help="Seed of the subset and of the attack."),
    batch_size: int | None = typer.Option(
        None, help="Points per attack call (default: the fastest for this machine and model, "
        "measured once and cached); speed only, results do not depend on it."),
    surrogate: Path = typer.Option(None, help="Another classifier run: adds the white-box vs "
                                   "transfer soundness check."),
    transfer_from: Path = typer.Option(None, help="Craft the attack on this classifier run "
                                       "and evaluate RUN on its examples (black-box transfer)."),
    fit_n: int = typer.Option(None, min=1, help="universal: training points its one "
                              "perturbation is crafted on (a seeded subset of the training "
                              "split), then applied to every evaluated point [1000]."),
    checks: bool = typer.Option(True, help="Run the soundness checks (gradient masking)."),
    n_checks: int = typer.Option(200, min=1, help="Points used by the soundness checks."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    out: Path = OutOption,
    device: str = DeviceOption,
    data_dir: Path = DataDirOption,
    model_spec: str = ModelOption,
    weights: Path = WeightsOption,
    mean: str = MeanOption,
    std: str = StdOption,
    bounds: str = BoundsOption,
    output_key: str = OutputKeyOption,
    data_file: Path = DataOption,
    dataset_name: str = DatasetOption,
    nproc: int = NprocOption,
) -> None:
    """Attack a trained classifier; print and save robust accuracy, curves and checks."""
    from advlab.attacks import ATTACKS, create
    from advlab.eval.robust import check_batch_size
    from advlab.report.attack_report import attack_report, checks_table, summary_table, sweep_table
    from advlab.runs import log_to_run, new_run_dir
    from advlab.weights import library_versions

    relaunch(nproc)
    setup_logging()
    apply_data_dir(data_dir)
    try:
        cls = ATTACKS.get(attack)  # unknown name: the error lists the valid attacks
        if attack == "transfer":
            raise ValueError("transfer wraps another attack: name that one and the model to "
                             "craft on, e.g. `advlab attack RUN -a pgd --eps 0.3 "
                             "--transfer-from SOURCE_RUN`")
        eps_list = parse_floats(eps, "--eps", low=0.0) if eps is not None else None
        params = _params(attack, dict(
            steps=steps, norm=norm, alpha=alpha, restarts=restarts, random_start=random_start,
            c=c, kappa=kappa, lr=lr, binary_search_steps=binary_search_steps,
            overshoot=overshoot, num_classes=num_classes, early_stop=early_stop, seed=seed))
        extra_params = key_values(param or [], "--param")
        both = sorted(set(extra_params) & {k for k in params if k not in ("seed", "early_stop")})
        if both or "eps" in extra_params:
            raise ValueError(f"--param {', '.join(both or ['eps'])}: give it with its own "
                             f"option (--{(both or ['eps'])[0].replace('_', '-')})")
        params.update(extra_params)
        units = bounds or run_domain(run)  # --bounds, or a data set outside the pixel box
        eps_given, eps_list = eps_list, eps_in_pixels(eps_list, units)  # in the data's units
        if params.get("alpha") is not None:
            params["alpha"] = eps_in_pixels(params["alpha"], units)
        check_batch_size(batch_size)
        if cls.minimal:
            create(attack, **params)
        else:
            probe = create(attack, **params, **({"eps": eps_list[0]} if eps_list else {}))
            check_linf_budget(probe, eps_list, eps_given, units)
        target = resolve_target(run, model=model_spec, weights=weights, mean=mean, std=std,
                                bounds=bounds, output_key=output_key, data_file=data_file,
                                dataset=dataset_name, split=split, n=n, default_n=1000,
                                seed=seed, device=device)
        model, dataset, ds, dev = target.model, target.dataset, target.data, target.device
        sur = source = None
        if surrogate is not None:
            sur = load_companion(surrogate, "--surrogate", dataset, dev)
        if transfer_from is not None:
            source = load_companion(transfer_from, "--transfer-from", dataset, dev)
        fit_on = None
        fits = cls.fitted
        if fit_n is not None and not fits:
            raise ValueError(f"--fit-n is for attacks crafted once on training points "
                             f"(universal), not {attack!r}")
        if fits:  # crafted once on training points
            from advlab import data

            if target.train_dataset is None:
                raise ValueError(f"{attack!r} is crafted on training points of a built-in data "
                                 f"set: give --dataset NAME instead of --data")
            fit_n = 1000 if fit_n is None else fit_n
            train = data.load(target.train_dataset, "train")
            if fit_n < len(train):
                train = data.subset(train, fit_n, seed=seed)
            fit_on = (train.x, train.y)
            if split == "train":
                console.print(f"[yellow]warning:[/] --split train: the points evaluated and "
                              f"the {len(train)} the universal perturbation is crafted on "
                              "both come from the training split and may overlap")
        report = new_run_dir("attack", out)
        config = {"command": "attack", **target.record, "dataset": dataset,
                  "split": ds.split, "n": len(ds), "seed": seed, "attack": attack,
                  "fit_n": None if fit_on is None else len(fit_on[0]),
                  "params": params, "eps": eps_given, **target.eps_record(eps_given),
                  "batch_size": batch_size,
                  "surrogate": str(surrogate) if surrogate else None,
                  "transfer_from": str(transfer_from) if transfer_from else None}
        report.write_config(config)
        extra = {**target.record, **target.eps_record(eps_given), "dataset": dataset,
                 "split": ds.split, "transfer_from": str(transfer_from) if transfer_from else None,
                 "versions": library_versions()}
        with log_to_run(report):  # the numbers are written before any figure is drawn
            metrics = attack_report(model, ds.x, ds.y, ds.classes, attack, eps_list, params,
                                    report.figures, batch_size=batch_size, device=dev,
                                    progress=progress, checks=checks, surrogate=sur,
                                    n_checks=n_checks, seed=seed, source=source,
                                    fit_on=fit_on,
                                    save_numbers=lambda m: report.write_metrics({**m, **extra}))
        metrics.update(extra)
        report.write_metrics(metrics)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    console.print(summary_table(metrics))
    console.print(f"[dim]{metrics['summary']}[/]", highlight=False)
    if target.eps_note(eps_given):
        console.print(target.eps_note(eps_given), highlight=False)
    if metrics["curve"] is not None and (metrics["minimal"] or len(eps_list or []) > 1):
        console.print(sweep_table(metrics))
    if metrics["checks"]:
        console.print(checks_table(metrics["checks"]))
        if not metrics["reliable"]:
            console.print("[bold red]unreliable:[/] a soundness check failed; the robust "
                          "accuracy above is an overestimate until the failure is explained.")
    console.print(f"results in [bold]{report.path}[/]")
