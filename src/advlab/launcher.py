"""``--nproc N``: torch.distributed's launcher (torchrun) without its report of a failed run.

``python -m advlab.launcher ARGS`` takes torchrun's arguments. When a process fails, each one
has already printed its own error (a one-line message for a user error); torchrun would add a
traceback of its own and a failure table. This prints one line naming the ranks that failed
and exits with the first failure's status (2 for a user error, as a single process would).
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # the launcher logs every failed process at ERROR level: the processes said why already
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as e:
        rank, first = e.get_first_failure()
        ranks = ", ".join(str(r) for r in sorted(e.failures))
        code = first.exitcode if isinstance(first.exitcode, int) and first.exitcode > 0 else 1
        print(f"advlab --nproc: process(es) {ranks} failed; the first, rank {rank}, exited "
              f"with status {first.exitcode}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
