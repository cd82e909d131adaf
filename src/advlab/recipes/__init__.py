"""Recipes: a published experiment as data — the jobs that rebuild it and the source's numbers.

A recipe is a YAML file shipped in this package (``<name>.yaml``)::

    name: deepfool-table                 # the file's stem
    title: ...                           # one line
    source: DeepFool (Moosavi-Dezfooli et al. 2016), Table 1
    data: [mnist]                        # built-in data sets it reads (checked first)
    minutes: {full: 12, quick: 1}        # measured on a 2-core CPU (docs/BENCHMARKS.md)
    notes: ...                           # optional: what differs from the source
    jobs:                                # run in order, one sub-run each
      - name: lenet
        command: train classifier        # any advlab command that writes a run directory
        options: {dataset: mnist, model: lenet5, epochs: 10}
        quick: {n-train: 1000, epochs: 1}   # merged over options by --quick (null drops one)
        config: {train: {momentum: 0.9}}    # training commands: a --config file's content
                                            # (the settings that have no option)
      - name: lenet-deepfool
        command: attack
        run: lenet                       # the positional RUN: that job's run directory
        options: {attack: deepfool, n: 10000, steps: 50, overshoot: 0.02}
    verdicts:                            # the source's numbers beside advlab's
      - quantity: rho_adv LeNet
        value: "{lenet-deepfool:rho2}"   # a number of a job's metrics.json (dotted path)
        source: 0.20
        tolerance: 0.03                  # |advlab - source| <= tolerance
        compare: within                  # or at_least / at_most (a target, not a reading)

Option values may name another job: ``"{job}"`` is its run directory, ``"{job:a.b.0}"`` a
number of its ``metrics.json``; a string that starts with ``=`` is then computed (``+ - * /``
and parentheses on numbers only), e.g. ``eps: ["=0.5*{dd:eps_ref}"]``. Lists become one
comma-separated value (``--eps 0.1,0.2``), mappings a repeated ``--option k=v``, booleans
``--flag`` / ``--no-flag``.

``load(name)`` reads and validates one recipe; ``names()`` lists them; ``run_recipe`` (in
``advlab.recipes.runner``) runs one into a run directory.
"""

from __future__ import annotations

import ast
import json
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

# the advlab commands a job may run: those that write one run directory
COMMANDS = ("train classifier", "train generative", "attack", "eval accuracy", "eval robust",
            "eval needed",
            "defend svd", "defend certify", "defend latent", "defend defense-gan", "demo")
RESUMABLE = ("train classifier", "train generative")  # take --resume of an unfinished run
COMPARES = ("within", "at_least", "at_most")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_REF = re.compile(r"\{([a-z0-9][a-z0-9-]*)(?::([^{}]+))?\}")
_RECIPE_KEYS = {"name", "title", "source", "data", "minutes", "notes", "jobs", "verdicts"}
_JOB_KEYS = {"name", "command", "run", "options", "quick", "config", "notes"}
_VERDICT_KEYS = {"quantity", "value", "source", "tolerance", "compare", "relative", "note"}


class RecipeError(ValueError):
    """A recipe file that does not follow the schema, or a job of it that failed."""


@dataclass(frozen=True)
class Job:
    name: str
    command: str
    run: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    quick: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)  # a --config file's content

    def settings(self, quick: bool) -> dict[str, Any]:
        """The options of this job, with ``quick``'s merged over them for ``--quick``."""
        out = dict(self.options)
        if quick:
            for k, v in self.quick.items():
                if v is None:
                    out.pop(k, None)
                else:
                    out[k] = v
        return out

    @property
    def resumable(self) -> bool:
        return self.command in RESUMABLE


@dataclass(frozen=True)
class Verdict:
    quantity: str
    value: str
    source: float | str | None = None
    tolerance: float | None = None
    compare: str = "within"
    relative: bool = False
    note: str = ""

    def judge(self, value: float | None) -> bool | None:
        """Within tolerance (or the target met)? None when there is nothing to judge."""
        if value is None or not isinstance(self.source, int | float) or value != value:
            return None
        tol = self.tolerance or 0.0
        if self.relative:
            tol *= abs(self.source)
        if self.compare == "at_least":
            return value >= self.source - tol
        if self.compare == "at_most":
            return value <= self.source + tol
        if self.tolerance is None:
            return None
        return abs(value - self.source) <= tol + 1e-12

    def tolerance_text(self) -> float | str | None:
        sign = {"at_least": "≥ source", "at_most": "≤ source"}.get(self.compare)
        if sign is not None:
            op = " − " if self.compare == "at_least" else " + "
            return sign + (f"{op}{self.tolerance:g}" if self.tolerance else "")
        if self.tolerance is None:
            return None
        return f"±{self.tolerance:g}×source" if self.relative else self.tolerance


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    source: str
    jobs: tuple[Job, ...]
    verdicts: tuple[Verdict, ...] = ()
    data: tuple[str, ...] = ()
    minutes: Mapping[str, float] = field(default_factory=dict)
    notes: str = ""
    path: str = ""

    def job(self, name: str) -> Job:
        for j in self.jobs:
            if j.name == name:
                return j
        raise RecipeError(f"recipe {self.name!r} has no job {name!r}; its jobs: "
                          f"{', '.join(j.name for j in self.jobs)}")

    def summary(self) -> dict[str, Any]:
        """What a run's config.yaml and report say about the recipe."""
        return {"name": self.name, "title": self.title, "source": self.source,
                "jobs": [j.name for j in self.jobs], "notes": self.notes}


# --- loading ------------------------------------------------------------------------------------

def _files() -> dict[str, Any]:
    root = resources.files(__name__)
    return {p.name[:-5]: p for p in root.iterdir() if p.name.endswith(".yaml")}


def names() -> list[str]:
    """The recipes shipped with advlab, sorted."""
    return sorted(_files())


def load(name: str) -> Recipe:
    """The recipe ``name`` (see ``names()``), validated; or a recipe file's path."""
    files = _files()
    if name in files:
        text, where = files[name].read_text(encoding="utf-8"), f"recipe {name!r}"
        path = str(files[name])
    elif name.endswith((".yaml", ".yml")) and Path(name).is_file():
        text, where, path = Path(name).read_text(encoding="utf-8"), name, name
    else:
        raise RecipeError(f"expected a recipe name ({', '.join(names())}) or a recipe .yaml "
                          f"file, got {name!r}")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"{where}: not valid YAML ({e})") from None
    return parse(doc, where, path)


def _mapping(v: Any, where: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(v).__name__}")
    return v


def _unknown(d: Mapping[str, Any], valid: set[str], where: str) -> None:
    extra = sorted(set(d) - valid)
    if extra:
        raise RecipeError(f"{where}: unknown key {', '.join(map(repr, extra))}; valid keys: "
                          f"{', '.join(sorted(valid))}")


def parse(doc: Any, where: str = "recipe", path: str = "") -> Recipe:
    """Check ``doc`` (a recipe file's YAML) against the schema; the first problem is named."""
    doc = _mapping(doc, where)
    _unknown(doc, _RECIPE_KEYS, where)
    for key in ("name", "title", "source", "jobs"):
        if not doc.get(key):
            raise RecipeError(f"{where}: expected a non-empty {key!r}")
    if not isinstance(doc["jobs"], list):
        raise RecipeError(f"{where}: expected 'jobs' to be a list, got "
                          f"{type(doc['jobs']).__name__}")
    jobs: list[Job] = []
    for i, j in enumerate(doc["jobs"]):
        jw = f"{where}, jobs[{i}]"
        j = _mapping(j, jw)
        _unknown(j, _JOB_KEYS, jw)
        name = j.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise RecipeError(f"{jw}: expected a name of lower-case letters, digits and '-', "
                              f"got {name!r}")
        jw = f"{where}, job {name!r}"
        if any(o.name == name for o in jobs):
            raise RecipeError(f"{jw}: the name is used twice")
        if j.get("command") not in COMMANDS:
            raise RecipeError(f"{jw}: expected a command in {', '.join(COMMANDS)}, got "
                              f"{j.get('command')!r}")
        run = j.get("run")
        earlier = [o.name for o in jobs]
        if run is not None and run not in earlier:
            raise RecipeError(f"{jw}: 'run: {run}' names no earlier job (earlier: "
                              f"{', '.join(earlier) or 'none'})")
        options, quick = _mapping(j.get("options"), jw), _mapping(j.get("quick"), jw)
        for k in (*options, *quick):
            if not isinstance(k, str) or k.startswith("-") or k in ("out", "resume"):
                raise RecipeError(f"{jw}: expected option names without dashes (not out or "
                                  f"resume, which the recipe sets), got {k!r}")
        for v in (*options.values(), *quick.values()):
            for ref, _ in _REF.findall(json.dumps(v)):
                if ref not in earlier:
                    raise RecipeError(f"{jw}: '{{{ref}}}' names no earlier job (earlier: "
                                      f"{', '.join(earlier) or 'none'})")
        config = _mapping(j.get("config"), jw)
        if config and j["command"] not in RESUMABLE:
            raise RecipeError(f"{jw}: 'config' is for the training commands "
                              f"({', '.join(RESUMABLE)}), not {j['command']!r}")
        jobs.append(Job(name, j["command"], run, options, quick, str(j.get("notes", "")),
                        config))
    verdicts = []
    for i, v in enumerate(doc.get("verdicts") or []):
        vw = f"{where}, verdicts[{i}]"
        v = _mapping(v, vw)
        _unknown(v, _VERDICT_KEYS, vw)
        if not v.get("quantity") or not isinstance(v.get("value"), str):
            raise RecipeError(f"{vw}: expected 'quantity' and a 'value' such as "
                              f"\"{{job:metric}}\"")
        for ref, _ in _REF.findall(v["value"]):
            if ref not in {j.name for j in jobs}:
                raise RecipeError(f"{vw}: '{{{ref}}}' names no job of the recipe")
        compare = v.get("compare", "within")
        if compare not in COMPARES:
            raise RecipeError(f"{vw}: expected compare in {', '.join(COMPARES)}, got "
                              f"{compare!r}")
        tol = v.get("tolerance")
        if tol is not None and (not isinstance(tol, int | float) or tol < 0):
            raise RecipeError(f"{vw}: expected a tolerance >= 0, got {tol!r}")
        verdicts.append(Verdict(str(v["quantity"]), v["value"], v.get("source"),
                                None if tol is None else float(tol), compare,
                                bool(v.get("relative", False)), str(v.get("note", ""))))
    data = doc.get("data") or []
    if not isinstance(data, list):
        raise RecipeError(f"{where}: expected 'data' to be a list of data set names")
    return Recipe(doc["name"], str(doc["title"]), str(doc["source"]), tuple(jobs),
                  tuple(verdicts), tuple(map(str, data)), _mapping(doc.get("minutes"), where),
                  str(doc.get("notes", "")), path)


# --- values: references to other jobs and arithmetic ----------------------------------------------

def metric(metrics: Any, dotted: str, where: str = "metrics.json") -> Any:
    """``metrics`` at the dotted path ``a.b.0`` (integers index lists)."""
    cur = metrics
    for part in dotted.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.lstrip("-").isdigit() and -len(cur) <= int(part) \
                < len(cur):
            cur = cur[int(part)]
        else:
            keys = (", ".join(map(str, list(cur)[:12])) if isinstance(cur, dict)
                    else f"a list of {len(cur)}" if isinstance(cur, list) else repr(cur))
            raise RecipeError(f"{where}: no {dotted!r} (at {part!r}; there: {keys})")
    return cur


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.USub: operator.neg, ast.UAdd: operator.pos}


def arithmetic(expr: str) -> float:
    """Evaluate ``+ - * /`` and parentheses on numbers (nothing else: no names, no calls)."""
    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) \
                and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise RecipeError(f"expected arithmetic on numbers, got {expr!r}")

    try:
        return float(ev(ast.parse(expr, mode="eval")))
    except SyntaxError:
        raise RecipeError(f"expected arithmetic on numbers, got {expr!r}") from None


def substitute(value: Any, lookup) -> Any:
    """``value`` with every ``{job}`` / ``{job:path}`` replaced through ``lookup(job, path)``;
    a string starting with ``=`` is then computed. Lists and mappings recursively."""
    if isinstance(value, list):
        return [substitute(v, lookup) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, lookup) for k, v in value.items()}
    if not isinstance(value, str):
        return value
    text = _REF.sub(lambda m: str(lookup(m.group(1), m.group(2))), value)
    if text.startswith("="):
        return arithmetic(text[1:])
    return text


def argv(job: Job, options: Mapping[str, Any], run: str | None = None) -> list[str]:
    """The ``advlab`` command line of ``job`` with its (substituted) ``options``."""
    out = job.command.split()
    if run is not None:
        out.append(run)
    for k, v in options.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            out.append(flag if v else "--no-" + flag[2:])
        elif isinstance(v, dict):
            for kk, vv in v.items():
                out += [flag, f"{kk}={vv}"]
        elif isinstance(v, list):
            out += [flag, ",".join(_plain(x) for x in v)]
        elif v is not None:
            out += [flag, _plain(v)]
    return out


def _plain(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)  # repr: every digit of a float


__all__ = ["COMMANDS", "Job", "Recipe", "RecipeError", "Verdict", "argv", "arithmetic", "load",
           "metric", "names", "parse", "substitute"]
