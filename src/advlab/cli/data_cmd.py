"""``advlab data list|info|prepare``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from advlab.cli.common import DataDirOption, apply_data_dir, console, fail, setup_logging

app = typer.Typer(help="List, describe and download data sets.", no_args_is_help=True)


@app.command("list")
def list_() -> None:
    """The data sets advlab knows, with their shapes and whether they need a download."""
    from advlab import data

    table = Table("name", "title", "kind", "shape", "classes", "download")
    for name in data.available():
        i = data.info(name)
        table.add_row(name, i.title, i.kind, "x".join(map(str, i.shape)), str(i.num_classes),
                      "yes" if i.needs_download
                      else "no (local files)" if i.local_only else "no (embedded)")
    console.print(table)


@app.command()
def info(name: str, data_dir: Path | None = DataDirOption) -> None:
    """Where a data set is found, its sizes and its label histogram."""
    from advlab import data

    apply_data_dir(data_dir)
    try:
        i = data.info(name)
        table = Table("split", "examples", "x shape", "range", "label counts")
        for split in ("train", "test"):
            ds = data.load(name, split)
            counts = ds.y.bincount(minlength=i.num_classes).tolist()
            table.add_row(split, str(len(ds)), str(tuple(ds.x.shape)),
                          f"[{ds.x.min().item():.2f}, {ds.x.max().item():.2f}]", str(counts))
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    console.print(f"[bold]{name}[/] ({i.title}): {i.kind}, classes: {', '.join(i.classes)}")
    console.print(table)


@app.command()
def prepare(name: str, data_dir: Path | None = DataDirOption) -> None:
    """Download a data set from its official location (checksums verified) into the data root."""
    from advlab import data

    setup_logging()  # what prepare finds (a local file that failed its checksum) is shown
    apply_data_dir(data_dir)
    try:
        where = data.prepare(name)
    except (ValueError, OSError) as e:
        fail(str(e))
    if where is None:
        console.print(f"{name} needs no download (it is embedded or generated)")
    else:
        console.print(f"{name} ready in {where}")
