"""Self-contained HTML reports of run directories.

``advlab report RUN [RUN...] -o report.html`` writes one; every command that writes a run
directory also writes ``report.html`` at its top when it ends (``write_reports``). The file
stands alone: figures are inlined as base64 ``data:`` URIs, the CSS is inline, there is no
JavaScript, and a Content-Security-Policy forbids loading anything from elsewhere, so the
report can be mailed, archived or opened offline and shows the same thing.

Per run (a directory holding ``config.yaml`` and/or ``metrics.json``):

- the command and its configuration (``config.yaml`` flattened into a table, ``train.lr``);
- the recipe verdicts, when ``metrics.json`` holds a verdict table (schema below): the
  source's numbers beside advlab's, the tolerance and the verdict;
- the soundness checks (any list of ``{"name", "passed", "message"}``): pass / FAIL in colour
  and in words, with the ``reliable`` flag;
- the metrics as tables: the scalars in a key / value table; a mapping of mappings (the
  ``attacks`` of ``eval robust``) one row per key; a list of mappings (the per-epoch
  ``history``, ``per_eps``) one row per item; a mapping of equal-length lists (a curve's
  ``eps`` and ``accuracy``) one row per index; a list of lists (``confusion_matrix``) a grid;
  anything else nested in its own sub-section;
- the figures (``figures/*.png`` and other images, each inlined);
- the library versions (``versions`` of metrics.json, else of ``model.json``).

A run directory holding sub-runs (``advlab demo``: ``classifier/``, ``attacks/``,
``generative/vae/`` ...) reports each sub-run in its own section after its own numbers.

Numbers are shown with 4 significant digits, accuracies (a key ``acc``, ``accuracy``,
``*_acc``, ``*_accuracy*``, ``success_rate``; values in [0, 1]) as percentages. Every number
of a table carries its exact value and where it comes from: ``data-value`` (the shortest
string that parses back to the same float, ``repr``) and ``data-path`` (an RFC 6901 JSON
Pointer into the ``metrics.json`` of the closest enclosing ``<section class="run">``, whose
``data-run`` attribute is the run directory). A test (or a reader) can therefore check the
page against the file exactly. Every string from a file is escaped (``html.escape``).

Recipe verdict table (produced by recipe runs; documented here, the one place that reads it)
------------------------------------------------------------------------------------------
``metrics.json`` may compare advlab's numbers with those of a source (a paper, a reference
implementation) under two keys::

    "recipe": {"name": "madry-mnist", "source": "Madry et al. 2018, Table 2"},  # optional
    "verdicts": [
      {"quantity": "robust accuracy, PGD-40, linf eps=0.3",  # what is compared (optional)
       "source": 0.89,      # the source's number (number, string such as ">= 0.85", or null)
       "advlab": 0.8744,    # advlab's number for the same quantity (number or null)
       "tolerance": 0.03,   # the largest |advlab - source| accepted, same units (or a string)
       "within": true,      # the verdict: advlab's number agrees within the tolerance
                            # (true / false; null: not judged)
       "note": "..."},      # optional free text
      ...]

``source``, ``advlab``, ``tolerance`` and ``within`` are required in every entry; any other key
is shown as text. ``check_verdicts`` validates a table (``ValueError`` naming the first
problem); a ``verdicts`` value that does not follow the schema is shown as ordinary metrics
with a note saying why.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

REPORT = "report.html"  # written at the top of every run directory
VERDICT_KEYS = ("source", "advlab", "tolerance", "within")
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
               ".gif": "image/gif", ".webp": "image/webp", ".svg": "image/svg+xml"}
MAX_ROWS = 500  # rows of one table; the rest is counted, never silently dropped
MAX_FIGURES = 60  # images inlined per run
MAX_FIGURE_BYTES = 8 << 20  # a larger image is named, not inlined
MAX_DEPTH = 4  # sub-run directories searched this deep
LONG_TEXT = 48  # characters: a longer text is shown below a table's rows, not in a cell
_SKIP_DIRS = {"figures", "__pycache__"}
_ACCURACY = re.compile(r"(?<![a-z0-9])(acc|accuracy|success_rate)(?![a-z0-9])", re.IGNORECASE)


# --- reading a run directory ----------------------------------------------------------------

@dataclass(frozen=True)
class RunData:
    """What a report shows of one run directory, read tolerantly: a missing or unreadable
    file is a ``note``, never an exception."""

    path: Path
    config: dict[str, Any] | None
    metrics: dict[str, Any] | None
    versions: dict[str, Any] | None
    figures: tuple[Path, ...]
    notes: tuple[str, ...] = ()
    subruns: tuple[RunData, ...] = field(default_factory=tuple)
    part_of: str | None = None  # a sub-run without a command of its own: "demo attacks"

    @property
    def command(self) -> str | None:
        for source in (self.config, self.metrics):
            if isinstance(source, dict) and isinstance(source.get("command"), str):
                return source["command"]
        return self.part_of


def is_run_dir(path: Path) -> bool:
    """A directory holding ``config.yaml`` or ``metrics.json``."""
    return path.is_dir() and ((path / "config.yaml").is_file()
                              or (path / "metrics.json").is_file())


def sub_runs(path: Path, depth: int = MAX_DEPTH) -> list[Path]:
    """The run directories inside ``path`` (not ``path`` itself), outermost only: a run's own
    sub-runs are found from it. Directories that are not runs (``generative/``) are searched
    through, ``figures/`` and hidden ones are not; sorted by name."""
    found: list[Path] = []
    if depth <= 0:
        return found
    try:
        children = sorted(p for p in Path(path).iterdir() if p.is_dir())
    except OSError:
        return found
    for child in children:
        if child.name in _SKIP_DIRS or child.name.startswith("."):
            continue
        if is_run_dir(child):
            found.append(child)
        else:
            found.extend(sub_runs(child, depth - 1))
    return found


def read_json_file(path: Path) -> tuple[Any, str | None]:
    """(the parsed JSON of ``path``, None) or (None, why it could not be read)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, f"{path.name} could not be read ({type(e).__name__}: {e})"


def read_yaml_file(path: Path) -> tuple[Any, str | None]:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        return None, f"{path.name} could not be read ({type(e).__name__}: {e})"


def _mapping(value: Any, name: str, notes: list[str]) -> dict[str, Any] | None:
    if value is None or isinstance(value, dict):
        return value
    notes.append(f"{name} holds a {type(value).__name__}, expected a mapping")
    return None


def read_run(path: str | Path, depth: int = MAX_DEPTH, part_of: str | None = None) -> RunData:
    """Read the run directory ``path`` (its config, metrics, figures, versions and sub-runs;
    a sub-run without a command of its own is named after its run's: ``demo attacks``)."""
    path = Path(path)
    notes: list[str] = []
    config = metrics = None
    if (path / "config.yaml").is_file():
        raw, why = read_yaml_file(path / "config.yaml")
        notes += [why] if why else []
        config = _mapping(raw, "config.yaml", notes)
    if (path / "metrics.json").is_file():
        raw, why = read_json_file(path / "metrics.json")
        notes += [why] if why else []
        metrics = _mapping(raw, "metrics.json", notes)
    elif (path / "config.yaml").is_file():
        notes.append("no metrics.json: the run has not finished, or it failed")
    versions = metrics.get("versions") if metrics else None
    if not isinstance(versions, dict) and (path / "model.json").is_file():
        raw, _ = read_json_file(path / "model.json")
        versions = raw.get("versions") if isinstance(raw, dict) else None
    figures: list[Path] = []
    fig_dir = path / "figures"
    if fig_dir.is_dir():
        try:
            figures = sorted(p for p in fig_dir.rglob("*")
                             if p.is_file() and p.suffix.lower() in IMAGE_TYPES
                             and not p.name.startswith("."))
        except OSError as e:
            notes.append(f"figures/ could not be listed ({e})")
    run = RunData(path, config, metrics, versions if isinstance(versions, dict) else None,
                  tuple(figures), tuple(notes), (), part_of)
    if depth > 0:
        subs = []
        for p in sub_runs(path):
            sub = read_run(p, depth - 1)
            if sub.command is None and run.command is not None:
                sub = replace(sub, part_of=f"{run.command} {p.relative_to(path).as_posix()}")
            subs.append(sub)
        run = replace(run, subruns=tuple(subs))
    return run


# --- formatting ------------------------------------------------------------------------------

def esc(value: Any) -> str:
    """``value`` as text, HTML-escaped (quotes too: safe in attributes)."""
    return html.escape(str(value), quote=True)


def is_accuracy_key(key: Any) -> bool:
    """Whether numbers under ``key`` are accuracies (shown as percentages)."""
    return bool(_ACCURACY.search(str(key)))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def format_number(v: int | float, percent: bool = False) -> str:
    """4 significant digits; a fraction in [0, 1] as a percentage when ``percent``."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if not math.isfinite(v):
        return str(v)
    if percent and 0.0 <= v <= 1.0:
        return f"{v * 100:.4g}%"
    return f"{v:.4g}"


def exact(v: int | float) -> str:
    """The string that parses back to ``v`` exactly (``repr``: shortest round trip)."""
    return str(v) if isinstance(v, int) else repr(float(v))


def pointer(parts: Sequence[Any]) -> str:
    """RFC 6901 JSON Pointer of ``parts`` (keys and list indices)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def resolve_pointer(doc: Any, ptr: str) -> Any:
    """The value at the JSON Pointer ``ptr`` in ``doc`` (KeyError / IndexError if absent)."""
    if ptr == "":
        return doc
    if not ptr.startswith("/"):
        raise ValueError(f"expected a JSON Pointer starting with '/', got {ptr!r}")
    for raw in ptr[1:].split("/"):
        key = raw.replace("~1", "/").replace("~0", "~")
        doc = doc[int(key)] if isinstance(doc, list) else doc[key]
    return doc


def _value(v: Any, path: Sequence[Any] | None, percent: bool = False, tag: str = "span") -> str:
    """One value as an element: numbers carry data-value / data-path, text is escaped."""
    if _is_number(v):
        attrs = f' data-value="{esc(exact(v))}"'
        if path is not None:
            attrs += f' data-path="{esc(pointer(path))}"'
        return f'<{tag} class="num"{attrs} title="{esc(exact(v))}">' \
               f'{esc(format_number(v, percent))}</{tag}>'
    if v is None:
        return f'<{tag} class="none">n/a</{tag}>'
    if isinstance(v, bool):
        return f'<{tag} class="bool">{"true" if v else "false"}</{tag}>'
    if isinstance(v, str):
        return f'<{tag} class="text">{esc(v)}</{tag}>'
    if isinstance(v, list) and all(_is_scalar(x) for x in v):
        items = ", ".join(_value(x, None if path is None else [*path, i], percent)
                          for i, x in enumerate(v))
        return f'<{tag} class="list">[{items}]</{tag}>'
    text = json.dumps(v, ensure_ascii=False, default=str)
    return f'<{tag} class="text">{esc(text)}</{tag}>'


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _short_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) <= 12 and all(_is_scalar(x) for x in v)


# --- tables ------------------------------------------------------------------------------------

def _table(head: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "",
           caption: str = "") -> str:
    """``rows`` of already-rendered cells (``<td>``...) under the escaped ``head``."""
    out = [f'<table class="{esc(cls)}">']
    if caption:
        out.append(f"<caption>{caption}</caption>")
    if head:
        out.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead>")
    out.append("<tbody>")
    out += ["<tr>" + "".join(r) + "</tr>" for r in rows]
    out.append("</tbody></table>")
    return "".join(out)


def _td(v: Any, path: Sequence[Any] | None, percent: bool = False) -> str:
    return _value(v, path, percent, tag="td")


def _more(n: int, what: str = "rows") -> str:
    return f'<p class="note">… {n} more {what} in metrics.json</p>' if n > 0 else ""


def kv_table(items: Sequence[tuple[str, Any]], path: Sequence[Any], percent: bool = False,
             caption: str = "") -> str:
    """Key / value rows of scalars (and short lists) of the mapping at ``path``."""
    rows = [[f'<th scope="row">{esc(k)}</th>',
             _td(v, [*path, k], percent or is_accuracy_key(k))] for k, v in items[:MAX_ROWS]]
    return _table(("key", "value"), rows, "kv", caption) + _more(len(items) - MAX_ROWS)


def _cell(v: Any) -> bool:
    """Fits a table cell: a scalar (not a long text) or a short list of scalars."""
    return (_is_scalar(v) and not (isinstance(v, str) and len(v) > LONG_TEXT)) or _short_list(v)


def _columns(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """The keys whose values fit table cells in every record holding them."""
    cols: dict[str, bool] = {}
    for r in records:
        for k, v in r.items():
            cols[k] = cols.get(k, True) and _cell(v)
    return [k for k, ok in cols.items() if ok]


def rows_table(records: Sequence[tuple[Any, Mapping[str, Any]]], path: Sequence[Any],
               first: str, percent: bool = False, caption: str = "") -> str:
    """One row per ``(key, mapping)``: the key, then the mapping's scalars by column."""
    cols = _columns(r for _, r in records)
    rows = []
    for key, rec in records[:MAX_ROWS]:
        cells = [f'<th scope="row">{esc(key)}</th>'] if first else []
        for c in cols:
            cells.append(_td(rec[c], [*path, key, c], percent or is_accuracy_key(c))
                         if c in rec else '<td class="none"></td>')
        rows.append(cells)
    head = ([first] if first else []) + cols
    return _table(head, rows, "rows", caption) + _more(len(records) - MAX_ROWS)


def columns_table(columns: Mapping[str, list[Any]], path: Sequence[Any], percent: bool = False,
                  caption: str = "") -> str:
    """A mapping of equal-length lists, one row per index (a curve: eps, accuracy)."""
    names = list(columns)
    n = len(next(iter(columns.values())))
    rows = [[_td(columns[c][i], [*path, c, i], percent or is_accuracy_key(c)) for c in names]
            for i in range(min(n, MAX_ROWS))]
    return _table(names, rows, "rows", caption) + _more(n - MAX_ROWS)


def matrix_table(matrix: list[list[Any]], path: Sequence[Any], caption: str = "") -> str:
    """A list of equal-length lists of numbers as a grid (row and column indices shown)."""
    width = max(len(r) for r in matrix)
    rows = [[f'<th scope="row">{i}</th>'] + [_td(v, [*path, i, j]) for j, v in enumerate(r)]
            for i, r in enumerate(matrix[:MAX_ROWS])]
    return _table(["", *map(str, range(width))], rows, "matrix", caption) + \
        _more(len(matrix) - MAX_ROWS)


def list_table(values: list[Any], path: Sequence[Any], percent: bool = False,
               caption: str = "") -> str:
    rows = [[f'<th scope="row">{i}</th>', _td(v, [*path, i], percent)]
            for i, v in enumerate(values[:MAX_ROWS])]
    return _table(("#", "value"), rows, "rows", caption) + _more(len(values) - MAX_ROWS)


# --- soundness checks and verdicts -------------------------------------------------------------

def is_checks(value: Any) -> bool:
    """A list of soundness-check results: mappings with ``name`` and a boolean ``passed``."""
    return isinstance(value, list) and bool(value) and all(
        isinstance(c, dict) and "name" in c and isinstance(c.get("passed"), bool)
        for c in value)


def _verdict_badge(ok: bool | None, yes: str, no: str) -> str:
    if ok is None:
        return '<td class="none">not judged</td>'
    return f'<td class="pass">✓ {esc(yes)}</td>' if ok else f'<td class="fail">✗ {esc(no)}</td>'


def checks_html(checks: list[dict[str, Any]], path: Sequence[Any],
                reliable: Any = None) -> str:
    """The soundness checks: pass / FAIL in colour and in words, then the message and values."""
    rows = []
    for i, c in enumerate(checks):
        values = c.get("values")
        if isinstance(values, dict) and values:
            shown = "; ".join(f"{esc(k)} = {_value(v, [*path, i, 'values', k])}"
                              for k, v in values.items())
        else:
            shown = ""
        rows.append([f'<th scope="row">{esc(c["name"])}</th>',
                     _verdict_badge(c["passed"], "pass", "FAIL"),
                     f'<td class="text">{esc(c.get("message", ""))}</td>',
                     f'<td class="values">{shown}</td>'])
    failed = [c["name"] for c in checks if not c["passed"]]
    if reliable is None:
        reliable = not failed
    banner = ('<p class="banner pass">✓ reliable: every soundness check passed</p>'
              if reliable and not failed else
              '<p class="banner fail">✗ unreliable: failed ' + esc(", ".join(failed) or "?") +
              "; the robust accuracy is an overestimate until the failure is explained</p>")
    return banner + _table(("check", "result", "detail", "values"), rows, "checks")


def check_verdicts(value: Any) -> list[dict[str, Any]]:
    """``value`` checked against the recipe verdict schema (module docstring): a list of
    mappings each with ``source``, ``advlab``, ``tolerance`` (number, string or null) and
    ``within`` (true, false or null). Returns it; raises ``ValueError`` naming the first
    problem."""
    if not isinstance(value, list):
        raise ValueError(f"expected verdicts to be a list of mappings, got "
                         f"{type(value).__name__}")
    for i, v in enumerate(value):
        if not isinstance(v, dict):
            raise ValueError(f"expected verdicts[{i}] to be a mapping, got {type(v).__name__}")
        missing = [k for k in VERDICT_KEYS if k not in v]
        if missing:
            raise ValueError(f"expected verdicts[{i}] to hold {', '.join(VERDICT_KEYS)}, got "
                             f"no {', '.join(missing)}")
        for k in ("source", "advlab", "tolerance"):
            if not (v[k] is None or isinstance(v[k], str) or _is_number(v[k])):
                raise ValueError(f"expected verdicts[{i}].{k} to be a number, a string or "
                                 f"null, got {type(v[k]).__name__}")
        if v["within"] is not None and not isinstance(v["within"], bool):
            raise ValueError(f"expected verdicts[{i}].within to be true, false or null, got "
                             f"{v['within']!r}")
    return value


def verdicts_html(verdicts: list[dict[str, Any]], path: Sequence[Any], recipe: Any = None
                  ) -> str:
    """The source's numbers beside advlab's, the difference, the tolerance and the verdict."""
    extra = [k for k in _columns(verdicts)
             if k not in (*VERDICT_KEYS, "quantity", "name", "note")]
    rows = []
    for i, v in enumerate(verdicts):
        label = v.get("quantity", v.get("name", f"#{i + 1}"))
        pct = is_accuracy_key(label) if isinstance(label, str) else False
        src, ours = v["source"], v["advlab"]
        if _is_number(src) and _is_number(ours):
            d = ours - src
            shown = f"{d * 100:+.4g} pp" if pct else f"{d:+.4g}"  # pp: percentage points
            diff = f'<td class="num derived">{esc(shown)}</td>'
        else:
            diff = '<td class="none"></td>'
        rows.append([f'<th scope="row">{esc(label)}</th>', _td(src, [*path, i, "source"], pct),
                     _td(ours, [*path, i, "advlab"], pct), diff,
                     _td(v["tolerance"], [*path, i, "tolerance"], pct),
                     _verdict_badge(v["within"], "within tolerance", "outside tolerance"),
                     *(_td(v.get(k), [*path, i, k]) for k in extra),
                     f'<td class="text">{esc(v.get("note", ""))}</td>'])
    head = ("quantity", "source", "advlab", "advlab − source", "tolerance", "verdict", *extra,
            "note")
    judged = [v["within"] for v in verdicts if v["within"] is not None]
    outside = sum(1 for w in judged if not w)
    banner = (f'<p class="banner {"fail" if outside else "pass"}">'
              f'{"✗" if outside else "✓"} {len(judged) - outside} of {len(judged)} judged '
              f"quantities within tolerance</p>")
    intro = ""
    if isinstance(recipe, dict):
        intro = "<p>" + "; ".join(f"{esc(k)}: {esc(v)}" for k, v in recipe.items()
                                  if _is_scalar(v)) + "</p>"
    elif isinstance(recipe, str):
        intro = f"<p>recipe: {esc(recipe)}</p>"
    return intro + banner + _table(head, rows, "verdicts")


# --- metrics, generically ----------------------------------------------------------------------

def _equal_length_lists(d: Mapping[str, Any]) -> bool:
    lists = [v for v in d.values() if isinstance(v, list)]
    return (len(lists) >= 2 and all(_is_scalar(x) for v in lists for x in v)
            and len({len(v) for v in lists}) == 1 and len(lists[0]) > 0)


def _is_matrix(v: Any) -> bool:
    return (isinstance(v, list) and bool(v) and all(isinstance(r, list) and r for r in v)
            and all(_is_number(x) or x is None for r in v for x in r))


def _title(path: Sequence[Any]) -> str:
    return " › ".join(esc(p) for p in path)


def metrics_html(m: Mapping[str, Any], path: Sequence[Any] = (), skip: Iterable[str] = (),
                 percent: bool = False, depth: int = 0) -> str:
    """Every value of the mapping ``m`` (at ``path`` in metrics.json) as tables, recursively."""
    skip = set(skip)
    items = [(k, v) for k, v in m.items() if k not in skip]
    out = []
    scalars = [(k, v) for k, v in items if _is_scalar(v) or _short_list(v)]
    if scalars:
        out.append(kv_table(scalars, path, percent,
                            caption=_title(path) if path else "headline numbers"))
    for k, v in items:
        if _is_scalar(v) or _short_list(v):
            continue
        here = [*path, k]
        pct = percent or is_accuracy_key(k)
        if isinstance(v, dict) and not v:
            continue
        if k == "verdicts" and isinstance(v, list):
            try:
                out.append(f"<h4>{_title(here)}</h4>" + verdicts_html(check_verdicts(v), here))
                continue
            except ValueError as e:
                out.append(f'<p class="note">{_title(here)}: not a recipe verdict table '
                           f"({esc(e)})</p>")
        if is_checks(v):
            out.append(f"<h4>{_title(here)}</h4>" + checks_html(v, here))
        elif isinstance(v, dict) and all(_is_scalar(x) or _short_list(x) for x in v.values()):
            out.append(kv_table(list(v.items()), here, pct, caption=_title(here)))
        elif isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()):
            records = list(v.items())
            out.append(rows_table(records, here, "name", pct, caption=_title(here)))
            out += _nested_rows(records, here, pct, depth)
        elif isinstance(v, dict) and _equal_length_lists(v):
            lists = {c: x for c, x in v.items() if isinstance(x, list)}
            rest = {c: x for c, x in v.items() if c not in lists}
            out.append(_section(here, metrics_html(rest, here, percent=pct, depth=depth + 1)
                                + columns_table(lists, here, pct), depth))
        elif isinstance(v, dict):
            out.append(_section(here, metrics_html(v, here, percent=pct, depth=depth + 1),
                                depth))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            records = list(enumerate(v))
            out.append(rows_table(records, here, "", pct, caption=_title(here)))
            out += _nested_rows(records, here, pct, depth)
        elif _is_matrix(v):
            out.append(matrix_table(v, here, caption=_title(here)))
        elif isinstance(v, list) and all(_is_scalar(x) for x in v):
            out.append(list_table(v, here, pct, caption=_title(here)))
        else:  # a list mixing kinds: each item on its own
            out.append(_section(here, metrics_html(dict(enumerate(v)), here, percent=pct,
                                                   depth=depth + 1), depth))
    return "".join(out)


def _nested_rows(records: Sequence[tuple[Any, Mapping[str, Any]]], path: Sequence[Any],
                 percent: bool, depth: int) -> list[str]:
    """The non-scalar values of table rows, each row's in a sub-section after the table."""
    out = []
    columns = set(_columns(r for _, r in records))
    for key, rec in records[:MAX_ROWS]:
        nested = {k: v for k, v in rec.items() if k not in columns and v not in ({}, [])}
        if nested:
            out.append(_section([*path, key], metrics_html(nested, [*path, key],
                                                           percent=percent, depth=depth + 1),
                                depth))
    return out


def _section(path: Sequence[Any], body: str, depth: int) -> str:
    if not body:
        return ""
    return f'<details class="nested"{" open" if depth < 1 else ""}><summary>{_title(path)}' \
           f"</summary>{body}</details>"


# --- the page ----------------------------------------------------------------------------------

def flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"train": {"lr": 0.1}}`` -> ``[("train.lr", 0.1)]`` (empty mappings kept as {})."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _config_value(v: Any) -> str:
    if isinstance(v, list) and all(_is_scalar(x) for x in v):
        text = ", ".join("null" if x is None else str(x) for x in v)
        return f'<td class="text">[{esc(text)}]</td>'
    if v is None:
        return '<td class="none">null</td>'
    if isinstance(v, bool):
        return f'<td class="bool">{"true" if v else "false"}</td>'
    if _is_number(v):
        return f'<td class="num cfg" data-value="{esc(exact(v))}">{esc(v)}</td>'
    if isinstance(v, dict):
        return '<td class="none">{}</td>'
    if isinstance(v, str):
        return f'<td class="text">{esc(v)}</td>'
    return f'<td class="text">{esc(json.dumps(v, default=str))}</td>'


def _figure(path: Path, base: Path) -> str:
    name = path.relative_to(base).as_posix()
    try:
        size = path.stat().st_size
        if size > MAX_FIGURE_BYTES:
            return (f'<p class="note">{esc(name)}: {size / 2**20:.1f} MiB, too large to inline '
                    f"(see the run directory)</p>")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError as e:
        return f'<p class="note">{esc(name)} could not be read ({esc(e)})</p>'
    mime = IMAGE_TYPES[path.suffix.lower()]
    return (f'<figure><img src="data:{mime};base64,{data}" alt="{esc(name)}">'
            f"<figcaption>{esc(name)}</figcaption></figure>")


def _files(run: Path) -> str:
    try:
        files = sorted(p for p in run.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.name != REPORT)
    except OSError:
        return ""
    parts = []
    for p in files:
        try:
            size = p.stat().st_size
        except OSError:
            continue
        human = f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB" \
            if size >= 2**10 else f"{size} B"
        parts.append(f"<code>{esc(p.name)}</code> ({human})")
    return "<p class=\"files\">files: " + ", ".join(parts) + "</p>" if parts else ""


_SPECIAL = ("checks", "reliable", "verdicts", "recipe", "versions", "figures", "command")


def _valid_verdicts(value: Any, why: bool = False) -> Any:
    try:
        check_verdicts(value)
    except ValueError as e:
        return str(e) if why else False
    return "" if why else True


def _dataset_title(name: Any) -> str | None:
    """The title of a built-in data set when it differs from its name, else None."""
    if not isinstance(name, str):
        return None
    from advlab import data

    try:
        info = data.info(name)
    except ValueError:
        return None
    return info.title if info.title != info.name else None


def run_html(run: RunData, anchor: str, level: int = 2) -> str:
    """One run's ``<section class="run">`` (its sub-runs nested inside)."""
    h, sub = f"h{min(level, 6)}", f"h{min(level + 1, 6)}"
    command = run.command
    title = f"advlab {command}" if command else ("run" if not run.subruns else "run group")
    out = [f'<section class="run" id="{esc(anchor)}" data-run="{esc(run.path)}">',
           f"<{h}>{esc(title)} <small>{esc(run.path.name)}</small></{h}>",
           f'<p class="path">{esc(run.path)}</p>', _files(run.path)]
    for note in run.notes:
        out.append(f'<p class="note warn">{esc(note)}</p>')
    m = run.metrics or {}
    shown = _dataset_title(m.get("dataset") or (run.config or {}).get("dataset"))
    if shown:  # a set that must be named with every result (CIFAR-10 (JPEG re-encoding))
        out.append(f'<p class="dataset">data set: {esc(shown)}</p>')
    skip = [k for k in _SPECIAL if k in m]
    verdicts_ok = "verdicts" in m and _valid_verdicts(m["verdicts"])
    if "verdicts" in skip and not verdicts_ok:
        skip.remove("verdicts")  # shown with the metrics, with a note saying why
    if "checks" in skip and not is_checks(m["checks"]) and m["checks"] != []:
        skip.remove("checks")
    headline = [(k, v) for k, v in m.items() if k not in skip and (_is_scalar(v)
                                                                   or _short_list(v))]
    config = ""
    if run.config:
        rows = [[f'<th scope="row">{esc(k)}</th>', _config_value(v)]
                for k, v in flatten(run.config)]
        config = _table(("key", "value"), rows, "kv config")
    else:
        config = '<p class="note">no config.yaml in this directory</p>'
    numbers = kv_table(headline, ()) if headline else \
        '<p class="note">no numbers (no metrics.json, or none at its top level)</p>'
    if isinstance(m.get("reliable"), bool):
        numbers = (f'<p class="banner {"pass" if m["reliable"] else "fail"}">'
                   f'{"✓ reliable" if m["reliable"] else "✗ unreliable"}</p>') + numbers
    out.append(f'<div class="cols"><div><{sub}>Command and configuration</{sub}>'
               f'<p>{esc(title)}</p>{config}</div>'
               f"<div><{sub}>Metrics</{sub}>{numbers}</div></div>")
    if "verdicts" in m:
        out.append(f"<{sub}>Recipe verdicts</{sub}>")
        if verdicts_ok:
            out.append(verdicts_html(m["verdicts"], ["verdicts"], m.get("recipe")))
        else:
            why = _valid_verdicts(m["verdicts"], why=True)
            out.append(f'<p class="note warn">metrics.json holds "verdicts" that do not follow '
                       f"the recipe verdict schema ({esc(why)}); shown with the metrics</p>")
    if is_checks(m.get("checks")):
        out.append(f"<{sub}>Soundness checks</{sub}>")
        out.append(checks_html(m["checks"], ["checks"], m.get("reliable")))
    elif m.get("checks") == []:
        out.append(f'<{sub}>Soundness checks</{sub}><p class="note">not run</p>')
    if run.figures:
        out.append(f"<{sub}>Figures</{sub}>")
        shown = run.figures[:MAX_FIGURES]
        out.append('<div class="figures">' + "".join(_figure(p, run.path / "figures")
                                                     for p in shown) + "</div>")
        if len(run.figures) > len(shown):
            rest = ", ".join(esc(p.name) for p in run.figures[len(shown):])
            out.append(f'<p class="note">{len(run.figures) - len(shown)} more figures in '
                       f"figures/: {rest}</p>")
    if run.subruns:
        rows = [[f'<td><a href="#{esc(anchor)}-{i}">{esc(s.path.relative_to(run.path))}</a></td>',
                 f'<td class="text">{esc(s.command or "")}</td>']
                for i, s in enumerate(run.subruns, 1)]
        out.append(f"<{sub}>Parts</{sub}>" + _table(("run", "command"), rows, "parts")
                   + '<p class="note">each reported in its own section below</p>')
    details = metrics_html(m, (), skip=[*skip, *(k for k, _ in headline)])
    if details and run.subruns:  # mostly the parts' numbers again: folded
        out.append(f'<details class="nested"><summary>Detailed metrics (its parts\' numbers '
                   f"are in their sections)</summary>{details}</details>")
    elif details:
        out.append(f"<{sub}>Detailed metrics</{sub}>{details}")
    out.append(f"<{sub}>Library versions</{sub}>")
    if run.versions:
        out.append(_table(("library", "version"),
                          [[f'<th scope="row">{esc(k)}</th>', f'<td class="text">{esc(v)}</td>']
                           for k, v in run.versions.items()], "kv versions"))
    else:
        out.append('<p class="note">not recorded in this run'
                   + (" (see its sub-runs)" if run.subruns else "") + "</p>")
    for i, s in enumerate(run.subruns, 1):
        out.append(run_html(s, f"{anchor}-{i}", level + 1))
    out.append("</section>")
    return "".join(out)


def _toc(runs: Sequence[RunData], prefix: str = "run") -> str:
    items = []
    for i, r in enumerate(runs, 1):
        anchor = f"{prefix}-{i}"
        label = f"{r.command or 'run'} — {r.path.name}"
        items.append(f'<li><a href="#{esc(anchor)}">{esc(label)}</a>'
                     + (_toc(r.subruns, anchor) if r.subruns else "") + "</li>")
    return "<ul>" + "".join(items) + "</ul>"


CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1f2328;
 margin:0 auto;max-width:1200px;padding:1em 2em;background:#fff}
h1{font-size:1.6em;border-bottom:2px solid #d0d7de;padding-bottom:.3em}
h2,h3{margin-top:1.6em}h4{margin:1.2em 0 .4em}
section.run{border-top:3px solid #0969da;margin-top:2em;padding-top:.2em}
section.run section.run{border-top:2px solid #8c959f;margin-left:.6em;padding-left:.8em}
small{color:#57606a;font-weight:normal}
.path,.files,.generated{color:#57606a;font-size:.9em;word-break:break-all}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.92em}
caption{text-align:left;font-weight:600;padding:.2em 0;color:#24292f;white-space:nowrap}
tbody th{white-space:nowrap}
th,td{border:1px solid #d0d7de;padding:.25em .6em;vertical-align:top}
thead th{background:#f6f8fa;text-align:left}
tbody th{background:#f6f8fa;text-align:left;font-weight:600}
td.num,span.num{font-variant-numeric:tabular-nums;text-align:right;white-space:nowrap}
td.none,span.none{color:#8c959f}
td.pass,p.pass{color:#116329;background:#dafbe1;font-weight:600}
td.fail,p.fail{color:#a40e26;background:#ffebe9;font-weight:600}
td.pass,td.fail{white-space:nowrap}
p.banner{display:inline-block;padding:.3em .8em;border-radius:4px;margin:.4em 0}
p.note{color:#57606a;font-style:italic}p.warn{color:#9a6700}
td.values{font-size:.9em}td.text{max-width:36em;overflow-wrap:anywhere}
table.rows,table.matrix{display:block;overflow-x:auto;max-width:100%}
details.nested{margin:.4em 0 .8em;padding-left:.8em;border-left:2px solid #d0d7de}
details.nested summary{cursor:pointer;font-weight:600;color:#24292f}
.figures{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0;max-width:100%;min-width:0}
figure img{max-width:100%;height:auto;border:1px solid #d0d7de}
figcaption{font-size:.85em;color:#57606a}
nav ul{margin:.2em 0;padding-left:1.2em}
.cols{display:flex;flex-wrap:wrap;gap:0 3em;align-items:flex-start}
"""
# Nothing may load from elsewhere: images only from data: URIs, styles only inline, no script.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def render_report(runs: Sequence[RunData], title: str | None = None) -> str:
    """The whole self-contained page for ``runs`` (each with its sub-runs)."""
    from advlab import __version__

    if title is None:
        title = "advlab report: " + ", ".join(r.path.name or str(r.path) for r in runs)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    body = "".join(run_html(r, f"run-{i}") for i, r in enumerate(runs, 1))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{esc(title)}</h1>"
            f'<p class="generated">generated {esc(stamp)} by advlab {esc(__version__)}</p>'
            f"</header><nav>{_toc(runs)}</nav><main>{body}</main></body></html>\n")


def report_runs(paths: Sequence[str | Path], out: str | Path, title: str | None = None
                ) -> Path:
    """Write the report of the run directories ``paths`` to ``out`` (atomically); returns it.
    Raises ``FileNotFoundError`` for a path that is not a run directory (nor holds any)."""
    from advlab.io import write_text

    runs = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise FileNotFoundError(f"no run directory at {p}")
        if not is_run_dir(p) and not sub_runs(p):
            raise FileNotFoundError(f"{p} is not a run directory (no config.yaml or "
                                    f"metrics.json in it or below it)")
        runs.append(read_run(p))
    out = Path(out)
    write_text(out, render_report(runs, title))
    return out


def write_report(run: str | Path) -> Path:
    """Write ``<run>/report.html``, the report of the run directory ``run``; returns it."""
    run = Path(run)
    return report_runs([run], run / REPORT)


_COLLECTORS: list[list[Path]] = []  # the lists of the open collect_runs blocks


@contextmanager
def collect_runs() -> Iterator[list[Path]]:
    """Yield a list to which every run directory ``advlab.runs.new_run_dir`` makes while the
    block runs is appended: the command line writes their reports when a command ends."""
    made: list[Path] = []
    _COLLECTORS.append(made)
    try:
        yield made
    finally:  # by identity: two empty lists are equal
        _COLLECTORS[:] = [c for c in _COLLECTORS if c is not made]


def note_run(path: str | Path) -> None:
    """Called by ``new_run_dir`` with each run directory it returns (see ``collect_runs``)."""
    for made in _COLLECTORS:
        made.append(Path(path))


def write_reports(runs: Iterable[str | Path],
                  warn: Callable[[str], None] | None = None) -> list[Path]:
    """Write ``report.html`` into each of ``runs`` (the run directories a command made),
    innermost first so that a run holding others reports them finished. Best effort: a report
    that cannot be written is a warning (``warn``, default the log), never an exception.
    Returns the reports of the outermost runs (those not inside another of ``runs``)."""
    given = [Path(r).absolute() for r in runs]
    # with the runs inside them (the demo's attacks/, made without new_run_dir)
    paths = list(dict.fromkeys(q for p in given for q in (p, *_all_sub_runs(p))))
    warn = warn or log.warning
    top = []
    for p in sorted(paths, key=lambda q: len(q.parts), reverse=True):
        try:
            report = write_report(p)
        except Exception as e:  # a report never costs a run its results
            warn(f"{p / REPORT} was not written ({type(e).__name__}: {e}); the run's results "
                 f"are not affected")
            continue
        if not any(q != p and q in p.parents for q in paths):
            top.append(report)
    return sorted(top, key=lambda r: paths.index(r.parent))


def _all_sub_runs(path: Path) -> list[Path]:
    return [q for p in sub_runs(path) for q in (p, *_all_sub_runs(p))]


__all__ = ["CSP", "REPORT", "VERDICT_KEYS", "RunData", "check_verdicts", "checks_html",
           "collect_runs", "note_run",
           "exact", "format_number", "is_accuracy_key", "is_checks", "is_run_dir",
           "metrics_html", "pointer", "read_run", "render_report", "report_runs",
           "resolve_pointer", "sub_runs", "verdicts_html", "write_report", "write_reports"]
