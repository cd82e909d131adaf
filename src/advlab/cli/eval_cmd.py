"""``advlab eval RUN``: accuracy, per-class accuracy and confusion matrix of a trained model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from advlab.cli.common import (
    DataDirOption,
    DefaultCommandGroup,
    OutOption,
    apply_data_dir,
    console,
    fail,
    setup_logging,
)

app = typer.Typer(help="Evaluate a trained model: `advlab eval RUN`.", cls=DefaultCommandGroup,
                  no_args_is_help=True)


@app.command()
def accuracy(
    run: Path = typer.Argument(..., help="Run directory (or model.safetensors) to evaluate."),
    split: str = typer.Option("test", help="train | test"),
    out: Path = OutOption,
    data_dir: Path = DataDirOption,
) -> None:
    """Accuracy, per-class accuracy and confusion matrix on a split of the run's data set."""
    from advlab import data
    from advlab.runs import new_run_dir
    from advlab.train.classifier import report_classifier
    from advlab.weights import load_model, read_model_meta

    setup_logging()
    apply_data_dir(data_dir)
    try:
        model = load_model(run)
        dataset = read_model_meta(run)["dataset"]
        ds = data.load(dataset, split)
        report = new_run_dir("eval", out)
        metrics = report_classifier(report, model, ds)
        metrics.update({"source_run": str(run), "split": split})
        report.write_metrics(metrics)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    table = Table("class", "accuracy")
    for c, a in metrics["per_class_acc"].items():
        table.add_row(c, f"{a:.4f}")
    table.add_row("[bold]all", f"[bold]{metrics['test_acc']:.4f}")
    console.print(table)
    console.print(f"results in [bold]{report.path}[/]")
