"""`make bench`: run the timing benchmarks and assemble docs/BENCHMARKS.md from the sections.

bench/ holds timings only (ORDER): the training loop against a plain PyTorch loop, the attacks
against torchattacks and Foolbox, AutoAttack against torchattacks', 2 processes against 1. Each
writes docs/benchmarks/NAME.md (--quick: NAME-quick.md, left out). `advlab reproduce markdown
RUN -o docs/benchmarks/recipe-NAME.md` writes a recipe run's section. docs/BENCHMARKS.md is the
timing sections, the recipe sections (in `advlab reproduce list`'s order), then the older ones.
"""

import importlib
import sys

from bench.common import FRAGMENTS, ROOT, cli

ORDER = ["loop", "attacks", "autoattack", "distributed"]
OLDER = ["classifiers", "reproductions", "generative", "defenses", "evaluation"]


def assemble() -> None:
    """Write docs/BENCHMARKS.md: a preface, then the sections in the order described above."""
    from advlab import recipes

    have = {p.stem for p in FRAGMENTS.glob("*.md") if not p.stem.endswith("-quick")}
    parts_of = {name: sorted(s for s in have if s.startswith(f"{name}-")) for name in ORDER}
    first = ([s for name in ORDER for s in (name, *parts_of[name])]  # NAME, then NAME-part
             + [f"recipe-{name}" for name in recipes.names()] + OLDER)
    rest = sorted(have - set(first), key=lambda s: (not s.startswith("recipe-"), s))
    parts = ["# advlab benchmarks\n",
             "Every figure here was measured by the command named in its section, on the machine "
             "named there; nothing is copied or estimated. The timing sections come from `make "
             "bench` (`python -m bench.run`): ratios are measured side by side in one run, "
             "medians over repeated runs. The recipe sections come from `advlab reproduce NAME` "
             "(`advlab reproduce list` shows the recipes).\n"]
    parts += [(FRAGMENTS / f"{s}.md").read_text() for s in first + rest if s in have]
    (ROOT / "docs" / "BENCHMARKS.md").write_text("\n".join(parts))


def main() -> None:
    args = cli(__doc__, only=dict(nargs="*", choices=ORDER, default=None, help="a subset"))
    failed = []
    for name in args.only or ORDER:
        print(f"[bench] {name}", flush=True)
        try:
            importlib.import_module(f"bench.{name}").main(quick=args.quick)
        except SystemExit as e:  # a missing model or data set: the other benchmarks still run
            print(f"[bench] {name} not run: {e.code}", file=sys.stderr)
            failed.append(name)
    assemble()
    if failed:
        sys.exit(f"[bench] not run: {', '.join(failed)}")


if __name__ == "__main__":
    main()
