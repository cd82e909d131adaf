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
    fail,
    key_values,
    parse_floats,
    relaunch,
    setup_logging,
)


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
    from advlab.jobs import run_job
    from advlab.jobs.attack import AttackJob
    from advlab.jobs.target import command_line_options, eps_note
    from advlab.report.attack_report import checks_table, summary_table, sweep_table

    relaunch(nproc)
    setup_logging()
    apply_data_dir(data_dir)
    try:
        job = AttackJob(
            **command_line_options(run=run, model=model_spec, weights=weights, mean=mean,
                                   std=std, bounds=bounds, output_key=output_key,
                                   data=data_file, dataset=dataset_name, split=split, n=n,
                                   seed=seed, device=device),
            attack=attack, eps=None if eps is None else parse_floats(eps, "--eps", low=0.0),
            steps=steps, norm=norm, alpha=alpha, restarts=restarts, random_start=random_start,
            c=c, kappa=kappa, lr=lr, binary_search_steps=binary_search_steps,
            overshoot=overshoot, num_classes=num_classes, early_stop=early_stop,
            params=key_values(param or [], "--param"), fit_n=fit_n, batch_size=batch_size,
            surrogate=surrogate, transfer_from=transfer_from, checks=checks, n_checks=n_checks)
        report, metrics = run_job("attack", job, out, progress=progress)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    eps_given = None if job.eps is None else list(job.eps)
    console.print(summary_table(metrics))
    console.print(f"[dim]{metrics['summary']}[/]", highlight=False)
    note = eps_note(metrics, eps_given)
    if note:
        console.print(note, highlight=False)
    if metrics["curve"] is not None and (metrics["minimal"] or len(job.eps or ()) > 1):
        console.print(sweep_table(metrics))
    if metrics["checks"]:
        console.print(checks_table(metrics["checks"]))
        if not metrics["reliable"]:
            console.print("[bold red]unreliable:[/] a soundness check failed; the robust "
                          "accuracy above is an overestimate until the failure is explained.")
    console.print(f"results in [bold]{report.path}[/]")
