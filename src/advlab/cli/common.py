"""Options and helpers shared by the command groups."""

from __future__ import annotations

import difflib
import logging
import math
from pathlib import Path

import typer
from rich.console import Console
from typer.core import TyperGroup

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # an error is one line, also in logs

OutOption = typer.Option(None, "--out", help="Run directory (default: runs/<command>-<time>).")
DeviceOption = typer.Option("auto", "--device", help="auto | cpu | cuda | mps")
DataDirOption = typer.Option(None, "--data-dir", help="Data root (overrides ADVLAB_DATA).",
                             envvar=None)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("advlab").setLevel(logging.INFO)


def apply_data_dir(data_dir: Path | None) -> None:
    if data_dir is not None:
        from advlab import data

        data.set_data_dir(data_dir)


def fail(message: str) -> None:
    """Print a one-line error and exit with status 2 (no traceback for user errors)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def training_errors() -> tuple[type[BaseException], ...]:
    """The user errors of a training command: bad input, and a run that diverged (its message
    names the epoch and the checkpoint kept). Evaluated only when an exception is matched."""
    from advlab.train.loop import TrainingDiverged

    return (ValueError, FileNotFoundError, TrainingDiverged)


MAX_VALUES = 10_000  # a range longer than this is a typo (a step of 1e-9), not a sweep


def parse_floats(spec: str, option: str = "value", *, low: float | None = None,
                 high: float | None = None) -> list[float]:
    """``0.1`` -> [0.1]; ``0.1,0.2`` -> [0.1, 0.2]; ``0:0.3:0.05`` -> 0, 0.05, ..., 0.3.

    Every value must be finite and inside [``low``, ``high``] (each bound if given); the error
    names ``option`` (e.g. ``--eps``).
    """
    text, too_long = spec.strip(), 0
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3 or not all(map(math.isfinite, parts)) or parts[2] <= 0 \
                    or parts[1] < parts[0]:
                raise ValueError
            start, stop, step = parts
            n = int(round((stop - start) / step))
            if n >= MAX_VALUES:
                too_long = n + 1
                raise ValueError
            values = [round(start + i * step, 10) for i in range(n + 1)]
        else:
            values = [float(p) for p in text.split(",")]  # an empty item fails here
        if not all(math.isfinite(v) for v in values):
            raise ValueError
    except ValueError:
        if too_long:
            raise ValueError(f"expected {option} to hold at most {MAX_VALUES} values, got the "
                             f"range {spec!r} of {too_long}") from None
        raise ValueError(f"expected {option} to be a finite number, a list 'a,b,c' or a range "
                         f"'start:stop:step' (stop >= start, step > 0), got {spec!r}") from None
    outside = [v for v in values if (low is not None and v < low) or
               (high is not None and v > high)]
    if outside:
        bounds = (f"in [{low:g}, {high:g}]" if low is not None and high is not None
                  else f">= {low:g}" if low is not None else f"<= {high:g}")
        raise ValueError(f"expected {option} values {bounds}, got {', '.join(map(str, outside))}")
    return values


class DefaultCommandGroup(TyperGroup):
    """A group whose first argument may be a path instead of a command: ``advlab eval RUN``
    runs the group's default command on RUN, while ``advlab eval robust RUN`` runs ``robust``."""

    default_command = "accuracy"

    def resolve_command(self, ctx, args: list[str]):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            close = difflib.get_close_matches(args[0], list(self.commands), n=1, cutoff=0.75)
            if close and not Path(args[0]).exists():  # a misspelt command, not a run path
                ctx.fail(f"no command {args[0]!r} (did you mean {close[0]!r}?) and no run "
                         f"directory {args[0]!r}")
            args.insert(0, self.default_command)
        return super().resolve_command(ctx, args)


def load_companion(path: Path, option: str, dataset: str, device):
    """The classifier run ``path`` given with ``option`` (``--surrogate``, ``--transfer-from``),
    checked to be a model of the attacked run's ``dataset`` (another data set's model, even
    of the same input shape, would give meaningless transfer numbers)."""
    from advlab.weights import load_model, read_model_meta

    theirs = read_model_meta(path).get("dataset")  # the header only: fails before loading
    if theirs != dataset:
        raise ValueError(f"{option} {path}: a model of {theirs!r}, expected one of the attacked "
                         f"run's data set {dataset!r}")
    return load_model(path, device)


def load_classifier_run(run: Path, split: str, n: int | None, seed: int, device: str):
    """(model, dataset name, data set or its seeded subset of n points, device) of a run."""
    from advlab import data
    from advlab.device import resolve_device
    from advlab.weights import load_model, read_model_meta

    if n is not None and n < 1:
        raise ValueError(f"expected --n >= 1, got {n}")
    dev = resolve_device(device)
    model = load_model(run, dev)
    dataset = read_model_meta(run).get("dataset")
    if not dataset:
        raise ValueError(f"{run}: the model file does not name its data set")
    ds = data.load(dataset, split)
    if n is not None and n < len(ds):
        ds = data.subset(ds, n, seed=seed)
    return model, dataset, ds, dev
