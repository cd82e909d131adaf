"""What an evaluation job evaluates: a classifier run of advlab's, or your own model, on points.

``TargetOptions`` holds the options ``advlab attack`` and ``advlab eval accuracy|robust|needed``
share (RUN or ``--model`` with its inputs, ``--data`` or ``--dataset``, the split, the seeded
subset, the device); the jobs of ``advlab.jobs.attack`` and ``advlab.jobs.evaluate`` extend it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advlab.cli.common import Target, parse_bounds, parse_floats, resolve_target, run_domain
from advlab.config import check_types


@dataclass(frozen=True, kw_only=True)
class TargetOptions:
    """The model a job evaluates and the points it evaluates it on (``resolve_target``).

    Either ``run`` (an advlab classifier run directory, or its ``model.safetensors``: the run
    knows its model, inputs and data set; ``data`` may replace its points) or ``model`` (your
    own model, with ``weights``, ``mean``/``std``, ``bounds``, ``output_key``) on ``data`` or a
    built-in ``dataset``.
    """

    run: str | None = None  # classifier run directory (or model.safetensors) of advlab's
    model: str | None = None  # your own model: file.py:factory, package.module:factory, archive
    weights: str | None = None  # weights for model's factory (.safetensors or a state dict)
    mean: tuple[float, ...] | None = None  # model trained on normalised inputs: channel means
    std: tuple[float, ...] | None = None  # ... and standard deviations (in the model's units)
    bounds: tuple[float, float] | None = None  # model's input range: eps and x in these units
    output_key: str | None = None  # the model returns a dict: the key of its logits
    data: str | None = None  # your own points: .npz / .pt / .safetensors, or an image folder
    dataset: str | None = None  # a built-in data set for model (instead of data)
    split: str = "test"  # train | test (of the run's or dataset's data set)
    n: int | None = None  # a seeded random subset of n points (the job says what None means)
    seed: int = 0  # seed of the subset (and of the job's own randomness)
    device: str = "auto"  # auto | cpu | cuda | mps

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # a list given in Python: the tuple a config holds
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        for name in ("run", "weights", "data"):  # a Path given in Python: its text
            if isinstance(getattr(self, name), Path):
                object.__setattr__(self, name, str(getattr(self, name)))
        check_types(self)
        for name in ("mean", "std", "bounds"):
            values = getattr(self, name)
            if values is not None and not all(math.isfinite(v) for v in values):
                raise ValueError(f"expected {name} to hold finite numbers, got {values!r}")
        if self.bounds is not None and not self.bounds[0] < self.bounds[1]:
            raise ValueError(f"expected bounds (lo, hi) with lo < hi (e.g. (-1, 1) or (0, 255)), "
                             f"got {self.bounds!r}")

    def resolve(self, default_n: int | None = None) -> Target:
        """The model, points and device (``advlab.cli.common.resolve_target``): every check, a
        forward pass on two points included; ``n=None`` draws ``default_n`` points of a
        built-in data set and every point of a data file."""
        return resolve_target(_path(self.run), model=self.model, weights=_path(self.weights),
                              mean=_spec(self.mean), std=_spec(self.std),
                              bounds=_spec(self.bounds), output_key=self.output_key,
                              data_file=_path(self.data), dataset=self.dataset,
                              split=self.split, n=self.n, default_n=default_n, seed=self.seed,
                              device=self.device)

    def units(self) -> str | None:
        """``"LO,HI"``: the units budgets are given in (``bounds``, or the domain a run's data
        set declares outside the pixel box); None for pixels in [0, 1]."""
        return _spec(self.bounds) or run_domain(_path(self.run))

    def target_record(self) -> dict[str, Any]:
        """What config.yaml records of the target, from the options alone (``Target.record``
        once resolved; a run whose data set lives outside the pixel box adds its bounds)."""
        if self.run is not None:
            record: dict[str, Any] = {"source_run": self.run}
        else:
            from advlab.external import describe_spec

            record = {"source_run": None, "model": self.model,
                      "model_kind": describe_spec(self.model) if self.model else None,
                      "weights": self.weights, "bounds": _list(self.bounds),
                      "mean": _list(self.mean), "std": _list(self.std),
                      "output_key": self.output_key}
        if self.data is not None:
            record["data"] = self.data
        return record


def command_line_options(*, run: Path | None, model: str | None, weights: Path | None,
                         mean: str | None, std: str | None, bounds: str | None,
                         output_key: str | None, data: Path | None, dataset: str | None,
                         **rest: Any) -> dict[str, Any]:
    """``TargetOptions`` fields from the command line's options: ``--mean``/``--std``
    ``0.5,0.5,0.5`` and ``--bounds LO,HI`` parsed (errors name the option); ``rest`` (split,
    n, seed, device) as given."""
    return {"run": run, "model": model, "weights": weights, "output_key": output_key,
            "mean": None if mean is None else parse_floats(mean, "--mean"),
            "std": None if std is None else parse_floats(std, "--std"),
            "bounds": parse_bounds(bounds), "data": data, "dataset": dataset, **rest}


def target_options(config: dict[str, Any]) -> dict[str, Any]:
    """The ``TargetOptions`` fields of a run's config.yaml (what ``Target.record`` wrote, the
    data set and split), for a job's ``from_dict``; ``n`` is the job's own affair."""
    run, data = config.get("source_run"), config.get("data")
    out: dict[str, Any] = {"run": run, "data": data, "seed": config.get("seed")}
    if run is None:
        out.update({k: config.get(k) for k in ("model", "weights", "mean", "std", "bounds",
                                               "output_key")})
        if data is None:
            out["dataset"] = config.get("dataset")
    if data is None:  # a data file's points have no split of ours ("file")
        out["split"] = config.get("split")
    return out


def eps_note(record: dict[str, Any], eps: Any) -> str | None:
    """``Target.eps_note`` from what a run recorded (its metrics or config): how the eps given
    were converted to pixels, or None when they were pixels already."""
    bounds = record.get("bounds")
    target = Target(None, record.get("dataset"), None, None, None, record,
                    tuple(bounds) if bounds else None)
    return target.eps_note(eps)


def pixels_to_units(value: Any, record: dict[str, Any]) -> Any:
    """A budget a run recorded in pixels (a number, a list of them or None), back in the units
    it was given in: times hi - lo of the recorded ``bounds`` (unchanged without)."""
    bounds = record.get("bounds")
    if value is None or not bounds:
        return value
    scale = bounds[1] - bounds[0]
    return [_times(v, scale) for v in value] if isinstance(value, list) else _times(value, scale)


def _times(pixels: float, scale: float) -> float:
    """The value given that ``value / scale`` made ``pixels``: the shortest decimal that maps
    back to exactly ``pixels`` (2 rather than 2.0000000000000004 for 2 / 255 * 255)."""
    value = pixels * scale
    for digits in range(1, 18):
        short = float(f"{value:.{digits}g}")
        if short / scale == pixels:
            return short
    return value


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def _spec(values: tuple[float, ...] | None) -> str | None:
    """``(0.5, 0.25)`` -> ``"0.5,0.25"``: the command-line spelling, read back exactly."""
    return None if values is None else ",".join(repr(float(v)) for v in values)


def _list(values: tuple[float, ...] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]
