"""`make bench`: run the benchmarks and assemble docs/BENCHMARKS.md from their sections.

    python -m bench.run [--only NAME ...] [--quick]

Each benchmark module writes docs/benchmarks/<name>.md; this script then concatenates every
fragment present (in a fixed order) into docs/BENCHMARKS.md, so a benchmark re-run alone keeps
the others' latest results.
"""

from __future__ import annotations

import argparse
import importlib

from bench.common import FRAGMENTS, ROOT

ORDER = ["loop", "attacks", "autoattack", "classifiers", "reproductions", "generative",
         "defenses", "evaluation"]


def assemble() -> None:
    parts = ["# advlab benchmarks\n",
             "Every figure here was measured by `make bench` (or the command named in its section) "
             "on the machine named there; nothing is copied or estimated. Ratios are measured "
             "side by side in one run, medians over repeated runs.\n"]
    for name in ORDER + sorted(p.stem for p in FRAGMENTS.glob("*.md") if p.stem not in ORDER):
        p = FRAGMENTS / f"{name}.md"
        if p.is_file():
            parts.append(p.read_text())
    (ROOT / "docs" / "BENCHMARKS.md").write_text("\n".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", default=None, help=f"subset of {ORDER}")
    ap.add_argument("--quick", action="store_true", help="smaller settings (smoke run)")
    args = ap.parse_args()
    for name in args.only or ORDER:
        try:
            mod = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"bench.{name}":
                print(f"[bench] no benchmark module bench/{name}.py yet; skipped")
                continue
            raise
        print(f"[bench] {name}")
        mod.main(quick=args.quick)
    assemble()


if __name__ == "__main__":
    main()
