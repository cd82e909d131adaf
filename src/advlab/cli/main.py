"""Entry point of the ``advlab`` command."""

from __future__ import annotations

from pathlib import Path

import typer

from advlab import allocator
from advlab.cli import (
    attack_cmd,
    data_cmd,
    defend_cmd,
    eval_cmd,
    report_cmd,
    reproduce_cmd,
    runs_cmd,
    train_cmd,
)
from advlab.cli.common import (
    DeviceOption,
    OutOption,
    fail,
    set_verbose,
)


def _main(ctx: typer.Context,
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the log lines on "
                                       "the console (every run's log.txt has them anyway).")
          ) -> None:
    set_verbose(verbose)
    try:
        allocator.tune()  # freed tensor memory stays in the process (no page faults)
    except ValueError as e:
        fail(str(e))
    report_cmd.collect(ctx)  # every run directory a command makes gets its report.html


app = typer.Typer(help="advlab: generative models, adversarial attacks and defenses on PyTorch.",
                  no_args_is_help=True, add_completion=False,
                  callback=_main, result_callback=report_cmd.write_collected)
app.add_typer(data_cmd.app, name="data")
app.add_typer(train_cmd.app, name="train")
app.add_typer(eval_cmd.app, name="eval")
app.add_typer(defend_cmd.app, name="defend")
app.command("attack")(attack_cmd.attack_command)
app.command("report")(report_cmd.report_command)
app.add_typer(runs_cmd.app, name="runs")
app.add_typer(reproduce_cmd.app, name="reproduce")


@app.command()
def demo(out: Path = OutOption, device: str = DeviceOption,
         quick: bool = typer.Option(False, help="Smaller settings (used by the tests).")) -> None:
    """The main job end to end on the embedded digits data set (no download): the recipe
    `demo` (`advlab reproduce show demo` lists its commands)."""
    reproduce_cmd.run_command("demo", quick=quick, out=out, resume=False, device=device,
                              data_dir=None, progress=not quick, only=None,
                              nproc=None)


if __name__ == "__main__":
    app()
