"""``python -m advlab``: the command line; what ``torchrun -m advlab`` starts in each process.

Under torchrun (``WORLD_SIZE`` > 1 in the environment) the process first joins the process
group (``advlab.distributed.init_from_env``), and leaves it when the command ends; a plain
``python -m advlab`` stays one process.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    if os.environ.get("WORLD_SIZE", "1") in ("", "1"):
        from advlab.cli.main import app

        app(prog_name="advlab")
        return
    from advlab import distributed  # torch is imported only under torchrun

    distributed.init_from_env()
    from advlab.cli.main import app

    try:
        app(prog_name="advlab")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    # leave the group, then end without the interpreter's teardown: gloo's threads can abort
    # it now and then ("terminate called without an active exception") after the command
    # has written everything
    distributed.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
