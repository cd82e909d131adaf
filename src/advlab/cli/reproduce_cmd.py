"""``advlab reproduce NAME [--quick] [--out DIR] [--resume]``: rebuild a published experiment.

``advlab reproduce list`` shows the recipes (``advlab.recipes``) with their time here;
``advlab reproduce show NAME`` prints the commands a recipe runs, to run them by hand.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import typer
from rich.table import Table

from advlab.cli.common import (
    DataDirOption,
    DefaultCommandGroup,
    DeviceOption,
    NprocOption,
    OutOption,
    apply_data_dir,
    console,
    fail,
    relaunch,
    setup_logging,
)


class _RunByDefault(DefaultCommandGroup):
    default_command = "run"


app = typer.Typer(help="Rebuild a paper's table or figure with one command: `advlab reproduce "
                  "NAME` (`advlab reproduce list` shows them).", cls=_RunByDefault,
                  no_args_is_help=True)


def _minutes(recipe, key: str) -> str:
    m = recipe.minutes.get(key)
    return "?" if m is None else f"{m:g} min"


@app.command("list")
def list_command() -> None:
    """The recipes, their source and their time on a 2-core CPU (full and --quick)."""
    from advlab import recipes

    t = Table(title="recipes (advlab reproduce NAME [--quick])")
    t.add_column("name", no_wrap=True)  # a name is what the user types: never cut
    for col in ("reproduces", "data", "full", "quick"):
        t.add_column(col)
    for name in recipes.names():
        r = recipes.load(name)
        t.add_row(name, f"{r.title}\n[dim]{r.source}[/]", ", ".join(r.data) or "-",
                  _minutes(r, "full"), _minutes(r, "quick"))
    console.print(t)


@app.command("show")
def show_command(name: str = typer.Argument(..., help="A recipe (advlab reproduce list)."),
                 quick: bool = typer.Option(False, help="The --quick version's commands.")
                 ) -> None:
    """The recipe's jobs as the advlab commands they run, and the source's numbers."""
    from advlab import recipes

    try:
        r = recipes.load(name)
    except ValueError as e:
        fail(str(e))
    console.print(f"[bold]{r.name}[/]: {r.title}\nsource: {r.source}", highlight=False)
    if r.notes:
        console.print(f"[dim]{r.notes}[/]", highlight=False)
    for job in r.jobs:
        run = f"OUT/{job.run}" if job.run else None
        line = recipes.argv(job, job.settings(quick), run) + ["--out", f"OUT/{job.name}"]
        console.print(f"advlab {shlex.join(line)}", soft_wrap=True, highlight=False)
    if r.verdicts:
        console.print(_verdict_table([{"quantity": v.quantity, "source": v.source,
                                       "advlab": v.value, "tolerance": v.tolerance_text(),
                                       "within": None} for v in r.verdicts]))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _verdict_table(rows: list[dict]) -> Table:
    t = Table(title="source vs advlab")
    for col in ("quantity", "source", "advlab", "tolerance", "within"):
        t.add_column(col)
    for r in rows:
        mark = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}[r["within"]]
        t.add_row(str(r["quantity"]), _fmt(r["source"]), _fmt(r["advlab"]),
                  _fmt(r["tolerance"]), mark)
    return t


@app.command("markdown")
def markdown_command(
    run: Path = typer.Argument(..., help="A recipe run directory (advlab reproduce NAME)."),
    output: Path = typer.Option(None, "--output", "-o", help="Write it to this file "
                                "(docs/benchmarks/recipe-NAME.md is assembled into "
                                "docs/BENCHMARKS.md by `make bench`) [print it]."),
    note: str = typer.Option(None, help="A line to add under the measurement (e.g. the load "
                             "the machine was under)."),
) -> None:
    """A recipe run as a markdown section: verdicts, time per job, the commands."""
    from advlab.io import write_text
    from advlab.recipes.markdown import recipe_markdown

    try:
        text = recipe_markdown(run, note=note)
        if output is not None:
            write_text(output, text)
    except (ValueError, OSError) as e:
        fail(str(e))
    if output is None:
        print(text, end="")
    else:
        console.print(f"wrote {output}")


@app.command("run")
def run_command(
    name: str = typer.Argument(..., help="A recipe (advlab reproduce list) or a recipe .yaml."),
    quick: bool = typer.Option(False, help="The same chain on small subsets (about a minute; "
                               "the test suite runs it): checks the recipe, not the numbers."),
    out: Path = OutOption,
    resume: bool = typer.Option(False, help="Continue the recipe run in --out: finished jobs "
                                "are kept, an interrupted training continues."),
    device: str = DeviceOption,
    data_dir: Path = DataDirOption,
    progress: bool = typer.Option(True, help="Show progress bars."),
    only: str = typer.Option(None, help="Run only these jobs (comma-separated); with --resume "
                             "--out, of that run (e.g. two processes on different jobs)."),
    nproc: int = NprocOption,
) -> None:
    """Run a recipe's jobs into one run directory; end with the source's numbers beside
    advlab's and a verdict for each."""
    from advlab import recipes
    from advlab.recipes.runner import run_recipe

    relaunch(nproc)
    setup_logging()
    apply_data_dir(data_dir)
    try:
        recipe = recipes.load(name)
        path, metrics = run_recipe(recipe, out, quick=quick, resume=resume, device=device,
                                   progress=progress,
                                   only=[s.strip() for s in only.split(",")] if only else None,
                                   echo=lambda s: console.print(f"[bold cyan]{s}[/]",
                                                                soft_wrap=True,
                                                                highlight=False))
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    console.print(_verdict_table(metrics["verdicts"]))
    console.print(f"{recipe.name}: {metrics['within']} of {metrics['judged']} judged "
                  f"quantities within tolerance; jobs took {metrics['seconds']:.0f} s"
                  + (" (--quick: small subsets, the numbers are not the source's)"
                     if quick else ""), highlight=False)
    console.print(f"results in [bold]{path}[/]")
