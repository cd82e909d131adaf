"""A recipe run as a markdown section: the source's numbers beside advlab's, the time each job
took and the command that reproduces it (docs/BENCHMARKS.md is assembled from these).

    advlab reproduce markdown runs/reproduce/deep-defense -o docs/benchmarks/recipe-deep-defense.md
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import yaml

from advlab.recipes import RecipeError


def _num(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _machine(versions: dict[str, Any]) -> str:
    torch_v = versions.get("torch", "?")
    return (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch_v}, "
            f"Python {versions.get('python', platform.python_version())}")


def recipe_markdown(run: str | Path, note: str | None = None) -> str:
    """The markdown section of the recipe run directory ``run`` (``advlab reproduce NAME``)."""
    run = Path(run)
    mfile, cfile = run / "metrics.json", run / "config.yaml"
    if not mfile.is_file() or not cfile.is_file():
        raise RecipeError(f"{run} is not a finished recipe run (no metrics.json or config.yaml "
                          f"from `advlab reproduce`)")
    m = json.loads(mfile.read_text(encoding="utf-8"))
    config = yaml.safe_load(cfile.read_text(encoding="utf-8")) or {}
    if config.get("command") != "reproduce" or "verdicts" not in m:
        raise RecipeError(f"{run} is not a recipe run (config.yaml command: "
                          f"{config.get('command')!r})")
    recipe = config.get("recipe", {})
    name = m["recipe"]
    quick = " --quick" if m.get("quick") else ""
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(mfile.stat().st_mtime))
    lines = [f"## Recipe `{name}`{' (quick)' if quick else ''}: {m['title']}", "",
             f"Source: {m['source']}.", "",
             f"Measured {stamp} with `advlab reproduce {name}{quick}` on "
             f"{_machine(m.get('versions', {}))}; the jobs took {m['seconds'] / 60:.1f} min "
             f"in all. {m['within']} of {m['judged']} judged quantities within tolerance.", ""]
    if note:
        lines += [note.strip(), ""]
    if recipe.get("notes"):
        lines += [recipe["notes"].strip(), ""]
    lines += ["| quantity | source | advlab | tolerance | verdict | note |",
              "|---|---|---|---|---|---|"]
    for v in m["verdicts"]:
        verdict = {True: "**yes**", False: "**no**", None: ""}[v["within"]]
        lines.append(f"| {_cell(str(v['quantity']))} | {_num(v['source'])} | "
                     f"{_num(v['advlab'])} | {_cell(_num(v['tolerance']))} | {verdict} | "
                     f"{_cell(v.get('note') or '')} |")
    lines += ["", "| job | minutes | command |", "|---|---|---|"]
    for job, j in m["jobs"].items():
        command = j["command"].replace(m.get("root") or str(run), "OUT")
        lines.append(f"| {job} | {(j.get('seconds') or 0) / 60:.1f} | `{_cell(command)}` |")
    return "\n".join(lines) + "\n"


__all__ = ["recipe_markdown"]
