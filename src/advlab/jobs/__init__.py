"""One application layer: every advlab command as a job (a frozen dataclass of its options) and
one function that runs a job into a run directory.

A run function checks every option (loading the model and data where that is what checking
means) before it creates the run directory, then writes ``config.yaml`` (the job's
``to_dict``, with what the run resolved), logs to ``log.txt`` and saves ``metrics.json`` with
the library versions; it returns ``(RunDir, metrics)``. The command line parses its options,
builds the job and prints what the run function returns::

    >>> from advlab.jobs import AttackJob, job_from_config, run_job
    >>> run, metrics = run_job("attack", AttackJob(run="runs/mlp", attack="fgsm",
    ...                                            eps=(0.1,)), "runs/fgsm")  # doctest: +SKIP
    >>> job = job_from_config(run.read_config())  # the job that made the run  # doctest: +SKIP

``JOBS`` maps each job's name (the command's words) to its ``(job class, run function)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from advlab.registry import Registry


class JobKind(NamedTuple):
    job: type  # the frozen dataclass of the job's options
    run: Callable[..., tuple[Any, dict[str, Any]]]  # run(job, out=None, **options)


# where each job lives: imported on first use, so a command loads only its own job's modules
_WHERE = {
    "train classifier": ("advlab.train.classifier", "ClassifierJob", "train_classifier"),
    "train generative": ("advlab.generative.job", "GenerativeJob", "train_generative"),
    "defend latent": ("advlab.defenses.jobs", "LatentJob", "train_latent_run"),
    "attack": ("advlab.jobs.attack", "AttackJob", "run_attack"),
    "eval accuracy": ("advlab.jobs.evaluate", "EvalAccuracyJob", "run_eval_accuracy"),
    "eval robust": ("advlab.jobs.evaluate", "EvalRobustJob", "run_eval_robust"),
    "eval needed": ("advlab.jobs.evaluate", "EvalNeededJob", "run_eval_needed"),
}


class JobRegistry(Registry[JobKind]):
    """Job name -> ``JobKind(job class, run function)``; ``get`` imports the job's module."""

    def get(self, name: str) -> JobKind:
        entry = super().get(name)
        return entry() if not isinstance(entry, JobKind) else entry


def _loader(module: str, job: str, run: str) -> Callable[[], JobKind]:
    def load() -> JobKind:
        mod = importlib.import_module(module)
        return JobKind(getattr(mod, job), getattr(mod, run))

    return load


JOBS = JobRegistry("job")
for _name, (_module, _job, _run) in _WHERE.items():
    JOBS.add(_name, _loader(_module, _job, _run))

# config.yaml's ``command`` where it is not the job's name
_COMMANDS = {"eval": "eval accuracy"}


def run_job(name: str, job: Any, out: str | Path | None = None,
            **options: Any) -> tuple[Any, dict[str, Any]]:
    """Run ``job`` (an instance of ``JOBS.get(name).job``) into the run directory ``out``
    (default ``runs/<command>-<time>``); ``options`` go to the run function (``progress``,
    ``resume`` for the training jobs, ...). Returns the run directory and the metrics."""
    kind = JOBS.get(name)
    if not isinstance(job, kind.job):
        raise ValueError(f"expected a {kind.job.__name__} for the job {name!r}, got "
                         f"{type(job).__name__}")
    return kind.run(job, out, **options)


def job_name(config: dict[str, Any]) -> str:
    """The name in ``JOBS`` of the job a run's config.yaml records (its ``command`` key)."""
    if not isinstance(config, dict):
        raise ValueError(f"expected a run's configuration (a mapping), got "
                         f"{type(config).__name__}")
    command = config.get("command")
    name = _COMMANDS.get(command, command)
    if not isinstance(name, str) or name not in JOBS:
        raise ValueError(f"expected the configuration of a job ({', '.join(JOBS)}), got "
                         f"command {command!r}")
    return name


def job_from_config(config: dict[str, Any]) -> Any:
    """The job a run's config.yaml records (``RunDir.read_config()``): ``run_job(job_name(
    config), job_from_config(config), out)`` runs it again. Options a run does not record
    (the device, and a few noted on each job's ``from_dict``) take their defaults."""
    name = job_name(config)
    cls = JOBS.get(name).job
    rest = {k: v for k, v in config.items() if k != "command"}
    if name == "train classifier":
        if rest.get("defense") is not None:
            raise ValueError(f"a run trained with the defense {rest['defense']!r}: its "
                             f"objective is not part of ClassifierJob; rerun it with `advlab "
                             f"train classifier --config CONFIG`, or pass train_classifier "
                             f"objective=advlab.defenses.create_objective(...)")
        rest.pop("defense", None)
        rest.pop("defense_config", None)
    elif name == "train generative":
        rest.pop("model_spec", None)  # what the model resolved to, not an option
    elif name == "defend latent":  # a job without from_dict: its fields, the data set aside
        from advlab.config import from_dict

        rest.pop("dataset", None)  # the generative run's
        return from_dict(cls, rest)
    return cls.from_dict(rest)


_EXPORTS = {job: module for module, job, _ in _WHERE.values()} | {
    run: module for module, _, run in _WHERE.values()} | {"TargetOptions": "advlab.jobs.target"}


def __getattr__(name: str) -> Any:
    """``AttackJob``, ``run_attack``, ... imported on first use (``advlab.jobs`` itself stays
    light: the command line imports only the job it runs)."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'advlab.jobs' has no attribute {name!r}")


__all__ = ["JOBS", "AttackJob", "ClassifierJob", "EvalAccuracyJob", "EvalNeededJob",
           "EvalRobustJob", "GenerativeJob", "JobKind", "LatentJob", "TargetOptions",
           "job_from_config", "job_name", "run_attack", "run_eval_accuracy", "run_eval_needed",
           "run_eval_robust", "run_job", "train_classifier", "train_generative",
           "train_latent_run"]
