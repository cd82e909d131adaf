"""``python -m advlab``: the command line; what ``torchrun -m advlab`` starts in each process.

Under torchrun (``WORLD_SIZE`` > 1 in the environment) the process first joins the process
group (``advlab.distributed.init_from_env``); a plain ``python -m advlab`` stays one process.
"""

from __future__ import annotations

import os


def main() -> None:
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):  # torch is imported only then
        from advlab import distributed

        distributed.init_from_env()
    from advlab.cli.main import app

    app(prog_name="advlab")


if __name__ == "__main__":
    main()
