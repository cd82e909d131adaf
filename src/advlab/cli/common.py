"""Options and helpers shared by the command groups."""

from __future__ import annotations

import difflib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from typer.core import TyperGroup

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # an error is one line, also in logs

OutOption = typer.Option(None, "--out", help="Run directory (default: runs/<command>-<time>).")
DeviceOption = typer.Option("auto", "--device", help="auto | cpu | cuda | mps")
DataDirOption = typer.Option(None, "--data-dir", help="Data root (overrides ADVLAB_DATA).",
                             envvar=None)


_VERBOSE = {"on": False}
# the command lines run in this process by ``advlab reproduce`` (innermost last): what
# ``--nproc`` relaunches, instead of the recipe's own command line in sys.argv
_IN_PROCESS: list[list[str]] = []


def set_verbose(on: bool) -> None:
    """``advlab -v``: show the log lines on the console too."""
    _VERBOSE["on"] = bool(on)


def setup_logging(verbose: bool = False) -> None:
    """Console logging of a command: warnings and errors (every log line with ``advlab -v``);
    the INFO lines always reach each run's ``log.txt`` (``runs.log_to_run``). Under torchrun
    (``WORLD_SIZE`` > 1) the process first joins the process group, and only rank 0 prints."""
    main = join_process_group()
    verbose = verbose or _VERBOSE["on"]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # the console's (basicConfig's) handler
        if type(handler) is logging.StreamHandler:
            handler.setLevel(logging.INFO if verbose and main else logging.WARNING)
    logging.getLogger("advlab").setLevel(logging.INFO if main else logging.WARNING)


def join_process_group() -> bool:
    """Join torchrun's process group when the environment describes one (a no-op otherwise)
    and silence the consoles of every rank but 0; True on rank 0 (or a single process)."""
    import os

    if os.environ.get("WORLD_SIZE", "1") in ("", "1"):  # one process: torch not even imported
        return True
    from advlab import distributed

    distributed.init_from_env()
    main = distributed.is_main()
    if not main:  # (a main process keeps its setting: `advlab reproduce` quiets its jobs)
        console.quiet = err_console.quiet = True
    return main


NprocOption = typer.Option(None, "--nproc", min=1, help="Run as N processes on this machine "
                           "through torch.distributed's launcher (torchrun), sharing the work "
                           "(docs/guide-distributed.md).")


def relaunch(nproc: int | None) -> None:
    """``--nproc N`` (N > 1): run this same command line as N processes through torchrun and
    exit with its status; nothing for N = 1 or None."""
    import sys

    if nproc is None or nproc == 1:
        return
    from advlab import distributed

    if _IN_PROCESS:  # a recipe's job: relaunch the job's command, not the recipe's
        args = _IN_PROCESS[-1]
        if distributed.launched() and distributed.world_size() == nproc:
            return  # the recipe already runs as nproc processes: the job runs on them
    else:
        entry = Path(sys.argv[0])  # the advlab script, or advlab/__main__.py (python -m advlab)
        if entry.stem != "advlab" and entry.parent.name != "advlab":
            fail(f"expected --nproc on the advlab command line, got a call from "
                 f"{sys.argv[0]!r}; start it with torchrun -m advlab instead")
        args = sys.argv[1:]
    try:
        code = distributed.launch(nproc, distributed.strip_option(args, "--nproc"))
    except ValueError as e:  # --nproc inside a torchrun job
        fail(str(e))
    raise typer.Exit(code)


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
    runs the group's default command on RUN, while ``advlab eval robust RUN`` runs ``robust``;
    so does an option first (``advlab eval --model SPEC --data FILE``)."""

    default_command = "accuracy"

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and args[0].startswith("-") and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]  # `advlab eval --model SPEC --data FILE`
        return super().parse_args(ctx, args)

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


# --- what a command evaluates: a run of advlab's, or anyone's model and data ----------------

ModelOption = typer.Option(
    None, "--model", help="Your own model instead of RUN: path/to/file.py:factory, "
    "package.module:factory (called with no arguments, returns an nn.Module) or a TorchScript / "
    "torch.export archive.")
WeightsOption = typer.Option(
    None, "--weights", help="Weights for --model's factory: .safetensors or a PyTorch state "
    "dict (read with torch.load(weights_only=True): no code runs).")
MeanOption = typer.Option(
    None, "--mean", help="--model was trained on normalised inputs: the per-channel mean, e.g. "
    "0.485,0.456,0.406 (in the model's units); normalised inside, attacks stay in pixels.")
StdOption = typer.Option(None, "--std", help="The per-channel std of --mean's normalisation.")
BoundsOption = typer.Option(
    None, "--bounds", help="--model's input range LO,HI, e.g. -1,1 or 0,255 (default 0,1): "
    "--data's float x and the eps given are then in these units (eps / (HI - LO) in pixels).")
OutputKeyOption = typer.Option(
    None, "--output-key", help="--model returns a dict: the key of its logits.")
DataOption = typer.Option(
    None, "--data", help="Your own data: .npz / .pt / .safetensors holding x (N, ...) and y "
    "(N,), or an image folder root/<class>/<image>; every point, in file order, unless --n.")
DatasetOption = typer.Option(
    None, "--dataset", help="A built-in data set for --model (digits, mnist, ...), instead of "
    "--data.")


@dataclass(frozen=True)
class Target:
    """What a command evaluates (``resolve_target``): the model on pixels in [0, 1], the name
    of its data set (a built-in one's, or the data file's), the points, the device."""

    model: Any  # nn.Module: pixels in [0, 1] (B, ...) -> logits (B, K)
    dataset: str  # the built-in data set's name, or the data file's
    data: Any  # TensorSet: x in [0, 1], y
    device: Any  # torch.device
    train_dataset: str | None  # a built-in data set with a training split, None for a file
    record: dict[str, Any]  # what config.yaml and metrics.json say was evaluated
    bounds: tuple[float, float] | None = None  # --bounds: eps given in these units

    def to_pixels(self, eps: Any) -> Any:
        """A budget (a number or a list of them, or None) given in the model's units, in
        pixels: eps / (hi − lo) with ``--bounds``, else unchanged."""
        if eps is None or self.bounds is None:
            return eps
        scale = self.bounds[1] - self.bounds[0]
        return [e / scale for e in eps] if isinstance(eps, list) else eps / scale

    def eps_record(self, eps: Any) -> dict[str, Any]:
        """For config and metrics: the unit of the eps given (``--model``, or a run whose data
        set lives outside the pixel box)."""
        if self.record.get("model") is None and self.bounds is None:
            return {}
        if self.bounds is None:
            return {"eps_unit": "pixels [0, 1]"}
        lo, hi = self.bounds
        return {"eps_unit": f"model units [{lo:g}, {hi:g}]: eps / {hi - lo:g} in pixels [0, 1]",
                "eps_given": eps, "eps_pixels": self.to_pixels(eps)}

    def eps_note(self, eps: Any) -> str | None:
        """One printed line saying how the eps given were converted (None without bounds)."""
        if self.bounds is None or eps is None:
            return None
        lo, hi = self.bounds
        values = eps if isinstance(eps, list) else [eps]
        pairs = ", ".join(f"{e:g} -> {p:.4g}" for e, p in zip(values, self.to_pixels(values),
                                                                strict=True))
        where = ("--bounds" if self.record.get("model") is not None
                 else "the data set's declared domain")
        return (f"eps {pairs}: given in the data's units [{lo:g}, {hi:g}] ({where}), "
                f"attacked in [0, 1] as eps / {hi - lo:g}")


def to_unit_set(ds: Any, box: tuple[float, float]) -> Any:
    """The data set ``ds`` with x mapped from [lo, hi] to [0, 1] (values outside the box are
    refused with the box named)."""
    from advlab.data.base import TensorSet

    lo, hi = box
    x = ds.x
    if x.numel() and (float(x.min()) < lo or float(x.max()) > hi):
        raise ValueError(f"expected {ds.info.name} inputs inside its declared domain "
                         f"[{lo:g}, {hi:g}], got values in [{float(x.min()):.4g}, "
                         f"{float(x.max()):.4g}]")
    return TensorSet((x - lo) / (hi - lo), ds.y, ds.info, ds.split)


def parse_bounds(spec: str | None) -> tuple[float, float] | None:
    """``--bounds LO,HI`` as (lo, hi) with lo < hi; None when not given."""
    if spec is None:
        return None
    values = parse_floats(spec, "--bounds")
    if len(values) != 2 or not values[0] < values[1]:
        raise ValueError(f"expected --bounds LO,HI with LO < HI (e.g. -1,1 or 0,255), "
                         f"got {spec!r}")
    return values[0], values[1]


def run_domain(run: Path | None) -> str | None:
    """``"LO,HI"`` when RUN's data set declares inputs outside the pixel box (the 2-D toys:
    ``DatasetInfo.bounds``), else None. The command then reads ε in the data's units and
    attacks the model through ``advlab.wrap(model, bounds=...)``, as with ``--bounds``."""
    if run is None:
        return None
    from advlab import data
    from advlab.weights import read_model_meta

    try:
        name = read_model_meta(run).get("dataset")
    except (ValueError, FileNotFoundError):  # resolve_target reports what is wrong with RUN
        return None
    if not name or name not in data.available():
        return None
    inf = data.info(name)
    return None if inf.unit_box else f"{inf.bounds[0]},{inf.bounds[1]}"


def eps_in_pixels(eps: Any, bounds: str | None) -> Any:
    """A budget (a number, a list of them, or None) given in the units of ``--bounds LO,HI``,
    in pixels [0, 1]: eps / (HI − LO). Unchanged without ``--bounds``. Commands convert before
    checking a budget, so that the checks (an linf eps < 1, ...) see pixels."""
    box = parse_bounds(bounds)
    if eps is None or box is None:
        return eps
    scale = box[1] - box[0]
    return [e / scale for e in eps] if isinstance(eps, list) else eps / scale


def _check_target_options(run: Path | None, model: str | None, given: dict[str, Any],
                          data_file: Path | None, dataset: str | None) -> None:
    """The combinations of RUN, --model and their options that make sense."""
    if run is not None and model is not None:
        raise ValueError(f"expected either RUN (an advlab classifier run) or --model SPEC (your "
                         f"own model), got both: {run} and --model {model}")
    if run is None and model is None:
        raise ValueError("expected RUN (an advlab classifier run directory) or --model SPEC "
                         "(your own model), got neither")
    if run is not None:
        extra = [k for k, v in given.items() if v is not None]
        if dataset is not None:
            extra.append("--dataset")
        if extra:
            raise ValueError(f"{', '.join(extra)} go with --model SPEC, not with RUN (a run "
                             f"knows its model, inputs and data set; --data FILE may replace "
                             f"its data)")
    elif (data_file is None) == (dataset is None):
        raise ValueError(f"expected --model with one source of points, --data FILE or "
                         f"--dataset NAME, got {'both' if data_file else 'neither'}")


def _probe(model: Any, ds: Any, dev: Any, label: str) -> int:
    """Run the model on the first two points: shapes and outputs checked before any run
    directory exists. Returns K, the number of logits."""
    import torch

    from advlab.external import one_line

    x = ds.x[:2].to(dev)
    modules = list(model.modules())
    flags = [m.training for m in modules]
    try:
        model.eval()
        with torch.no_grad():
            out = model(x)
    except ValueError:
        raise  # the wrapper's own messages (a dict output without --output-key, ...)
    except Exception as e:
        raise ValueError(f"the model fails on the points of {label}, x {tuple(ds.x.shape)}: "
                         f"{one_line(e)}") from e
    finally:
        for m, flag in zip(modules, flags, strict=True):
            m.training = flag
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"expected the model to return logits (B, K) on {label}, got {shape}")
    k = out.shape[1]
    if int(ds.y.max()) >= k:
        raise ValueError(f"expected the labels of {label} in [0, {k - 1}] (the model has {k} "
                         f"logits), got a label {int(ds.y.max())}")
    return k


def resolve_target(run: Path | None, *, model: str | None = None, weights: Path | None = None,
                   mean: str | None = None, std: str | None = None, bounds: str | None = None,
                   output_key: str | None = None, data_file: Path | None = None,
                   dataset: str | None = None, split: str = "test", n: int | None = None,
                   default_n: int | None = None, seed: int = 0, device: str = "auto") -> Target:
    """The model, data and device a command evaluates: a classifier run of advlab's (RUN), or
    ``--model SPEC`` (+ ``--weights``, ``--mean``/``--std``, ``--bounds``, ``--output-key``),
    evaluated on ``--data FILE`` or a built-in ``--dataset`` (RUN's own data set by default).

    ``n`` points are drawn (seeded) when given; else ``default_n`` for a built-in data set and
    every point of a data file. Every check, a forward pass on two points included, happens
    here: a command calls this before it creates its run directory.
    """
    from advlab import data
    from advlab.data.files import load_data_file, with_num_classes
    from advlab.device import resolve_device
    from advlab.external import describe_spec, load_external_model
    from advlab.weights import load_model, read_model_meta
    from advlab.wrapping import wrap

    if n is not None and n < 1:
        raise ValueError(f"expected --n >= 1, got {n}")
    given = {"--weights": weights, "--mean": mean, "--std": std, "--bounds": bounds,
             "--output-key": output_key}
    _check_target_options(run, model, given, data_file, dataset)
    box = parse_bounds(bounds)
    mean_v = parse_floats(mean, "--mean") if mean is not None else None
    std_v = parse_floats(std, "--std") if std is not None else None
    dev = resolve_device(device)
    if run is not None:
        net = load_model(run, dev)
        name = read_model_meta(run).get("dataset")
        if not name:
            raise ValueError(f"{run}: the model file does not name its data set")
        record: dict[str, Any] = {"source_run": str(run)}
        train_dataset = name
        domain = parse_bounds(run_domain(run))
        if domain is not None:  # e.g. 2-D toy points: attacked in [0, 1] through the wrapper
            net, box = wrap(net, bounds=domain), domain
            record["bounds"] = list(domain)
    else:
        net = wrap(load_external_model(model, weights, dev), mean=mean_v, std=std_v,
                   bounds=box, output=output_key)
        record = {"source_run": None, "model": model, "model_kind": describe_spec(model),
                  "weights": str(weights) if weights else None,
                  "bounds": list(box) if box else None, "mean": mean_v, "std": std_v,
                  "output_key": output_key}
        name = dataset
        train_dataset = dataset
    if data_file is not None:
        ds = load_data_file(data_file, box)
        label = ds.info.name if run is None else name
        record["data"] = str(data_file)
        train_dataset = name if run is not None else None
    else:
        ds = data.load(name, split)
        label = name
        if box is not None and run is not None:  # a run's own data in its declared domain
            ds = to_unit_set(ds, box)
    if run is None or data_file is not None:
        k = _probe(net, ds, dev, str(data_file or name))
        if data_file is not None:
            ds = with_num_classes(ds, k)
    n = n if n is not None else (None if data_file is not None else default_n)
    if n is not None and n < len(ds):
        ds = data.subset(ds, n, seed=seed)
    return Target(net, label, ds, dev, train_dataset, record, box)


def key_values(items: list[str], option: str) -> dict[str, object]:
    """``["eps=0.3", "random_start=false"]`` -> ``{"eps": 0.3, "random_start": False}`` (YAML
    scalars: numbers, booleans, strings)."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{option}: expected key=value, got {item!r}")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out
