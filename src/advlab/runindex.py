"""An index of run directories, for ``advlab runs list|show|compare|best``.

The run directories stay the source of truth: ``<root>/index.sqlite`` only caches what their
``config.yaml`` and ``metrics.json`` say, so that listing, filtering and ranking hundreds of runs
reads one file. Every use refreshes it first: a run whose ``config.yaml`` or ``metrics.json``
changed (modification time or size) is read again, a new run is added, a vanished one
dropped. An index that is missing, unreadable, of another schema or corrupt is rebuilt from
the directories; where it cannot be written (a read-only root, a lock held too long) the index
is built in memory for the one command. Nothing here ever fails because of the index.

A run is a directory under the root holding ``config.yaml`` or ``metrics.json``; runs inside
runs (the parts of ``advlab demo``) are runs too, named by their path under the root
(``demo-20250101-120000/classifier``). Each is indexed with its command, data set, model,
defense and attack (for ``attack`` / ``eval`` runs of an advlab classifier, the model and
defense of that classifier's run) and every scalar of its metrics and configuration under a
dotted key (``robust_accuracy``, ``attacks.apgd-ce.robust_accuracy``, ``train.lr``).

Filters: ``--where "robust_accuracy>0.8"`` (operators ``> >= < <= = == !=``; a number compares
numerically, ``true``/``false`` as 1/0, anything else as text with ``=``/``!=``), by metric
first, else configuration key.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advlab.report.html import flatten, is_run_dir, read_json_file, read_yaml_file

INDEX = "index.sqlite"
SCHEMA_VERSION = "1"
MAX_DEPTH = 5  # run directories are looked for this deep under the root
_SKIP_DIRS = {"figures", "__pycache__"}
_OPS = (">=", "<=", "!=", "==", "=", ">", "<")
_SQL_OPS = {">=": ">=", "<=": "<=", "!=": "!=", "==": "=", "=": "=", ">": ">", "<": "<"}
FIELDS = ("name", "command", "dataset", "model", "defense", "attack", "created")
_STAMP = re.compile(r"-\d{8}-\d{6}(-\d+)?$")  # new_run_dir's <command>-<timestamp>[-i]

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE runs (
    name TEXT PRIMARY KEY,       -- path under the root, '/'-separated ('.': the root itself)
    command TEXT, dataset TEXT, model TEXT, defense TEXT, attack TEXT,
    created REAL,                -- modification time of config.yaml, else metrics.json
    signature TEXT,              -- mtime_ns:size of config.yaml and metrics.json
    config TEXT, metrics TEXT,   -- the parsed files as JSON
    notes TEXT                   -- why a file could not be read, one per line
);
CREATE TABLE vals (              -- every scalar, under its dotted key
    run TEXT, source TEXT,       -- 'metrics' | 'config'
    key TEXT, num REAL, text TEXT
);
CREATE INDEX vals_by_key ON vals (key, num);
CREATE INDEX vals_by_run ON vals (run);
"""


@dataclass(frozen=True)
class RunRecord:
    """One indexed run."""

    name: str  # its path under the root ('demo-.../classifier')
    path: Path
    command: str | None
    dataset: str | None
    model: str | None
    defense: str | None
    attack: str | None
    created: float  # seconds since the epoch
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def value(self, key: str) -> Any:
        """The metric ``key`` (a dotted path: ``attacks.pgd.robust_accuracy``), else the
        configuration's, else a field (``command``, ``dataset`` ...); None if absent."""
        for source in (self.metrics, self.config):
            found, v = _lookup(source, key)
            if found:
                return v
        return getattr(self, key, None) if key in FIELDS else None

    def metric_items(self) -> list[tuple[str, Any]]:
        """Every scalar of the metrics, flattened (``attacks.pgd.robust_accuracy``)."""
        return flat_scalars(self.metrics)


@dataclass(frozen=True)
class Condition:
    """``key op value`` of ``--where``."""

    key: str
    op: str
    value: float | str

    @classmethod
    def parse(cls, text: str) -> Condition:
        m = re.match(r"^\s*([^<>=!\s]+)\s*(>=|<=|!=|==|=|>|<)\s*(.*?)\s*$", text)
        if not m or not m.group(3):
            raise ValueError(f"expected --where KEY OP VALUE with OP one of "
                             f"{' '.join(_OPS)} (e.g. 'robust_accuracy>0.8'), got {text!r}")
        key, op, raw = m.groups()
        raw = raw.strip("'\"")
        value: float | str
        if raw.lower() in ("true", "false"):
            value = 1.0 if raw.lower() == "true" else 0.0
        else:
            try:
                value = float(raw)
            except ValueError:
                value = raw
        if isinstance(value, str) and op not in ("=", "==", "!="):
            raise ValueError(f"--where {text!r}: {op} needs a number, got {raw!r} (text "
                             f"compares only with = or !=)")
        return cls(key, op, value)


def _text(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    return None


def _lookup(d: Any, key: str) -> tuple[bool, Any]:
    """(found, value) of the dotted ``key`` in ``d``; a key holding dots itself is tried
    whole first (``per_class_acc.0.5`` finds {"per_class_acc": {"0.5": ...}})."""
    if not isinstance(d, dict):
        return False, None
    if key in d:
        return True, d[key]
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:i])
        if head in d:
            found, v = _lookup(d[head], ".".join(parts[i:]))
            if found:
                return True, v
    return False, None


def flat_scalars(d: Any, prefix: str = "", depth: int = 4) -> list[tuple[str, Any]]:
    """Every scalar (number, string, boolean) of nested mappings under its dotted key; lists
    are left out (histories, curves, matrices)."""
    out: list[tuple[str, Any]] = []
    if not isinstance(d, dict):
        return out
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and depth > 0:
            out += flat_scalars(v, key + ".", depth - 1)
        elif isinstance(v, (str, int, float, bool)):
            out.append((key, v))
    return out


def normalize_command(command: str | None) -> str:
    """``eval-robust`` / ``eval_robust`` / ``eval robust`` -> ``eval robust``."""
    return re.sub(r"[\s_\-]+", " ", (command or "").strip().lower())


def command_matches(command: str | None, wanted: str) -> bool:
    """``wanted`` names the command or its group (``train`` matches ``train classifier``)."""
    have, want = normalize_command(command), normalize_command(wanted)
    return have == want or have.startswith(want + " ")


# --- reading a run directory -------------------------------------------------------------------

def _signature(path: Path) -> str:
    parts = []
    for name in ("config.yaml", "metrics.json"):
        try:
            st = (path / name).stat()
            parts.append(f"{st.st_mtime_ns}:{st.st_size}")
        except OSError:
            parts.append("-")
    return "|".join(parts)


def _source_run(config: dict[str, Any], root: Path) -> dict[str, Any]:
    """The configuration of the classifier run an attack / eval / defend run evaluated
    (``source_run``), or {} when it is not an advlab run or is gone."""
    src = config.get("source_run") or config.get("run")
    if not isinstance(src, str) or not src:
        return {}
    p = Path(src)
    for cand in (p, root.parent / p, root / p):
        d = cand.parent if cand.suffix == ".safetensors" else cand
        if (d / "config.yaml").is_file():
            raw, _ = read_yaml_file(d / "config.yaml")
            return raw if isinstance(raw, dict) else {}
        if (d / "model.json").is_file():
            raw, _ = read_json_file(d / "model.json")
            cfg = raw.get("config") if isinstance(raw, dict) else None
            return cfg if isinstance(cfg, dict) else {}
    return {}


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def read_record(path: Path, root: Path) -> RunRecord:
    """Index what the run directory ``path`` says (tolerantly: unreadable files are notes)."""
    notes: list[str] = []
    config: Any = {}
    metrics: Any = {}
    if (path / "config.yaml").is_file():
        config, why = read_yaml_file(path / "config.yaml")
        notes += [why] if why else []
    if (path / "metrics.json").is_file():
        metrics, why = read_json_file(path / "metrics.json")
        notes += [why] if why else []
    config = config if isinstance(config, dict) else {}
    metrics = metrics if isinstance(metrics, dict) else {}
    source = _source_run(config, root)
    command = _str(config.get("command")) or _str(metrics.get("command"))
    if command is None and _STAMP.search(path.name):
        command = normalize_command(_STAMP.sub("", path.name))  # runs/<command>-<stamp>
    if command is None and path != root:  # a part of a run (the demo's attacks/)
        for p in [q for q in path.parents if q == root or root in q.parents]:
            outer, _ = read_yaml_file(p / "config.yaml") if (p / "config.yaml").is_file() \
                else (None, None)
            if isinstance(outer, dict) and _str(outer.get("command")):
                command = f"{outer['command']} {path.relative_to(p).as_posix()}"
                break
    model = _str(config.get("model")) or _str(metrics.get("model")) or _str(source.get("model"))
    defense = (_str(config.get("defense")) or _str(metrics.get("defense"))
               or _str(source.get("defense")))
    dataset = (_str(config.get("dataset")) or _str(metrics.get("dataset"))
               or _str(source.get("dataset")))
    stamps = []
    for name in ("config.yaml", "metrics.json"):
        try:
            stamps.append((path / name).stat().st_mtime)
        except OSError:
            pass
    name = path.relative_to(root).as_posix() if path != root else "."
    return RunRecord(name, path, command, dataset, model, defense, _str(config.get("attack")),
                     stamps[0] if stamps else 0.0, config, metrics, tuple(notes))


def find_run_dirs(root: Path, depth: int = MAX_DEPTH) -> Iterator[Path]:
    """Every run directory under ``root`` (``root`` itself included), runs inside runs too."""
    if is_run_dir(root):
        yield root
    if depth <= 0:
        return
    try:
        children = sorted(e.path for e in os.scandir(root) if e.is_dir(follow_symlinks=False))
    except OSError:
        return
    for child in map(Path, children):
        if child.name in _SKIP_DIRS or child.name.startswith("."):
            continue
        yield from find_run_dirs(child, depth - 1)


# --- the index ---------------------------------------------------------------------------------

class RunIndex:
    """The runs under ``root``, indexed in ``<root>/index.sqlite`` (refreshed on open)."""

    def __init__(self, root: str | Path = "runs") -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"no directory of runs at {self.root} (give --root DIR)")
        self.file = self.root / INDEX
        self.in_memory = False
        self.db = self._open()
        self.refresh()

    # opening, rebuilding

    def _open(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.file, timeout=5)
            if self._usable(db):
                return db
            db.close()
            self._remove()
            db = sqlite3.connect(self.file, timeout=5)
            self._create(db)
            return db
        except sqlite3.Error:
            try:  # corrupt beyond reading, or another process is rebuilding it
                self._remove()
                db = sqlite3.connect(self.file, timeout=5)
                self._create(db)
                return db
            except (sqlite3.Error, OSError):
                return self._memory()
        except OSError:
            return self._memory()

    def _memory(self) -> sqlite3.Connection:
        self.in_memory = True
        db = sqlite3.connect(":memory:")
        self._create(db)
        return db

    def _remove(self) -> None:
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{self.file}{suffix}").unlink(missing_ok=True)

    @staticmethod
    def _usable(db: sqlite3.Connection) -> bool:
        """An index of this schema (an empty file is not one: it is then created)."""
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            db.execute("SELECT name, command, dataset, model, defense, attack, created, "
                       "signature, config, metrics, notes FROM runs LIMIT 1").fetchall()
            db.execute("SELECT run, source, key, num, text FROM vals LIMIT 1").fetchall()
        except sqlite3.Error:
            return False
        return row is not None and row[0] == SCHEMA_VERSION

    @staticmethod
    def _create(db: sqlite3.Connection) -> None:
        with db:
            db.executescript(_SCHEMA)
            db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))

    def refresh(self) -> dict[str, int]:
        """Bring the index in line with the directories; returns counts of added, updated,
        removed and unchanged runs. Falls back to an in-memory index on any database error."""
        try:
            return self._refresh()
        except sqlite3.Error:
            if self.in_memory:
                raise
            self._to_memory()
            return self._refresh()

    def _to_memory(self) -> None:
        """Give up the file (damaged where opening it did not show): index in memory."""
        self.db.close()
        self.db = self._memory()
        self._refresh()

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """The rows of ``sql``; a damaged file met here is replaced by an in-memory index."""
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError:
            if self.in_memory:
                raise
            self._to_memory()
            return self.db.execute(sql, args).fetchall()

    def _refresh(self) -> dict[str, int]:
        known = dict(self.db.execute("SELECT name, signature FROM runs").fetchall())
        seen: set[str] = set()
        counts = {"added": 0, "updated": 0, "removed": 0, "unchanged": 0}
        changed: list[RunRecord] = []
        for path in find_run_dirs(self.root):
            name = path.relative_to(self.root).as_posix() if path != self.root else "."
            seen.add(name)
            if known.get(name) == _signature(path):
                counts["unchanged"] += 1
                continue
            counts["updated" if name in known else "added"] += 1
            changed.append(read_record(path, self.root))
        gone = [n for n in known if n not in seen]
        counts["removed"] = len(gone)
        if not changed and not gone:
            return counts
        with self.db:
            for name in gone + [r.name for r in changed]:
                self.db.execute("DELETE FROM runs WHERE name = ?", (name,))
                self.db.execute("DELETE FROM vals WHERE run = ?", (name,))
            for r in changed:
                self._insert(r)
        return counts

    def _insert(self, r: RunRecord) -> None:
        self.db.execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (r.name, r.command, r.dataset, r.model, r.defense, r.attack, r.created,
             _signature(r.path), json.dumps(r.config, default=str),
             json.dumps(r.metrics, default=str), "\n".join(r.notes)))
        rows = [(r.name, source, k, _num(v), _text(v))
                for source, d in (("metrics", r.metrics), ("config", r.config))
                for k, v in flat_scalars(d)]
        self.db.executemany("INSERT INTO vals VALUES (?, ?, ?, ?, ?)", rows)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> RunIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # queries

    def _record(self, row: Sequence[Any]) -> RunRecord:
        name, command, dataset, model, defense, attack, created, config, metrics, notes = row
        path = self.root if name == "." else self.root / name
        return RunRecord(name, path, command, dataset, model, defense, attack, created,
                         json.loads(config), json.loads(metrics),
                         tuple(n for n in (notes or "").split("\n") if n))

    _COLUMNS = "name, command, dataset, model, defense, attack, created, config, metrics, notes"

    def all(self) -> list[RunRecord]:
        rows = self._query(f"SELECT {self._COLUMNS} FROM runs ORDER BY created, name")
        return [self._record(r) for r in rows]

    def keys(self, source: str | None = None) -> list[str]:
        """Every dotted key indexed (of the metrics, the configuration, or both)."""
        q = "SELECT DISTINCT key FROM vals" + (" WHERE source = ?" if source else "")
        return sorted(k for (k,) in self._query(q, (source,) if source else ()))

    def select(self, *, command: str | None = None, dataset: str | None = None,
               model: str | None = None, defense: str | None = None,
               attack: str | None = None, where: Iterable[Condition | str] = (),
               sort: str | None = None, descending: bool = False,
               limit: int | None = None) -> list[RunRecord]:
        """The runs passing every filter, sorted by ``sort`` (a field or any key; runs without
        it last) or by creation time. A ``where`` key no run has is an error naming close
        ones (a typo would otherwise silently select nothing)."""
        conds = [c if isinstance(c, Condition) else Condition.parse(c) for c in where]
        sql, args = [], []
        for col, want in (("dataset", dataset), ("model", model), ("defense", defense),
                          ("attack", attack)):
            if want is not None:
                sql.append(f"lower({col}) = lower(?)")
                args.append(want)
        for c in conds:
            self._check_key(c.key)
            if c.key in FIELDS and c.key not in self.keys():
                col_sql = f"{c.key} {_SQL_OPS[c.op]} ?"
                sql.append(col_sql)
                args.append(c.value)
                continue
            if isinstance(c.value, str):
                test = f"v.text {_SQL_OPS[c.op]} ?"
            else:
                test = f"v.num IS NOT NULL AND v.num {_SQL_OPS[c.op]} ?"
            # the metric if the run has it, else the configuration's key (max: metrics > config)
            sql.append("EXISTS (SELECT 1 FROM vals v WHERE v.run = runs.name AND v.key = ? "
                       "AND v.source = (SELECT max(source) FROM vals w WHERE w.run = runs.name "
                       f"AND w.key = ?) AND {test})")
            args += [c.key, c.key, c.value]
        q = f"SELECT {self._COLUMNS} FROM runs"
        if sql:
            q += " WHERE " + " AND ".join(sql)
        q += " ORDER BY created, name"
        runs = [self._record(r) for r in self._query(q, args)]
        if command is not None:
            runs = [r for r in runs if command_matches(r.command, command)]
        if sort is not None:
            self._check_key(sort)
            present = [r for r in runs if _sort_key(r.value(sort)) is not None]
            absent = [r for r in runs if _sort_key(r.value(sort)) is None]
            present.sort(key=lambda r: _sort_key(r.value(sort)), reverse=descending)
            runs = present + absent
        elif descending:
            runs.reverse()
        return runs[:limit] if limit is not None else runs

    def _check_key(self, key: str) -> None:
        if key in FIELDS:
            return
        keys = self.keys()
        if keys and key not in keys:
            close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"expected a metric or configuration key of the runs under "
                             f"{self.root}, got {key!r}{hint}")

    def get(self, run: str | Path) -> RunRecord:
        """The run named ``run``: its name under the root, its path, or a unique beginning or
        part of its name (``attack-2025``, ``classifier``, a timestamp)."""
        runs = self.all()
        p = Path(run)
        for r in runs:
            if r.name == str(run) or r.name == p.as_posix():
                return r
        try:
            resolved = p.resolve()
            for r in runs:
                if r.path.resolve() == resolved:
                    return r
        except OSError:
            pass
        if p.is_dir() and is_run_dir(p):  # a run outside the root: read it directly
            return read_record(p.resolve(), p.resolve())
        for part in ([r for r in runs if r.name.startswith(str(run))],
                     [r for r in runs if str(run) in r.name]):
            if len(part) == 1:
                return part[0]
        if len(part) > 1:
            shown = ", ".join(r.name for r in part[:6]) + (" ..." if len(part) > 6 else "")
            raise ValueError(f"expected one run, got {len(part)} under {self.root} matching "
                             f"{str(run)!r}: {shown}")
        close = difflib.get_close_matches(str(run), [r.name for r in runs], n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"no run {str(run)!r} under {self.root}{hint}")

    def best(self, metric: str, *, lowest: bool = False, **filters: Any) -> RunRecord:
        """The run with the highest (``lowest``: smallest) numeric ``metric`` among those the
        filters of ``select`` keep."""
        self._check_key(metric)
        runs = [r for r in self.select(**filters) if _num(r.value(metric)) is not None]
        if not runs:
            raise ValueError(f"no run under {self.root} has a numeric {metric!r}"
                             + (" among those selected" if any(filters.values()) else ""))
        pick = min if lowest else max
        return pick(runs, key=lambda r: _num(r.value(metric)))


def _sort_key(v: Any) -> tuple[int, float | str] | None:
    n = _num(v)
    if n is not None:
        return (0, n)
    return (1, v) if isinstance(v, str) else None


def headline(r: RunRecord) -> dict[str, Any]:
    """The numbers ``runs list`` shows of a run: accuracy (test or clean), robust accuracy,
    whether its checks passed."""
    m = r.metrics
    acc = m.get("test_acc", m.get("clean_accuracy"))
    if acc is None and isinstance(m.get("classifier"), dict):  # a demo
        acc = m["classifier"].get("test_acc")
    robust = m.get("robust_accuracy")
    if robust is None and isinstance(m.get("attacks"), dict):
        pgd = m["attacks"].get("pgd")
        robust = pgd.get("robust_accuracy") if isinstance(pgd, dict) else None
    return {"accuracy": acc, "robust_accuracy": robust, "reliable": m.get("reliable")}


ABSENT = type("Absent", (), {"__repr__": lambda self: "ABSENT"})()  # a key a run lacks


def config_differences(runs: Sequence[RunRecord]) -> list[tuple[str, list[Any]]]:
    """The configuration keys whose values are not the same in every run, with each run's
    value (``ABSENT`` where the run has no such key; None is a null value)."""
    flats = [dict(flat_config(r.config)) for r in runs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    out = []
    for k in keys:
        values = [f.get(k, ABSENT) for f in flats]
        if any(v != values[0] for v in values[1:]):
            out.append((k, values))
    return out


flat_config = flatten  # {"train": {"lr": 0.1}} -> [("train.lr", 0.1)], as the report shows it


def when(t: float) -> str:
    return time.strftime("%y-%m-%d %H:%M", time.localtime(t)) if t else "?"


__all__ = ["ABSENT", "INDEX", "Condition", "RunIndex", "RunRecord", "command_matches",
           "config_differences", "find_run_dirs", "flat_config", "flat_scalars", "headline",
           "normalize_command", "read_record", "when"]
