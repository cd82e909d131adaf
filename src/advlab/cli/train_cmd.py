"""``advlab train classifier`` (and, from the generative-model work, ``train generative``)."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml
from rich.table import Table

from advlab.cli.common import (DataDirOption, DeviceOption, OutOption, apply_data_dir, console,
                               fail, setup_logging)

app = typer.Typer(help="Train classifiers and generative models.", no_args_is_help=True)


@app.command()
def classifier(
    dataset: str = typer.Option("digits", help="Data set name (advlab data list)."),
    model: str = typer.Option("mlp", help="Model name (see the zoo in docs/guide-models.md)."),
    epochs: int = typer.Option(None, help="Epochs [10]."),
    batch_size: int = typer.Option(None, help="Batch size [128]."),
    optimizer: str = typer.Option(None, help="adam | sgd [adam]."),
    lr: float = typer.Option(None, help="Learning rate [1e-3]."),
    weight_decay: float = typer.Option(None, help="Weight decay [0]."),
    schedule: str = typer.Option(None, help="none | cosine | step | onecycle [none]."),
    seed: int = typer.Option(None, help="Seed of init, shuffling and dropout [0]."),
    val_fraction: float = typer.Option(None, help="Validation share of train [0]."),
    patience: int = typer.Option(None, help="Early-stopping patience in epochs, 0 = off [0]."),
    n_train: int = typer.Option(None, help="Train on a seeded class-balanced subset of n."),
    widths: str = typer.Option(None, help="Hidden widths of mlp, e.g. 500,150."),
    config: Path = typer.Option(None, help="YAML file with a 'train:' section and job keys."),
    defense: str = typer.Option(None, help="Training objective of a defense (advlab.defenses)."),
    out: Path = OutOption,
    resume: bool = typer.Option(False, help="Continue the run in --out from its last epoch."),
    device: str = DeviceOption,
    data_dir: Path = DataDirOption,
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train a classifier of the zoo; writes weights, metrics and figures to a run directory."""
    from advlab.config import from_dict
    from advlab.train.classifier import ClassifierJob, train_classifier
    from advlab.train.config import TrainConfig

    setup_logging()
    apply_data_dir(data_dir)
    try:
        base = yaml.safe_load(config.read_text()) if config else {}
        if not isinstance(base, dict):
            raise ValueError(f"{config}: expected a YAML mapping")
        train_opts = dict(base.pop("train", {}) or {})
        train_opts.update({k: v for k, v in dict(
            epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
            weight_decay=weight_decay, schedule=schedule, seed=seed, val_fraction=val_fraction,
            patience=patience, device=device).items() if v is not None})
        model_kwargs = dict(base.pop("model_kwargs", {}) or {})
        if widths:
            model_kwargs["widths"] = [int(w) for w in widths.split(",") if w]
        job_opts = {"dataset": dataset, "model": model, "n_train": n_train, **base}
        job = ClassifierJob(**{k: v for k, v in job_opts.items() if v is not None},
                            model_kwargs=model_kwargs, train=from_dict(TrainConfig, train_opts))
        objective, extra = None, None
        if defense:
            from advlab import defenses

            objective = defenses.create_objective(defense, dataset=job.dataset)
            extra = {"defense": defense}
        run, metrics = train_classifier(job, out, resume=resume, objective=objective,
                                        progress=progress, extra_config=extra)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    table = Table("metric", "value")
    table.add_row("test accuracy", f"{metrics['test_acc']:.4f}")
    table.add_row("epochs", str(metrics["epochs_completed"]))
    table.add_row("seconds / epoch", f"{metrics['mean_epoch_seconds']:.2f}")
    console.print(table)
    console.print(f"results in [bold]{run.path}[/]")
