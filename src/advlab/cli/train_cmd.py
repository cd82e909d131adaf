"""``advlab train classifier`` (and, from the generative-model work, ``train generative``)."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer
import yaml
from rich.table import Table

from advlab.cli.common import (
    DataDirOption,
    DeviceOption,
    NprocOption,
    OutOption,
    apply_data_dir,
    console,
    err_console,
    fail,
    relaunch,
    setup_logging,
    training_errors,
)
from advlab.cli.common import (
    key_values as _key_values,
)

TensorboardOption = typer.Option(False, "--tensorboard", help="Also write the training curves "
                                 "as TensorBoard event files (RUN/tensorboard/; needs the "
                                 "tensorboard package).")


app = typer.Typer(help="Train classifiers and generative models.", no_args_is_help=True)


@app.command()
def classifier(
    dataset: str = typer.Option(None, help="Data set name (advlab data list) [digits]."),
    model: str = typer.Option(None, help="Model name (the zoo in docs/guide-models.md) [mlp]."),
    epochs: int = typer.Option(None, help="Epochs [10; digits 30]."),
    batch_size: int = typer.Option(None, help="Batch size [128; digits 64]."),
    optimizer: str = typer.Option(None, help="adam | sgd [adam]."),
    lr: float = typer.Option(None, help="Learning rate [1e-3; digits 3e-3]."),
    weight_decay: float = typer.Option(None, help="Weight decay [0]."),
    schedule: str = typer.Option(None, help="none | cosine | step | onecycle | cyclic [none]."),
    seed: int = typer.Option(None, help="Seed of init, shuffling and dropout [0]."),
    val_fraction: float = typer.Option(None, help="Validation share of train [0]."),
    patience: int = typer.Option(None, help="Early-stopping patience in epochs, 0 = off [0]."),
    n_train: int = typer.Option(None, help="Train on a seeded class-balanced subset of n."),
    widths: str = typer.Option(None, help="Hidden widths of mlp, e.g. 500,150."),
    config: Path = typer.Option(None, help="YAML file with a 'train:' section and job keys "
                                "(a run's config.yaml works); command-line options win."),
    defense: str = typer.Option(None, help="Training objective of a defense (advlab.defenses)."),
    defense_param: list[str] = typer.Option(None, "--defense-param",
                                            help="A defense parameter key=value (repeatable)."),
    init: Path = typer.Option(None, help="Start from these weights (run directory): fine-tune."),
    select_by: str = typer.Option(None, help="Keep the epoch that scores best on --holdout "
                                  "points: clean | fgsm | pgdN (e.g. pgd20, at the defense's "
                                  "ε and norm)."),
    holdout: int = typer.Option(None, help="Training points held out (never trained on) for "
                                "--select-by."),
    select_eps: float = typer.Option(None, help="ε of the --select-by attack [the defense's]."),
    select_alpha: float = typer.Option(None, help="PGD step of --select-by pgdN [2.5·ε/N]."),
    amp: str = typer.Option(None, help="Mixed precision of the training step: none | bf16 | "
                            "fp16 (CUDA only); default none."),
    compile_: bool = typer.Option(None, "--compile/--no-compile", help="torch.compile the "
                                  "model's forward for training (docs/guide-performance.md); "
                                  "default off."),
    out: Path = OutOption,
    resume: bool = typer.Option(False, help="Continue the run in --out from its last epoch."),
    device: str = DeviceOption,
    data_dir: Path = DataDirOption,
    progress: bool = typer.Option(True, help="Show a progress bar."),
    tensorboard: bool = TensorboardOption,
    nproc: int = NprocOption,
) -> None:
    """Train a classifier of the zoo; writes weights, metrics and figures to a run directory."""
    from advlab.config import from_dict
    from advlab.device import resolve_device
    from advlab.train.classifier import ClassifierJob, train_classifier
    from advlab.train.config import TrainConfig, check_precision, dataset_defaults

    relaunch(nproc)
    setup_logging()
    apply_data_dir(data_dir)
    try:
        if config is not None:
            base = _read_job_config(config)
        elif resume and out is not None:  # a bare --resume continues the run as configured
            from advlab.runs import saved_run_config  # (config.yaml lost: its checkpoint's)

            saved = saved_run_config(out)
            source = out / ("config.yaml" if (out / "config.yaml").is_file()
                            else "checkpoint.safetensors")
            base = _job_config(saved, source) if saved is not None else {}
        else:
            base = {}
        yaml_defense = base.pop("defense", None)
        yaml_defense_params = dict(base.pop("defense_config", None) or {})
        yaml_defense_params.pop("name", None)
        train_opts = dict(base.pop("train", {}) or {})
        train_opts.update({k: v for k, v in dict(
            epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
            weight_decay=weight_decay, schedule=schedule, seed=seed, val_fraction=val_fraction,
            patience=patience, device=device, amp=amp, compile=compile_).items()
            if v is not None})
        model_kwargs = dict(base.pop("model_kwargs", {}) or {})
        if widths:
            model_kwargs["widths"] = _ints(widths, "--widths")
        cli_opts = {"dataset": dataset, "model": model, "n_train": n_train,
                    "init": str(init) if init else None, "select_by": select_by,
                    "holdout": holdout, "select_eps": select_eps, "select_alpha": select_alpha}
        job_opts = {**base, **{k: v for k, v in cli_opts.items() if v is not None}}
        # the data set's own defaults, below a config file's or the options' values
        train_opts = {**dataset_defaults(job_opts.get("dataset", ClassifierJob.dataset)),
                      **train_opts}
        job = from_dict(ClassifierJob, {**job_opts, "model_kwargs": model_kwargs,
                                        "train": from_dict(TrainConfig, train_opts)})
        # before the run directory exists: fp16 needs CUDA, bf16 on CUDA a GPU that has it
        check_precision(job.train.amp, resolve_device(job.train.device))
        objective, extra = None, None
        if defense_param and not (defense or yaml_defense):
            raise ValueError("--defense-param needs --defense NAME")
        if defense and yaml_defense and defense != yaml_defense:
            yaml_defense_params = {}  # another defense: the file's parameters are not its own
        defense = defense or yaml_defense
        if defense:
            from advlab import defenses

            params = {**yaml_defense_params,
                      **_key_values(defense_param or [], "--defense-param")}
            objective = defenses.create_objective(defense, dataset=job.dataset, **params)
            extra = {"defense": defense, "defense_config": defenses.config(objective)}
        run, metrics = train_classifier(job, out, resume=resume, objective=objective,
                                        progress=progress, extra_config=extra,
                                        tensorboard=tensorboard)
    except training_errors() as e:
        fail(str(e))
    except KeyboardInterrupt as e:
        interrupted(e)
    table = Table("metric", "value")
    table.add_row("test accuracy", f"{metrics['test_acc']:.4f}")
    table.add_row("epochs", str(metrics["epochs_completed"]))
    if "selected_epoch" in metrics:
        key = f"holdout_{metrics['select_by']}_acc"
        table.add_row("selected epoch", f"{metrics['selected_epoch']} (held-out "
                      f"{metrics['select_by']} accuracy {metrics[key]:.4f} on "
                      f"{metrics['holdout']} points)")
    table.add_row("seconds / epoch", f"{metrics['mean_epoch_seconds']:.2f}")
    console.print(table)
    console.print(f"results in [bold]{run.path}[/]")


def interrupted(e: KeyboardInterrupt) -> NoReturn:
    """Ctrl-C during a training command: one line saying what survives and how to continue
    (``--resume``), exit status 130 (128 + SIGINT, as a shell reports it)."""
    from advlab.runs import TrainingInterrupted

    message = str(e) if isinstance(e, TrainingInterrupted) else \
        "before training started: nothing was written, nothing to resume"
    err_console.print(f"[bold yellow]interrupted:[/] {message}", highlight=False)
    raise typer.Exit(130)


def _read_job_config(path: Path) -> dict:
    """The mapping in the YAML file ``path``; a run's own config.yaml is accepted (its
    ``command`` key must then be ``train classifier``)."""
    try:
        base = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    return _job_config(base, path)


def _job_config(base: object, path: Path) -> dict:
    """``base`` (the mapping read from ``path``) checked to configure a ``train classifier``
    job; a copy without its ``command`` key."""
    if not isinstance(base, dict):
        raise ValueError(f"{path}: expected a YAML mapping, got {type(base).__name__}")
    base = dict(base)
    command = base.pop("command", "train classifier")
    if command != "train classifier":
        raise ValueError(f"{path}: the configuration of {command!r}, expected one of "
                         "'train classifier'")
    for section in ("train", "model_kwargs", "defense_config"):
        if base.get(section) is not None and not isinstance(base[section], dict):
            raise ValueError(f"{path}: expected the {section!r} section to be a mapping, got "
                             f"{base[section]!r}")
    return base


def _ints(spec: str, option: str) -> list[int]:
    """``"500,150"`` -> [500, 150]: positive integers, as layer widths are."""
    try:
        values = [int(w) for w in spec.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(f"{option}: expected comma-separated integers >= 1 (e.g. 500,150), "
                         f"got {spec!r}")
    return values


@app.command()
def generative(
    model: str = typer.Option(None, help="ae | vae | gan | dcgan | wgan-gp [vae]."),
    dataset: str = typer.Option(None, help="Data set name (advlab data list) [digits]."),
    epochs: int = typer.Option(None, help="Epochs [by model and data kind]."),
    batch_size: int = typer.Option(None, help="Batch size."),
    lr: float = typer.Option(None, help="Adam step size of the generator / autoencoder."),
    lr_critic: float = typer.Option(None, help="Adam step size of the critic [lr]."),
    beta1: float = typer.Option(None, help="Adam beta1."),
    beta2: float = typer.Option(None, help="Adam beta2."),
    d_steps: int = typer.Option(None, help="Discriminator / critic steps per generator step."),
    loss: str = typer.Option(None, help="Generator loss: non-saturating | minimax | "
                                        "wasserstein."),
    gp_weight: float = typer.Option(None, help="Gradient-penalty weight (wgan-gp) [10]."),
    real_label: float = typer.Option(None, help="gan/dcgan: target of real examples; 0.9 = "
                                                "one-sided label smoothing [1]."),
    steps_per_epoch: int = typer.Option(None, help="Generator steps per epoch (0 = a data "
                                                   "pass)."),
    lr_decay: str = typer.Option(None, help="none | linear (step sizes fall to 0 at the end)."),
    ema: float = typer.Option(None, help="Moving-average decay of the generator's weights "
                                         "(0 = off), e.g. 0.999."),
    latent_dim: int = typer.Option(None, help="Latent size."),
    arch: str = typer.Option(None, help="mlp | conv."),
    hidden: str = typer.Option(None, help="MLP hidden widths, e.g. 150 or 256,512."),
    width: int = typer.Option(None, help="Channels of the first conv layer."),
    likelihood: str = typer.Option(None, help="AE/VAE decoder: bernoulli | gaussian."),
    d_norm: str = typer.Option(None, help="dcgan discriminator: batch | spectral | none "
                                          "[batch]."),
    depth: int = typer.Option(None, help="dcgan: conv layers per resolution (>1 adds 3x3 "
                                         "stride-1 layers) [1]."),
    n_train: int = typer.Option(None, help="Train on a seeded subset of n examples."),
    n_eval: int = typer.Option(None, help="Test examples for the VAE bounds [all]."),
    classifier: Path = typer.Option(None, help="advlab classifier run (or weights) for the "
                                               "Inception-style score and Fréchet distance."),
    n_epoch_quality: int = typer.Option(None, help="With --classifier: samples scored after "
                                                   "every epoch (0 = off) [2000]."),
    seed: int = typer.Option(None, help="Seed of init, batch order and latent draws [0]."),
    amp: str = typer.Option(None, help="Mixed precision of the training steps: none | bf16; "
                            "default none."),
    out: Path = OutOption,
    resume: bool = typer.Option(False, help="Continue the run in --out from its last epoch."),
    device: str = DeviceOption,
    data_dir: Path = DataDirOption,
    progress: bool = typer.Option(True, help="Show a progress bar."),
    tensorboard: bool = TensorboardOption,
    nproc: int = NprocOption,
) -> None:
    """Train a generative model; writes weights, metrics and figures to a run directory."""
    from advlab import data
    from advlab.config import from_dict, to_dict
    from advlab.device import resolve_device
    from advlab.generative.job import GenerativeJob, train_generative
    from advlab.generative.train import GenerativeTrainConfig, default_config
    from advlab.runs import saved_run_config
    from advlab.train.config import check_precision

    relaunch(nproc)
    setup_logging()
    apply_data_dir(data_dir)
    try:
        train_opts = dict(epochs=epochs, batch_size=batch_size, lr=lr, lr_critic=lr_critic,
                          d_steps=d_steps, loss=loss, gp_weight=gp_weight,
                          real_label=real_label, steps_per_epoch=steps_per_epoch,
                          lr_decay=lr_decay, ema=ema, seed=seed, device=device, amp=amp)
        saved = None
        cfg = saved_run_config(out) if resume and out is not None else None
        if cfg is not None:
            # a bare --resume continues the run as configured (config.yaml lost: as its
            # checkpoint recorded); options given still override (and a changed one is
            # refused by the resume check, naming it)
            if cfg.get("command") != "train generative":
                raise ValueError(f"cannot resume {out}: it is a {cfg.get('command')!r} run, "
                                 f"not a 'train generative' one; choose another --out")
            saved = GenerativeJob.from_dict({k: v for k, v in cfg.items() if k != "model_spec"})
        model = model or (saved.model if saved else "vae")
        dataset = dataset or (saved.dataset if saved else "digits")
        kind = data.info(dataset).kind
        if saved is not None and (model, dataset) == (saved.model, saved.dataset):
            given = {k: v for k, v in train_opts.items() if v is not None}
            config = from_dict(GenerativeTrainConfig, {**to_dict(saved.train), **given})
        else:
            config = default_config(model, kind, dataset=dataset, **train_opts)
        if beta1 is not None or beta2 is not None:
            from dataclasses import replace

            b1, b2 = config.betas
            config = replace(config, betas=(b1 if beta1 is None else beta1,
                                            b2 if beta2 is None else beta2))
        model_kwargs = {k: v for k, v in dict(latent_dim=latent_dim, arch=arch, width=width,
                                               likelihood=likelihood, d_norm=d_norm,
                                               depth=depth).items()
                        if v is not None}
        if saved is not None and model == saved.model:
            model_kwargs = {**saved.model_kwargs, **model_kwargs}
        if hidden:
            model_kwargs["hidden"] = _ints(hidden, "--hidden")
        scorer = str(classifier) if classifier else None
        if saved is not None:
            n_train = saved.n_train if n_train is None else n_train
            n_eval = saved.n_eval if n_eval is None else n_eval
            scorer = scorer or saved.classifier
            n_epoch_quality = saved.n_epoch_quality if n_epoch_quality is None \
                else n_epoch_quality
        job = GenerativeJob(dataset=dataset, model=model, model_kwargs=model_kwargs,
                            n_train=n_train, n_eval=n_eval, classifier=scorer,
                            n_epoch_quality=2000 if n_epoch_quality is None else n_epoch_quality,
                            train=config)
        given = {k for k, v in train_opts.items() if v is not None}
        check_precision(config.amp, resolve_device(config.device))  # before the run directory
        run, metrics = train_generative(job, out, resume=resume, progress=progress, given=given,
                                        tensorboard=tensorboard)
    except training_errors() as e:
        fail(str(e))
    except KeyboardInterrupt as e:
        interrupted(e)
    table = Table("metric", "value")
    for key, label, fmt in (
            ("test_negative_elbo", "test negative ELBO (nats)", "{:.2f}"),
            ("test_iw_nll", "test IW bound, k=100 (nats)", "{:.2f}"),
            ("test_recon_nll", "test reconstruction NLL", "{:.2f}"),
            ("modes_covered", "modes covered", "{}"),
            ("high_quality_fraction", "high-quality fraction", "{:.3f}"),
            ("inception_score", "Inception-style score", "{:.3f}"),
            ("frechet_distance", "Fréchet distance", "{:.3f}")):
        if key in metrics:
            table.add_row(label, fmt.format(metrics[key]))
    if "num_modes" in metrics:
        table.add_row("modes in the mixture", str(metrics["num_modes"]))
    table.add_row("epochs", str(metrics["epochs_completed"]))
    table.add_row("seconds / epoch", f"{metrics['mean_epoch_seconds']:.2f}")
    console.print(table)
    console.print(f"results in [bold]{run.path}[/]")
