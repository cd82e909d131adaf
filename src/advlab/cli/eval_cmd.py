"""``advlab eval RUN``: accuracy, per-class accuracy and confusion matrix of a trained model;
``advlab eval robust RUN --eps 0.3``: the standard robustness protocol with soundness checks."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from advlab.cli.common import (
    BoundsOption,
    DataDirOption,
    DataOption,
    DatasetOption,
    DefaultCommandGroup,
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
    parse_floats,
    relaunch,
    setup_logging,
)

app = typer.Typer(help="Evaluate a trained model: `advlab eval RUN`.", cls=DefaultCommandGroup,
                  no_args_is_help=True)


@app.command()
def accuracy(
    run: Path = typer.Argument(None, help="Run directory (or model.safetensors) to evaluate; "
                               "or your own model with --model."),
    split: str = typer.Option("test", help="train | test"),
    n: int = typer.Option(None, min=1, help="A seeded random subset of n points [all]."),
    seed: int = typer.Option(0, help="Seed of the subset."),
    rho2_report: bool = typer.Option(False, "--rho2-report", help="Also ρ₂ as the Deep Defense "
                                     "report measures it: DeepFool (<= 5 steps, overshoot "
                                     "0.02, not clipped to the pixel box) away from the "
                                     "prediction, mean ‖r‖₂/‖x‖₂ over all points."),
    eps_ref_: bool = typer.Option(False, "--eps-ref", help="Also ε_ref: the smallest FGSM ε "
                                  "(ℓ∞) at which accuracy falls to 50% (bisection)."),
    fgsm_eps: str = typer.Option(None, help="Also FGSM accuracy at these ε (ℓ∞, each afresh), "
                                 "e.g. 0.01,0.02 or 0:0.1:0.02."),
    out: Path = OutOption,
    data_dir: Path = DataDirOption,
    device: str = DeviceOption,
    model_spec: str = ModelOption,
    weights: Path = WeightsOption,
    mean: str = MeanOption,
    std: str = StdOption,
    bounds: str = BoundsOption,
    output_key: str = OutputKeyOption,
    data_file: Path = DataOption,
    dataset_name: str = DatasetOption,
) -> None:
    """Accuracy, per-class accuracy, confusion matrix and ROC/AUC on a split of the run's data
    set (or of your own --model on --data FILE / --dataset NAME); with options, the Deep
    Defense report's ρ₂, ε_ref and FGSM accuracies."""
    from advlab.jobs import run_job
    from advlab.jobs.evaluate import EvalAccuracyJob
    from advlab.jobs.target import command_line_options

    setup_logging()
    apply_data_dir(data_dir)
    try:
        job = EvalAccuracyJob(
            **command_line_options(run=run, model=model_spec, weights=weights, mean=mean,
                                   std=std, bounds=bounds, output_key=output_key,
                                   data=data_file, dataset=dataset_name, split=split, n=n,
                                   seed=seed, device=device),
            rho2_report=rho2_report, eps_ref=eps_ref_,
            fgsm_eps=parse_floats(fgsm_eps, "--fgsm-eps", low=0.0) if fgsm_eps else None)
        report, metrics = run_job("eval accuracy", job, out)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    table = Table("class", "accuracy")
    for c, a in metrics["per_class_acc"].items():
        table.add_row(c, f"{a:.4f}")
    table.add_row("[bold]all", f"[bold]{metrics['test_acc']:.4f}")
    console.print(table)
    console.print(f"results in [bold]{report.path}[/]")


@app.command()
def robust(
    run: Path = typer.Argument(None, help="Classifier run directory (or model.safetensors); "
                               "or your own model with --model."),
    norm: str = typer.Option("linf", help="Threat model: linf | l2."),
    eps: float = typer.Option(..., help="Budget ε of the threat model, e.g. 0.3 (MNIST linf)."),
    suite: str = typer.Option("standard", help="standard (AutoAttack's attacks + FGSM, PGD, "
                              "minimal curve, ρ₂, ε_ref, transfer, soundness checks) | "
                              "autoattack (APGD-CE, APGD-T, FAB-T, Square) | quick (APGD-CE, "
                              "APGD-T with 3 targets)."),
    save_adv: bool = typer.Option(False, "--save-adv", help="Write points.safetensors: the "
                                  "worst-case adversarial inputs, predictions, per-attack and "
                                  "worst-case robust flags, norms, iterations/queries."),
    aa_steps: int = typer.Option(100, min=1, help="APGD / FAB iterations (AutoAttack: 100)."),
    aa_targets: int = typer.Option(9, min=1, help="APGD-T / FAB-T target classes "
                                   "(AutoAttack: 9)."),
    square_queries: int = typer.Option(5000, min=1, help="Square's query budget per point "
                                       "(AutoAttack: 5000)."),
    steps: int = typer.Option(50, help="PGD steps."),
    restarts: int = typer.Option(10, help="PGD random restarts (the best per point kept)."),
    minimal: str = typer.Option("deepfool", help="Minimal-perturbation attack for the curve "
                                "over ε and the perturbation needed: deepfool | cw (l2) | none."),
    eps_list: str = typer.Option(None, help="Where to read the accuracy curve, e.g. 0:0.4:0.05 "
                                 "(default: 0.25ε to 2ε)."),
    surrogate: Path = typer.Option(None, help="An undefended classifier run: adds the transfer "
                                   "(black-box) attack and the white-box vs transfer check."),
    eot: int = typer.Option(1, help="EOT samples for a randomized model (logits averaged over "
                            "this many passes)."),
    rho: bool = typer.Option(True, "--rho2/--no-rho2", help="Measure ρ₂ (DeepFool ℓ2)."),
    eps_ref_: bool = typer.Option(True, "--eps-ref/--no-eps-ref",
                                  help="Measure ε_ref (FGSM bisection; linf)."),
    n: int = typer.Option(None, help="Evaluate a seeded random subset of n test points "
                          "[1000; with --data: every point]."),
    n_checks: int = typer.Option(200, min=1, help="Points used by the soundness checks."),
    split: str = typer.Option("test", help="train | test"),
    seed: int = typer.Option(0, help="Seed of the subset and of the random starts."),
    batch_size: int | None = typer.Option(None, help="Points per attack call (default: "
                                          "measured for this machine, cached); speed only, "
                                          "results do not depend on it."),
    progress: bool = typer.Option(True, help="Show progress bars."),
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
    """Robust accuracy under a suite of attacks: AutoAttack's (APGD-CE, APGD-T, FAB-T, Square)
    and, in the standard suite, FGSM, PGD×restarts, DeepFool/CW, ρ₂, ε_ref, transfer, checks."""
    from advlab.eval.protocol import protocol_rows
    from advlab.jobs import run_job
    from advlab.jobs.evaluate import EvalRobustJob
    from advlab.jobs.target import command_line_options, eps_note
    from advlab.report.attack_report import checks_table

    relaunch(nproc)
    setup_logging()
    apply_data_dir(data_dir)
    results = []
    try:
        job = EvalRobustJob(
            **command_line_options(run=run, model=model_spec, weights=weights, mean=mean,
                                   std=std, bounds=bounds, output_key=output_key,
                                   data=data_file, dataset=dataset_name, split=split, n=n,
                                   seed=seed, device=device),
            eps=eps, norm=norm, suite=suite, save_adv=save_adv, aa_steps=aa_steps,
            aa_targets=aa_targets, square_queries=square_queries, steps=steps,
            restarts=restarts, minimal=minimal,
            eps_list=parse_floats(eps_list, "--eps-list", low=0.0) if eps_list else None,
            surrogate=surrogate, eot=eot, rho2=rho, eps_ref=eps_ref_, n_checks=n_checks,
            batch_size=batch_size)
        report, metrics = run_job("eval robust", job, out, progress=progress,
                                  on_result=results.append)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    result = results[0]
    dataset = metrics["dataset"]
    table = Table("measure", "value", title=f"{dataset}, {metrics['n']} points, {norm} ε = "
                  f"{eps:g}, {suite} suite")
    for label, value, headline in protocol_rows(result):
        table.add_row(*(f"[bold]{v}" if headline else v for v in (label, value)))
    console.print(table)
    console.print(checks_table(metrics["checks"]))
    if eps_note(metrics, eps):
        console.print(eps_note(metrics, eps), highlight=False)
    if not result.reliable:
        console.print("[bold red]unreliable:[/] a soundness check failed; the robust accuracy "
                      "above is an overestimate until the failure is explained.")
    console.print(f"results in [bold]{report.path}[/]")


@app.command()
def needed(
    run: Path = typer.Argument(None, help="Classifier run directory (or model.safetensors), a "
                               "`defend latent` run included; or your own model with --model."),
    confidence: float = typer.Option(0.95, help="Target probability at which a point stops, in "
                                     "(0, 1] (the report's 95%)."),
    target: str = typer.Option("next", help="next: class (y + 1) mod K (the report's) | random: "
                               "a seeded class other than y."),
    lams: str = typer.Option("0.1,0.01,0", help="Penalty weights λ of the optim attack, tried "
                             "in turn on the points a larger λ left short of --confidence "
                             "(the report's λ = 0.1 first)."),
    steps: int = typer.Option(500, help="Gradient steps per λ."),
    lr: float = typer.Option(0.01, help="Step size of the gradient descent."),
    n: int = typer.Option(180, min=1, help="A seeded random subset of n points (the report: "
                          "180)."),
    split: str = typer.Option("test", help="train | test"),
    seed: int = typer.Option(0, help="Seed of the subset and of --target random."),
    save_adv: bool = typer.Option(False, "--save-adv", help="Write adversarial.safetensors: x "
                                  "(the adversaries), y (the labels), target, reached, ratio, "
                                  "lam; `advlab eval RUN2 --data FILE` passes them to another "
                                  "model."),
    out: Path = OutOption,
    data_dir: Path = DataDirOption,
    device: str = DeviceOption,
    model_spec: str = ModelOption,
    weights: Path = WeightsOption,
    mean: str = MeanOption,
    std: str = StdOption,
    bounds: str = BoundsOption,
    output_key: str = OutputKeyOption,
    data_file: Path = DataOption,
    dataset_name: str = DatasetOption,
) -> None:
    """The perturbation needed for a confident targeted misclassification ("Making Neural Nets
    Robust Again"): mean ‖x_adv − x‖₂/‖x‖₂ of the optim attack run until the target class has
    --confidence (`advlab.eval.perturbation_needed`)."""
    from advlab.jobs import run_job
    from advlab.jobs.evaluate import EvalNeededJob
    from advlab.jobs.target import command_line_options

    setup_logging()
    apply_data_dir(data_dir)
    try:
        job = EvalNeededJob(
            **command_line_options(run=run, model=model_spec, weights=weights, mean=mean,
                                   std=std, bounds=bounds, output_key=output_key,
                                   data=data_file, dataset=dataset_name, split=split, n=n,
                                   seed=seed, device=device),
            confidence=confidence, target=target, lams=parse_floats(lams, "--lams", low=0.0),
            steps=steps, lr=lr, save_adv=save_adv)
        report, metrics = run_job("eval needed", job, out)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    table = Table("measure", "value", title=f"{metrics['dataset']}, {metrics['n']} points, "
                  f"target {target}, confidence {confidence:g}")
    table.add_row("[bold]robustness: mean ‖x_adv − x‖₂/‖x‖₂ (all points)",
                  f"[bold]{metrics['mean_all']:.4f}")
    table.add_row(f"reached {confidence:g} confidence", f"{metrics['reached']:.4f}")
    table.add_row(f"λ = {job.lams[0]:g} alone: mean (share reached)",
                  f"{metrics['mean_first']:.4f} ({metrics['reached_first']:.4f})")
    table.add_row("clean accuracy on these points", f"{metrics['clean_accuracy']:.4f}")
    console.print(table)
    if metrics["reached"] < 1:
        console.print(f"{1 - metrics['reached']:.1%} of the points never reached "
                      f"{confidence:g}: they count with their last perturbation, so the mean is "
                      "a lower bound of the perturbation needed.", highlight=False)
    console.print(f"results in [bold]{report.path}[/]")
