"""Run directories: where every command that produces results writes them.

A run directory holds ``config.yaml`` (the resolved configuration), ``metrics.json``,
``log.txt``, weights and ``figures/``. By default it is a new ``runs/<command>-<timestamp>``
under the working directory; ``--out DIR`` names it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from advlab.io import write_json, write_text


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def figures(self) -> Path:
        p = self.path / "figures"
        p.mkdir(parents=True, exist_ok=True)
        return p

    def file(self, name: str) -> Path:
        return self.path / name

    def write_config(self, config: dict[str, Any]) -> None:
        write_text(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        p = self.path / "config.yaml"
        if not p.is_file():
            raise FileNotFoundError(f"{self.path} is not a run directory (no config.yaml)")
        return yaml.safe_load(p.read_text(encoding="utf-8")) or {}

    def write_metrics(self, metrics: dict[str, Any], name: str = "metrics.json") -> Path:
        write_json(self.path / name, metrics)
        return self.path / name


def new_run_dir(command: str, out: str | Path | None = None, *, exist_ok: bool = False,
                root: str | Path = "runs") -> RunDir:
    """Create ``out`` (or ``runs/<command>-<timestamp>``) and return it.

    ``exist_ok=False`` refuses to write into a non-empty directory, so no earlier result is
    overwritten by accident (``--resume`` passes ``exist_ok=True``).
    """
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(root) / f"{command}-{stamp}"
        path, i = base, 1
        while path.exists():
            path, i = Path(f"{base}-{i}"), i + 1
    else:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise ValueError(f"--out {path}: exists and is not a directory")
        if path.is_dir() and any(path.iterdir()) and not exist_ok:
            raise ValueError(f"--out {path}: directory is not empty; choose a new one "
                             f"(or pass --resume to continue the run in it)")
    path.mkdir(parents=True, exist_ok=True)
    return RunDir(path)


def open_run_dir(path: str | Path) -> RunDir:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no run directory at {path}")
    return RunDir(path)


def attach_log_file(run: RunDir, level: int = logging.INFO) -> logging.Handler:
    """Send advlab's log records to ``<run>/log.txt`` (appending, so a resume keeps history)."""
    handler = logging.FileHandler(run.path / "log.txt", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(level)
    logger = logging.getLogger("advlab")
    logger.addHandler(handler)
    logger.setLevel(min(logger.level or level, level))
    return handler
