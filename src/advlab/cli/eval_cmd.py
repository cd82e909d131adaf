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
    eps_in_pixels,
    fail,
    load_companion,
    parse_floats,
    relaunch,
    resolve_target,
    run_domain,
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
    from advlab.runs import log_to_run, new_run_dir
    from advlab.train.classifier import report_classifier

    setup_logging()
    apply_data_dir(data_dir)
    try:
        eps_list = parse_floats(fgsm_eps, "--fgsm-eps", low=0.0) if fgsm_eps else None
        if eps_list and max(eps_list) > 1:
            raise ValueError(f"expected --fgsm-eps <= 1 (pixels in [0, 1]), got "
                             f"{max(eps_list):g}")
        target = resolve_target(run, model=model_spec, weights=weights, mean=mean, std=std,
                                bounds=bounds, output_key=output_key, data_file=data_file,
                                dataset=dataset_name, split=split, n=n, seed=seed,
                                device=device)
        model, dataset, ds = target.model, target.dataset, target.data
        report = new_run_dir("eval", out)
        report.write_config({"command": "eval", **target.record, "dataset": dataset,
                             "split": ds.split, "n": n, "seed": seed,
                             "rho2_report": rho2_report, "eps_ref": eps_ref_,
                             "fgsm_eps": eps_list})
        with log_to_run(report):
            metrics = report_classifier(report, model, ds)
            metrics.update(_extra_measures(model, ds, rho2_report, eps_ref_, eps_list,
                                           target.device))
        metrics.update({**target.record, "dataset": dataset, "split": ds.split})
        report.write_metrics(metrics)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    table = Table("class", "accuracy")
    for c, a in metrics["per_class_acc"].items():
        table.add_row(c, f"{a:.4f}")
    table.add_row("[bold]all", f"[bold]{metrics['test_acc']:.4f}")
    console.print(table)
    console.print(f"results in [bold]{report.path}[/]")


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
    from advlab.attacks import ThreatModel
    from advlab.distributed import is_main
    from advlab.eval.protocol import (
        AutoAttackSettings,
        check_protocol,
        protocol_rows,
        standard_evaluation,
    )
    from advlab.report.attack_figures import accuracy_curves
    from advlab.report.attack_report import checks_table
    from advlab.runs import log_to_run, new_run_dir
    from advlab.weights import library_versions

    relaunch(nproc)
    setup_logging()
    apply_data_dir(data_dir)
    try:
        threat = ThreatModel(norm, eps_in_pixels(eps, bounds or run_domain(run)))  # data units
        if minimal not in ("deepfool", "cw", "none"):
            raise ValueError(f"expected --minimal deepfool, cw or none, got {minimal!r}")
        check_protocol(threat, steps=steps, restarts=restarts, eot=eot, n_checks=n_checks,
                       minimal=None if minimal == "none" else minimal, batch_size=batch_size,
                       suite=suite)
        grid = eps_in_pixels(parse_floats(eps_list, "--eps-list", low=0.0) if eps_list else None,
                             bounds or run_domain(run))
        aa = AutoAttackSettings(steps=aa_steps, n_target_classes=aa_targets,
                                square_queries=square_queries)
        target = resolve_target(run, model=model_spec, weights=weights, mean=mean, std=std,
                                bounds=bounds, output_key=output_key, data_file=data_file,
                                dataset=dataset_name, split=split, n=n, default_n=1000,
                                seed=seed, device=device)
        model, dataset, ds, dev = target.model, target.dataset, target.data, target.device
        sur = load_companion(surrogate, "--surrogate", dataset, dev) if surrogate else None
        report = new_run_dir("eval-robust", out)
        report.write_config({"command": "eval robust", **target.record,
                             "dataset": dataset, "split": ds.split, "n": len(ds), "seed": seed,
                             "norm": norm, "eps": eps, **target.eps_record(eps),
                             "suite": suite, "steps": steps,
                             "restarts": restarts, "save_adv": save_adv,
                             "aa_steps": aa_steps, "aa_targets": aa_targets,
                             "square_queries": square_queries,
                             "minimal": minimal, "eps_list": grid, "eot": eot,
                             "surrogate": str(surrogate) if surrogate else None,
                             "batch_size": batch_size})
        with log_to_run(report):
            result = standard_evaluation(
                model, ds.x, ds.y, threat=threat, suite=suite, surrogate=sur, steps=steps,
                restarts=restarts, minimal=None if minimal == "none" else minimal,
                eps_list=grid, with_rho2=rho, with_eps_ref=eps_ref_, eot=eot,
                n_checks=n_checks, seed=seed, batch_size=batch_size, device=dev,
                progress=progress, autoattack=aa)
        metrics = result.to_dict()
        metrics.update({**target.record, **target.eps_record(eps), "dataset": dataset,
                        "split": ds.split, "versions": library_versions()})
        report.write_metrics(metrics)
        if save_adv and is_main():  # under torchrun rank 0 alone writes
            result.save_points(report.path / "points.safetensors", ds.x, ds.y)
        if result.curve is not None:
            accuracy_curves({f"{result.curve.attack} ({norm})": (result.curve.eps,
                                                                 result.curve.accuracy)},
                            report.figures / "accuracy_vs_eps.png", xlabel=f"ε ({norm})",
                            title=f"{dataset}: accuracy under {result.curve.attack}")
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    table = Table("measure", "value", title=f"{dataset}, {len(ds)} points, {norm} ε = {eps:g}, "
                  f"{suite} suite")
    for label, value, headline in protocol_rows(result):
        table.add_row(*(f"[bold]{v}" if headline else v for v in (label, value)))
    console.print(table)
    console.print(checks_table(metrics["checks"]))
    if target.eps_note(eps):
        console.print(target.eps_note(eps), highlight=False)
    if not result.reliable:
        console.print("[bold red]unreliable:[/] a soundness check failed; the robust accuracy "
                      "above is an overestimate until the failure is explained.")
    console.print(f"results in [bold]{report.path}[/]")


NEEDED_TARGETS = ("next", "random")


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
    import time

    import torch

    from advlab import attacks
    from advlab.eval import perturbation_needed
    from advlab.eval.needed import _check_lams
    from advlab.eval.robust import predict
    from advlab.report import attack_figures
    from advlab.runs import log_to_run, new_run_dir
    from advlab.weights import library_versions

    setup_logging()
    apply_data_dir(data_dir)
    try:
        if target not in NEEDED_TARGETS:
            raise ValueError(f"expected --target in {', '.join(NEEDED_TARGETS)}, got {target!r}")
        lam_list = _check_lams(parse_floats(lams, "--lams", low=0.0))
        for lam in lam_list:  # the attack's own checks of confidence, steps and lr
            attacks.create("optim", lam=lam, lr=lr, steps=steps, confidence=confidence)
        found = resolve_target(run, model=model_spec, weights=weights, mean=mean, std=std,
                               bounds=bounds, output_key=output_key, data_file=data_file,
                               dataset=dataset_name, split=split, n=n, seed=seed,
                               device=device)
        ds, dev = found.data, found.device
        k = len(ds.classes)
        if k < 2:
            raise ValueError(f"expected a data set of at least 2 classes, got {k}")
        y = ds.y
        if target == "next":
            goal = (y + 1) % k
        else:  # a class other than y: y shifted by 1 .. K-1
            g = torch.Generator().manual_seed(seed)
            goal = (y + torch.randint(1, k, y.shape, generator=g)) % k
        report = new_run_dir("eval-needed", out)
        config = {"command": "eval needed", **found.record, "dataset": found.dataset,
                  "split": ds.split, "n": len(ds), "seed": seed, "target": target,
                  "confidence": confidence, "lams": list(lam_list), "steps": steps, "lr": lr,
                  "save_adv": save_adv}
        report.write_config(config)
        x = ds.x.to(dev)
        with log_to_run(report):
            t0 = time.perf_counter()
            res = perturbation_needed(found.model, x, y.to(dev), goal.to(dev), lams=lam_list,
                                      confidence=confidence, steps=steps, lr=lr)
            seconds = time.perf_counter() - t0
            clean = predict(found.model, x).softmax(1).cpu()
            adv_probs = predict(found.model, res.adv).softmax(1).cpu()
        metrics = {**res.to_dict(), "robustness": res.mean_all,
                   "ratio_median": res.ratio[~res.ratio.isnan()].median().item()
                   if res.n > res.n_zero_norm else float("nan"),
                   "clean_accuracy": (clean.argmax(1) == y).float().mean().item(),
                   "target_rate": (adv_probs.argmax(1) == goal).float().mean().item(),
                   "seconds": seconds, **config, "versions": library_versions()}
        if save_adv:
            from advlab.io import save_state

            save_state(report.path / "adversarial.safetensors",
                       {"x": res.adv.float().cpu().contiguous(), "y": y, "target": goal,
                        "reached": res.reached, "ratio": res.ratio, "lam": res.lam})
        metrics["figures"] = _needed_figures(attack_figures, report.figures, res, ds, goal,
                                             clean, adv_probs)
        report.write_metrics(metrics)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    table = Table("measure", "value", title=f"{found.dataset}, {len(ds)} points, target "
                  f"{target}, confidence {confidence:g}")
    table.add_row("[bold]robustness: mean ‖x_adv − x‖₂/‖x‖₂ (all points)",
                  f"[bold]{res.mean_all:.4f}")
    table.add_row(f"reached {confidence:g} confidence", f"{res.reached_fraction:.4f}")
    table.add_row(f"λ = {lam_list[0]:g} alone: mean (share reached)",
                  f"{res.mean_first:.4f} ({res.reached_first_fraction:.4f})")
    table.add_row("clean accuracy on these points", f"{metrics['clean_accuracy']:.4f}")
    console.print(table)
    if res.reached_fraction < 1:
        console.print(f"{1 - res.reached_fraction:.1%} of the points never reached "
                      f"{confidence:g}: they count with their last perturbation, so the mean is "
                      "a lower bound of the perturbation needed.", highlight=False)
    console.print(f"results in [bold]{report.path}[/]")


def _needed_figures(attack_figures, figures: Path, res, ds, goal, clean, adv_probs) -> list[str]:
    """The ratios' histogram and the first examples with their adversaries; a figure that
    fails is logged and left out, never the numbers."""
    import logging

    import torch

    log = logging.getLogger(__name__)
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
