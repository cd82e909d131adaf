"""Run a recipe: each job as the ``advlab`` command it names, into a sub-run of one directory.

The jobs go through the command line's own commands (in this process), so a recipe job and the
same command typed by hand check the same options, write the same run directory and resume the
same way. The recipe's directory holds ``config.yaml`` (the recipe and ``--quick``),
``jobs.json`` (each finished job: its command line and time), one sub-directory per job,
``metrics.json`` (the verdicts: the source's numbers beside advlab's) and ``report.html``.

With ``resume=True`` the finished jobs are not redone; an unfinished training job continues
from its last checkpoint; any other unfinished job starts again.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from advlab import distributed
from advlab.io import write_text
from advlab.recipes import Recipe, RecipeError, argv, metric, substitute
from advlab.runs import RunDir, new_run_dir

log = logging.getLogger(__name__)
JOBS = "jobs.json"


def invoke(args: list[str]) -> int:
    """Run ``advlab ARGS`` in this process; its exit status (0: success)."""
    import typer
    from typer import Exit

    from advlab.cli import report_cmd
    from advlab.cli.common import _IN_PROCESS, _VERBOSE, console
    from advlab.cli.main import app

    depth, quiet = len(report_cmd._STACK), console.quiet
    console.quiet = quiet or not _VERBOSE["on"]  # each job's tables: in its report (-v: here)
    _IN_PROCESS.append(list(args))  # what a job's --nproc relaunches
    try:
        rv = typer.main.get_command(app).main(args, prog_name="advlab", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except Exit as e:
        return e.exit_code
    except Exception as e:  # a usage error (a bad option in the recipe): click's message
        show = getattr(e, "show", None)
        if show is None or not hasattr(e, "exit_code"):
            raise
        show()
        return e.exit_code
    finally:
        console.quiet = quiet
        _IN_PROCESS.pop()
        del report_cmd._STACK[depth:]  # a failed command leaves its collection behind


def _accepts(command: str) -> set[str]:
    """The long options the command ``command`` ("train classifier", ...) takes."""
    import typer

    from advlab.cli.main import app

    cmd = typer.main.get_command(app)
    ctx = cmd.make_context("advlab", ["--help"], resilient_parsing=True)
    for part in command.split():
        cmd = cmd.get_command(ctx, part)
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RecipeError(f"{path}: cannot be read ({e})") from None


class _Lookup:
    """``{job}`` and ``{job:path}`` of a recipe run: run directories and their numbers."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, job: str, path: str | None) -> Any:
        if path is None:
            return str(self.root / job)
        m = self.root / job / "metrics.json"
        if not m.is_file():
            raise RecipeError(f"job {job!r} has no metrics.json yet ({m})")
        value = metric(_read_json(m), path, f"job {job!r}")
        if isinstance(value, bool):  # a verdict of the run (reliable): 1 or 0
            value = float(value)
        if not isinstance(value, int | float):
            raise RecipeError(f"job {job!r}: {path!r} is {value!r}, not a number")
        return repr(float(value))


def check_data(recipe: Recipe) -> None:
    """Every data set the recipe reads is where advlab looks (one clear error otherwise)."""
    from advlab import data

    for name in recipe.data:
        data.load(name, "test")


def _start(recipe: Recipe, out: str | Path | None, quick: bool, resume: bool,
           device: str) -> RunDir:
    config = {"command": "reproduce", "recipe": recipe.summary(), "quick": quick,
              "device": device}
    if resume:
        if out is None:
            raise ValueError("--resume needs --out DIR naming the recipe run to continue")
        saved_path = Path(out) / "config.yaml"
        if not saved_path.is_file():
            raise ValueError(f"--resume: {out} holds no recipe run (no config.yaml); run it "
                             f"without --resume")
        saved = RunDir(Path(out)).read_config()
        was = (saved.get("recipe") or {}).get("name"), saved.get("quick")
        if was != (recipe.name, quick):
            raise ValueError(f"--resume: {out} is a run of recipe {was[0]!r} (quick={was[1]}), "
                             f"not {recipe.name!r} (quick={quick})")
    command = "demo" if recipe.name == "demo" else f"reproduce-{recipe.name}"  # runs/demo-<time>
    run = new_run_dir(command, out, exist_ok=resume, resumable=resume)
    run.write_config(config)
    return run


def run_recipe(recipe: Recipe, out: str | Path | None = None, *, quick: bool = False,
               resume: bool = False, device: str = "auto", progress: bool = True,
               only: Sequence[str] | None = None,
               echo: Callable[[str], None] = print) -> tuple[Path, dict[str, Any]]:
    """Run every job of ``recipe`` (not already finished) and judge its verdicts.

    Returns the recipe's run directory and its metrics (``verdicts``, ``jobs``, ``seconds``).
    A failing job raises ``RecipeError`` naming it and the command to fix; what the finished
    jobs wrote stays, and ``resume=True`` (``--resume --out DIR``) continues from there.
    ``only``: run just these jobs (their inputs must be finished or among them), in a new
    run or with ``resume`` in an existing one; two processes may run
    different jobs of one recipe directory at once (``jobs.json`` is re-read before each job
    and merged when written), and a last call without ``only`` judges every verdict.
    """
    from advlab.device import resolve_device
    from advlab.weights import library_versions

    for name in only or ():
        recipe.job(name)  # an unknown name: the error lists the recipe's jobs
    resolve_device(device)
    check_data(recipe)
    run = _start(recipe, out, quick, resume, device)
    root = run.path
    state_file = root / JOBS

    def read_state() -> dict[str, Any]:
        return _read_json(state_file) if state_file.is_file() else {}

    state = read_state()
    lookup = _Lookup(root)
    t_start = time.perf_counter()
    for i, job in enumerate(recipe.jobs, 1):
        where = root / job.name
        state = {**state, **read_state()}  # jobs another process finished meanwhile
        done = state.get(job.name, {})
        if done.get("status") == "done" and (where / "metrics.json").is_file():
            echo(f"[{i}/{len(recipe.jobs)}] {job.name}: finished earlier "
                 f"({done.get('seconds', 0):.0f} s), kept")
            continue
        if only and job.name not in only:
            echo(f"[{i}/{len(recipe.jobs)}] {job.name}: not in --only, skipped")
            continue
        accepts = _accepts(job.command)
        options = substitute(job.settings(quick), lookup)
        if "--device" in accepts:
            options.setdefault("device", device)
        if "--progress" in accepts:
            options.setdefault("progress", progress)
        args = argv(job, options, str(root / job.run) if job.run else None)
        if job.config:  # the settings without an option: a --config file beside the sub-run
            cfg = root / "configs" / f"{job.name}.yaml"
            if distributed.is_main():
                cfg.parent.mkdir(exist_ok=True)
                write_text(cfg, yaml.safe_dump(json.loads(json.dumps(dict(job.config))),
                                               sort_keys=False))
            args += ["--config", str(cfg)]
        args += ["--out", str(where)]
        if where.exists() and any(where.iterdir()):  # an unfinished job of an earlier try
            if job.resumable and any(where.glob("checkpoint*")):
                args.append("--resume")
            elif distributed.is_main():
                shutil.rmtree(where)
        distributed.barrier()  # every rank sees the same files before the job starts
        echo(f"[{i}/{len(recipe.jobs)}] {job.name}: advlab {shlex.join(args)}")
        t0 = time.perf_counter()
        code = invoke(args)
        seconds = time.perf_counter() - t0
        if distributed.active():  # one verdict for all ranks, once rank 0 has written
            distributed.barrier()
            code = max(distributed.all_gather_object(code))
            seconds = distributed.broadcast_object(seconds)
        if code != 0 or not (where / "metrics.json").is_file():
            raise RecipeError(f"job {job.name!r} of recipe {recipe.name!r} failed (exit "
                              f"{code}): advlab {shlex.join(args)}; the jobs before it are "
                              f"kept, continue with --resume --out {root}")
        state = {**state, **read_state(),
                 job.name: {"status": "done", "seconds": seconds, "argv": ["advlab", *args]}}
        run.write_metrics(state, JOBS)  # rank 0 alone writes
    verdicts = judge(recipe, lookup)
    metrics = {"recipe": recipe.name, "title": recipe.title, "source": recipe.source,
               "quick": quick, "root": str(root), "verdicts": verdicts,
               "within": sum(1 for v in verdicts if v["within"]),
               "judged": sum(1 for v in verdicts if v["within"] is not None),
               "jobs": {name: {"seconds": s.get("seconds"), "command": shlex.join(s["argv"])}
                        for name, s in state.items()},
               "seconds": sum(s.get("seconds", 0.0) for s in state.values()),
               "seconds_this_call": time.perf_counter() - t_start,
               "versions": library_versions()}
    run.write_metrics(metrics)
    return root, metrics


def judge(recipe: Recipe, lookup: Callable[[str, str | None], Any]) -> list[dict[str, Any]]:
    """The verdict rows: quantity, source, advlab, tolerance, within, note."""
    rows = []
    for v in recipe.verdicts:
        note = v.note
        try:
            value = substitute(v.value, lookup)
            value = float(value)
        except (RecipeError, ValueError, TypeError, ZeroDivisionError) as e:
            value, note = None, f"{note}; not measured: {e}".lstrip("; ")
        rows.append({"quantity": v.quantity, "source": v.source, "advlab": value,
                     "tolerance": v.tolerance_text(), "within": v.judge(value), "note": note})
    return rows


__all__ = ["check_data", "invoke", "judge", "run_recipe"]
