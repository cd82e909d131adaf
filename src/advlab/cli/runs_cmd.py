"""``advlab runs list|show|compare|best``: find, inspect and rank the runs under a directory.

The index (``<root>/index.sqlite``, ``advlab.runindex``) is refreshed from the run directories
at every call; the directories stay the source of truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from advlab.cli.common import console as _console
from advlab.cli.common import fail

# tables are not cut to 80 columns when the output goes to a file or a pipe
console = _console if _console.is_terminal else Console(width=200)

app = typer.Typer(help="Find, inspect, compare and rank runs (an index of ./runs).",
                  no_args_is_help=True)

RootOption = typer.Option(Path("runs"), "--root", help="Directory of the runs (indexed in "
                          "DIR/index.sqlite).")
CommandOption = typer.Option(None, "--command", "-c", help="Only runs of this command (attack, "
                             "eval-robust, train, 'train classifier', demo ...).")
DatasetOption = typer.Option(None, "--dataset", help="Only runs on this data set.")
ModelOption = typer.Option(None, "--model", help="Only runs of this model (for attacks and "
                           "evaluations: the model of the run attacked).")
DefenseOption = typer.Option(None, "--defense", help="Only runs of this defense.")
WhereOption = typer.Option(None, "--where", "-w", help="A condition on any metric or "
                           "configuration key, e.g. 'robust_accuracy>0.8', 'train.lr=0.001', "
                           "'reliable=true' (repeatable: all must hold).")


def _open(root: Path):
    from advlab.runindex import RunIndex

    return RunIndex(root)


def _fmt(key: str, v: Any) -> str:
    from advlab.report.html import format_number, is_accuracy_key

    if v is None:
        return "[dim]-[/]"
    if isinstance(v, bool):
        return "[green]yes[/]" if v else "[bold red]no[/]"
    if isinstance(v, (int, float)):
        return format_number(v, percent=is_accuracy_key(key.rsplit(".", 1)[-1]))
    text = str(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _filters(command, dataset, model, defense, where) -> dict[str, Any]:
    return {"command": command, "dataset": dataset, "model": model, "defense": defense,
            "where": where or []}


@app.command("list")
def list_runs(
    root: Path = RootOption,
    command: str = CommandOption,
    dataset: str = DatasetOption,
    model: str = ModelOption,
    defense: str = DefenseOption,
    where: list[str] = WhereOption,
    sort: str = typer.Option(None, "--sort", "-s", help="Sort by a field (created, name, "
                             "command ...) or any metric [created]."),
    desc: bool = typer.Option(False, "--desc", help="Largest (or newest) first."),
    limit: int = typer.Option(None, "--limit", "-n", min=1, help="At most this many runs."),
    metric: list[str] = typer.Option(None, "--metric", "-m", help="Add a column with this "
                                     "metric (repeatable)."),
) -> None:
    """The runs under --root, filtered and sorted, one line each."""
    from advlab.runindex import FIELDS, Condition, headline, when

    try:
        conds = [Condition.parse(w) for w in where or []]
        with _open(root) as index:
            runs = index.select(**_filters(command, dataset, model, defense, conds), sort=sort,
                                descending=desc, limit=limit)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    extra = [k for k in dict.fromkeys([*(metric or []), *(c.key for c in conds),
                                       *([sort] if sort else [])])
             if k not in ("robust_accuracy", *FIELDS)]
    rows = [(r, headline(r)) for r in runs]
    columns = {  # a column only when some run has a value for it
        "dataset": lambda r, h: r.dataset, "model": lambda r, h: r.model,
        "defense": lambda r, h: r.defense, "attack": lambda r, h: r.attack,
        "accuracy": lambda r, h: h["accuracy"],
        "robust_accuracy": lambda r, h: h["robust_accuracy"],
        "reliable": lambda r, h: h["reliable"],
        **{k: (lambda r, h, k=k: r.value(k)) for k in extra}}
    shown = {k: f for k, f in columns.items() if any(f(r, h) is not None for r, h in rows)}
    table = Table(title=f"{len(runs)} run{'s' if len(runs) != 1 else ''} under {root}")
    table.add_column("run", overflow="fold")
    table.add_column("command", overflow="fold")
    for k in shown:
        table.add_column("robust" if k == "robust_accuracy" else k, overflow="fold")
    table.add_column("created", no_wrap=True)
    for r, h in rows:
        table.add_row(r.name, r.command or "?", *(_fmt(k, f(r, h)) for k, f in shown.items()),
                      when(r.created))
    console.print(table)


def _show(r) -> None:
    from advlab.report.html import REPORT
    from advlab.runindex import flat_config, flat_scalars, when

    console.print(f"[bold]{r.name}[/]  {r.command or '?'}  ({when(r.created)})", highlight=False)
    console.print(f"[dim]{r.path}[/]", highlight=False, soft_wrap=True)
    for note in r.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    config = Table("key", "value", title="configuration")
    for k, v in flat_config(r.config):
        config.add_row(k, _fmt(k, v) if v is not None else "[dim]null[/]")
    if r.config:
        console.print(config)
    metrics = Table("metric", "value", title="headline metrics")
    for k, v in r.metrics.items():
        if isinstance(v, (int, float, str, bool)) and k not in ("command",):
            metrics.add_row(k, _fmt(k, v))
    for k, v in flat_scalars({k: v for k, v in r.metrics.items()
                              if k in ("attacks", "threat", "robust_accuracy_after")}):
        metrics.add_row(k, _fmt(k, v))
    console.print(metrics)
    checks = r.metrics.get("checks")
    if isinstance(checks, list) and checks:
        failed = [c.get("name") for c in checks if isinstance(c, dict) and not c.get("passed")]
        console.print("soundness checks: " + (f"[bold red]FAILED {', '.join(failed)}[/]"
                                              if failed else "[green]all passed[/]"))
    if (r.path / REPORT).is_file():
        console.print(f"report: {r.path / REPORT}", highlight=False, soft_wrap=True)


@app.command()
def show(run: str = typer.Argument(..., help="A run: its name under --root, its path, or a "
                                   "unique part of its name."),
         root: Path = RootOption) -> None:
    """A run's configuration and headline metrics."""
    try:
        with _open(root) as index:
            r = index.get(run)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    _show(r)


@app.command()
def compare(
    runs: list[str] = typer.Argument(..., help="Two or more runs (names, paths or unique "
                                     "parts of names)."),
    root: Path = RootOption,
    metric: list[str] = typer.Option(None, "--metric", "-m", help="Only metrics whose key "
                                     "starts with this (repeatable)."),
    all_keys: bool = typer.Option(False, "--all", help="Every scalar metric, also those only "
                                  "some of the runs have [the metrics they all have]."),
) -> None:
    """Metrics side by side, and the configuration keys that differ."""
    from advlab.runindex import ABSENT, config_differences

    try:
        if len(runs) < 2:
            raise ValueError(f"expected at least two runs to compare, got {len(runs)}")
        with _open(root) as index:
            records = [index.get(r) for r in runs]
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    names = [r.name for r in records]
    table = Table("metric", *names, title="metrics")
    values = [dict(r.metric_items()) for r in records]
    keys = list(dict.fromkeys(k for v in values for k in v))
    if not all_keys and not metric:
        keys = [k for k in keys if all(k in v for v in values)]
    if metric:
        keys = [k for k in keys if any(k.startswith(m) for m in metric)]
    for k in keys:
        row = [v.get(k) for v in values]
        if all(isinstance(x, str) for x in row if x is not None) and \
                len({x for x in row if x is not None}) <= 1 and k not in ("dataset",):
            continue  # identical text (a path, a name): not a difference of results
        table.add_row(k, *(_fmt(k, x) for x in row))
    console.print(table)
    diffs = config_differences(records)
    if diffs:
        cfg = Table("configuration", *names, title="configuration differences")
        for k, vals in diffs:
            cfg.add_row(k, *("[dim]absent[/]" if v is ABSENT else "null" if v is None
                             else _fmt(k, v) for v in vals))
        console.print(cfg)
    else:
        console.print("configuration: identical")


@app.command()
def best(
    metric: str = typer.Option(..., "--metric", "-m", help="The metric to rank by, e.g. "
                               "robust_accuracy, test_acc, attacks.apgd-ce.robust_accuracy."),
    lowest: bool = typer.Option(False, "--lowest", help="The smallest value wins (losses, "
                                "distances)."),
    root: Path = RootOption,
    command: str = CommandOption,
    dataset: str = DatasetOption,
    model: str = ModelOption,
    defense: str = DefenseOption,
    where: list[str] = WhereOption,
) -> None:
    """The run with the best value of a metric (the highest unless --lowest)."""
    try:
        with _open(root) as index:
            r = index.best(metric, lowest=lowest,
                           **_filters(command, dataset, model, defense, where))
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    console.print(f"best by {metric} ({'lowest' if lowest else 'highest'}): [bold]{r.name}[/] "
                  f"with {_fmt(metric, r.value(metric))}", highlight=False)
    _show(r)
