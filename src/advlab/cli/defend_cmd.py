"""``advlab defend``: post-training defenses and certificates of trained classifiers.

- ``advlab defend svd RUN --fraction 0:0.9:0.05 [--mode zero|scale] [--attack fgsm --eps 0.1]``:
  test and adversarial accuracy against the fraction of singular values removed;
  ``--suite standard --eps 0.1`` evaluates each truncated model as ``eval robust`` does.
- ``advlab defend certify RUN --eps 0.1,0.3``: Lipschitz bound and certified ℓ2 accuracy.
- ``advlab defend latent AE_RUN --head lrl --code encode|project``: a classifier on the codes of
  an AE/VAE run, saved as a run that ``attack`` and ``eval robust`` take.
- ``advlab defend defense-gan GAN_RUN CLASSIFIER_RUN``: Defense-GAN, saved likewise.

Training-time defenses are objectives: ``advlab train classifier --defense NAME``.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from advlab.cli.common import (
    DataDirOption,
    DeviceOption,
    OutOption,
    apply_data_dir,
    console,
    fail,
    load_classifier_run,
    parse_floats,
    setup_logging,
    training_errors,
)

app = typer.Typer(help="Post-training defenses and certificates of a trained classifier.",
                  no_args_is_help=True)


@app.command()
def svd(
    run: Path = typer.Argument(..., help="Classifier run directory (or model.safetensors)."),
    fraction: str = typer.Option("0:0.9:0.05", help="Fractions of singular values: 0.5, a list "
                                 "0,0.5 or a sweep start:stop:step."),
    mode: str = typer.Option("zero", help="zero | scale (divide by --factor)."),
    factor: float = typer.Option(10.0, help="Divisor of the bottom singular values (scale)."),
    attack: str = typer.Option(None, help="Attack for the adversarial accuracy (fgsm, pgd, ...); "
                               "none: clean accuracy only."),
    eps: float = typer.Option(None, help="Budget of --attack or --suite."),
    steps: int = typer.Option(None, help="Steps of --attack (pgd), or of --suite's PGD [50]."),
    suite: str = typer.Option(None, help="Evaluate each truncated model as `eval robust` does: "
                              "standard | autoattack | quick (the original model is the "
                              "transfer surrogate); the worst case is the adversarial accuracy."),
    norm: str = typer.Option("linf", help="Threat model of --suite: linf | l2."),
    aa_steps: int = typer.Option(100, min=1, help="--suite: APGD / FAB iterations."),
    aa_targets: int = typer.Option(9, min=1, help="--suite: APGD-T / FAB-T target classes."),
    square_queries: int = typer.Option(5000, min=1, help="--suite: Square's queries per point."),
    restarts: int = typer.Option(10, min=1, help="--suite: PGD random restarts."),
    n_checks: int = typer.Option(200, min=1, help="--suite: points of the soundness checks."),
    craft_on: str = typer.Option("truncated", help="truncated (white-box on each truncated "
                                 "model) | original (transfer from the unmodified model)."),
    n: int = typer.Option(None, help="Evaluate a seeded subset of n test points [all]."),
    seed: int = typer.Option(0, help="Seed of the subset."),
    batch_size: int = typer.Option(500, help="Points per attack call."),
    out: Path = OutOption,
    device: str = DeviceOption,
    data_dir: Path = DataDirOption,
) -> None:
    """Zero (or shrink) the bottom singular values of every weight matrix; sweep the fraction."""
    from advlab.attacks import ThreatModel, create
    from advlab.defenses.svd import MODES, check_sweep, sweep
    from advlab.eval.protocol import AutoAttackSettings
    from advlab.eval.robust import check_batch_size
    from advlab.report.attack_figures import accuracy_curves
    from advlab.runs import log_to_run, new_run_dir
    from advlab.weights import library_versions

    setup_logging()
    apply_data_dir(data_dir)
    try:
        fractions = parse_floats(fraction, "--fraction", low=0.0, high=1.0)
        if mode not in MODES:
            raise ValueError(f"expected --mode in {', '.join(MODES)}, got {mode!r}")
        att, threat, protocol = None, None, {}
        params = {k: v for k, v in dict(eps=eps, steps=steps).items() if v is not None}
        if attack is not None:
            att = create(attack, **params)
        if suite is not None:
            if eps is None:
                raise ValueError("--suite needs --eps, the budget of its threat model")
            threat = ThreatModel(norm, eps)
            protocol = dict(steps=50 if steps is None else steps, restarts=restarts,
                            n_checks=n_checks, seed=seed,
                            autoattack=AutoAttackSettings(steps=aa_steps,
                                                          n_target_classes=aa_targets,
                                                          square_queries=square_queries))
        elif att is None and params:
            raise ValueError("--eps/--steps need --attack NAME or --suite NAME")
        check_sweep(fractions, mode=mode, factor=factor, craft_on=craft_on, attack=att,
                    suite=suite, threat=threat, **protocol)
        check_batch_size(batch_size)
        model, dataset, ds, dev = load_classifier_run(run, "test", n, seed, device)
        report = new_run_dir("defend-svd", out)
        config = {"command": "defend svd", "source_run": str(run), "dataset": dataset,
                  "n": len(ds), "seed": seed, "fractions": fractions, "mode": mode,
                  "factor": factor, "attack": att.config() if att else None,
                  "craft_on": craft_on, "suite": suite,
                  "threat": None if threat is None else {"norm": norm, "eps": eps}}
        report.write_config(config)
        x, y = ds.x.to(dev), ds.y.to(dev)
        with log_to_run(report):
            rows = sweep(model, x, y, fractions, mode=mode, factor=factor, attack=att,
                         craft_on=craft_on, batch_size=batch_size, suite=suite, threat=threat,
                         **protocol)
        curves = {"test accuracy": (fractions, [r.clean_accuracy for r in rows])}
        if att is not None:
            label = f"{attack} eps={att.config().get('eps')} ({craft_on})"
            curves[label] = (fractions, [r.adversarial_accuracy for r in rows])
        elif suite is not None:
            curves[f"--suite {suite}, {norm} eps={eps:g} (worst case)"] = (
                fractions, [r.adversarial_accuracy for r in rows])
            curves["transfer from the original"] = (
                fractions, [r.extra["transfer_accuracy"] for r in rows])
        verb = "zeroed" if mode == "zero" else f"divided by {factor:g}"
        accuracy_curves(curves, report.figures / "svd_sweep.png",
                        xlabel=f"fraction of singular values {verb}",
                        title=f"SVD defense ({dataset})")
        metrics = {**config, "rows": [r.__dict__ for r in rows], "versions": library_versions()}
        report.write_metrics(metrics)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    cols = ["fraction", "values changed", "test acc",
            "worst case" if suite else "adversarial acc"]
    table = Table(*cols, *(["transfer", "checks"] if suite else []))
    for r in rows:
        adv = "-" if r.adversarial_accuracy is None else f"{r.adversarial_accuracy:.4f}"
        cells = [f"{r.fraction:.3g}", str(r.removed), f"{r.clean_accuracy:.4f}", adv]
        if suite:
            tr = r.extra["transfer_accuracy"]
            cells += ["-" if tr is None else f"{tr:.4f}",
                      "pass" if r.extra["reliable"] else
                      "FAIL: " + ", ".join(r.extra["failed_checks"])]
        table.add_row(*cells)
    console.print(table)
    console.print(f"results in [bold]{report.path}[/]")


@app.command()
def certify(
    run: Path = typer.Argument(..., help="Classifier run directory (or model.safetensors)."),
    eps: str = typer.Option("0.1,0.3,0.5", help="ℓ2 radii: a list or a sweep start:stop:step."),
    n: int = typer.Option(None, help="Evaluate a seeded subset of n test points [all]."),
    seed: int = typer.Option(0, help="Seed of the subset."),
    out: Path = OutOption,
    device: str = DeviceOption,
    data_dir: Path = DataDirOption,
) -> None:
    """Lipschitz upper bound of the logits and the certified ℓ2 accuracy (margin > √2·L·ε)."""
    from advlab.defenses.lipschitz import certified_radius, is_lipschitz, lipschitz_bound
    from advlab.runs import log_to_run, new_run_dir
    from advlab.weights import library_versions

    setup_logging()
    apply_data_dir(data_dir)
    try:
        eps_list = parse_floats(eps, "--eps", low=0.0)
        model, dataset, ds, dev = load_classifier_run(run, "test", n, seed, device)
        report = new_run_dir("defend-certify", out)
        with log_to_run(report):
            lip = lipschitz_bound(model)
            radius = certified_radius(model, ds.x.to(dev), ds.y.to(dev), lipschitz=lip)
        cert = {e: (radius > e).float().mean().item() for e in eps_list}
        metrics = {"command": "defend certify", "source_run": str(run), "dataset": dataset,
                   "n": len(ds), "seed": seed, "lipschitz_bound": lip,
                   "spectrally_bounded": is_lipschitz(model),
                   "clean_accuracy": (radius > 0).float().mean().item(),
                   "median_certified_radius": radius.clamp_min(0).median().item(),
                   "certified_accuracy": [{"eps": e, "accuracy": a} for e, a in cert.items()],
                   "versions": library_versions()}
        report.write_config({k: metrics[k] for k in ("command", "source_run", "n", "seed")}
                            | {"eps": eps_list})
        report.write_metrics(metrics)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    console.print(f"Lipschitz bound of the logits: {lip:.4g}; clean accuracy "
                  f"{metrics['clean_accuracy']:.4f} on {len(ds)} points")
    table = Table("eps (l2)", "certified accuracy")
    for e, a in cert.items():
        table.add_row(f"{e:.4g}", f"{a:.4f}")
    console.print(table)
    console.print(f"results in [bold]{report.path}[/]")


@app.command()
def latent(
    generative: Path = typer.Argument(..., help="Run directory of a trained ae or vae."),
    head: str = typer.Option("lrl", help="Classifier on the codes: linear-1l | linear-2l | lrl."),
    code: str = typer.Option("encode", help="encode (the encoder's output) | project (argmin_z "
                             "‖decode(z) − x‖₂, by Adam)."),
    steps: int = typer.Option(500, help="Projection steps (code=project)."),
    restarts: int = typer.Option(1, help="Projection restarts (code=project)."),
    epochs: int = typer.Option(10, help="Epochs of the head."),
    batch_size: int = typer.Option(128, help="Batch size of the head."),
    lr: float = typer.Option(1e-3, help="Adam step size of the head."),
    seed: int = typer.Option(0, help="Seed of the head's init, the batch order and subsets."),
    n_train: int = typer.Option(None, help="Train on a seeded class-balanced subset of n."),
    n_test: int = typer.Option(None, help="Test accuracy on a seeded subset of n [all]."),
    out: Path = OutOption,
    resume: bool = typer.Option(False, help="Continue the run in --out from its last epoch."),
    device: str = DeviceOption,
    data_dir: Path = DataDirOption,
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train a classifier on the latent codes of an AE/VAE run (a run `eval robust` takes)."""
    from advlab.defenses.jobs import LatentJob, train_latent_run
    from advlab.train import TrainConfig

    setup_logging()
    apply_data_dir(data_dir)
    try:
        job = LatentJob(generative=str(generative), head=head, code=code, steps=steps,
                        restarts=restarts, n_train=n_train, n_test=n_test,
                        train=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr,
                                          seed=seed, device=device))
        run, metrics = train_latent_run(job, out, resume=resume, progress=progress)
    except training_errors() as e:
        fail(str(e))
    except KeyboardInterrupt as e:
        from advlab.cli.train_cmd import interrupted

        interrupted(e)
    console.print(f"{code}/{head} on {metrics['dataset']}: test accuracy "
                  f"{metrics['test_acc']:.4f} ({metrics['n_test']} points)")
    console.print(f"results in [bold]{run.path}[/]")


@app.command("defense-gan")
def defense_gan(
    generator: Path = typer.Argument(..., help="Run directory of a trained generative model "
                                     "(gan, dcgan, wgan-gp; an ae/vae decoder works too)."),
    classifier: Path = typer.Argument(..., help="Classifier run of the same data set."),
    steps: int = typer.Option(500, help="Projection steps per restart."),
    restarts: int = typer.Option(10, help="Random starts of the projection (best kept)."),
    n_test: int = typer.Option(100, "--n", help="Clean accuracy on a seeded subset of n test "
                               "points (0 = skip: each point costs steps × restarts)."),
    seed: int = typer.Option(0, help="Seed of the projection starts and of the subset."),
    out: Path = OutOption,
    data_dir: Path = DataDirOption,
) -> None:
    """Defense-GAN: classify G(z*), z* the projection of the input onto G's range."""
    from advlab.defenses.jobs import build_defense_gan_run

    setup_logging()
    apply_data_dir(data_dir)
    try:
        run, metrics = build_defense_gan_run(generator, classifier, out, steps=steps,
                                             restarts=restarts, n_test=n_test, seed=seed)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    if "test_acc" in metrics:
        console.print(f"Defense-GAN on {metrics['dataset']}: clean accuracy "
                      f"{metrics['test_acc']:.4f} (classifier alone "
                      f"{metrics['classifier_test_acc']:.4f}), mean ‖G(z*) − x‖/‖x‖ "
                      f"{metrics['reconstruction']:.4f} on {metrics['n_test']} points")
    console.print(f"results in [bold]{run.path}[/]")
