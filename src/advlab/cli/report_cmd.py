"""``advlab report RUN [RUN...] [-o report.html]``: one self-contained HTML report of runs.

Also the hooks by which every command that writes a run directory ends by writing its
``report.html`` (``collect`` and ``write_collected``, the callbacks of the ``advlab`` group).
"""

from __future__ import annotations

from pathlib import Path

import typer

from advlab.cli.common import console, err_console, fail

# the run directories each running command has made: a stack, since `advlab reproduce` runs
# other commands inside its own
_STACK: list[list[Path]] = []


def collect(ctx: typer.Context) -> None:
    """Before a command: note every run directory it makes (``new_run_dir``) until it ends."""
    from advlab.report.html import collect_runs

    _STACK.append(ctx.with_resource(collect_runs()))


def write_collected(result: object = None, **_: object) -> object:
    """After a command that succeeded: write ``report.html`` into every run directory it made
    and print the outermost ones' paths (the last lines of ``advlab demo``). Best effort: a
    report that cannot be written is a warning; the run's results stay as they are."""
    from advlab.report.html import write_reports

    runs = _STACK.pop() if _STACK else []
    if runs:
        def warn(message: str) -> None:
            err_console.print(f"[bold yellow]warning:[/] {message}", highlight=False)

        for report in write_reports(runs, warn=warn):
            console.print(f"report: {report}", soft_wrap=True, highlight=False)
    return result


def report_command(
    runs: list[Path] = typer.Argument(..., help="Run directories (a directory holding runs, "
                                      "such as a demo's, reports every one of them)."),
    output: Path = typer.Option(None, "--output", "-o", help="The HTML file to write "
                                "[RUN/report.html for one run, else ./report.html]."),
    title: str = typer.Option(None, help="Title of the page [advlab report: the run names]."),
) -> None:
    """Write one self-contained HTML report (figures inlined, no external resources) of runs."""
    from advlab.report.html import REPORT, report_runs

    if output is None:
        output = runs[0] / REPORT if len(runs) == 1 else Path(REPORT)
    try:
        path = report_runs(runs, output, title=title)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    console.print(f"report: {path}", soft_wrap=True, highlight=False)
