"""Run directories: where every command that produces results writes them.

A run directory holds ``config.yaml`` (the resolved configuration), ``metrics.json``,
``log.txt``, weights and ``figures/``. By default it is a new ``runs/<command>-<timestamp>``
under the working directory; ``--out DIR`` names it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from advlab.io import DiskFullError, WriteError, reason, write_json, write_text


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def figures(self) -> Path:
        """``<run>/figures``, created if it can be; if it cannot, each figure written into it
        is reported and skipped (``report.figures.save``), the numbers are written all the
        same. Under torchrun only rank 0 creates it (``_writes``)."""
        p = self.path / "figures"
        try:
            if _writes():
                p.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass
        return p

    def file(self, name: str) -> Path:
        return self.path / name

    def write_config(self, config: dict[str, Any]) -> None:
        if _writes():
            write_text(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        p = self.path / "config.yaml"
        if not p.is_file():
            raise FileNotFoundError(f"{self.path} is not a run directory (no config.yaml)")
        try:
            config = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ValueError(f"{p}: not valid YAML ({e})") from None
        config = {} if config is None else config
        if not isinstance(config, dict):
            raise ValueError(f"{p}: expected a YAML mapping, got {type(config).__name__}")
        return config

    def write_metrics(self, metrics: dict[str, Any], name: str = "metrics.json") -> Path:
        if _writes():
            write_json(self.path / name, metrics)
        return self.path / name


def _writes() -> bool:
    """False on the ranks other than 0 of a torchrun job: rank 0 alone writes the run
    directory (``advlab.distributed``); True for a single process."""
    if "advlab.distributed" not in sys.modules:  # never imported: no process group of ours
        return True
    from advlab import distributed

    return distributed.is_main()


def resumable_view(config: dict[str, Any], free: tuple[str, ...] = ("data_dir",)
                   ) -> dict[str, Any]:
    """The part of a run's configuration a resume must keep: everything but the ``free`` keys
    and the ``train`` section's ``epochs`` and ``device`` (a resume may train longer, elsewhere).
    """
    train = config.get("train") or {}
    if isinstance(train, dict):
        train = {k: v for k, v in train.items() if k not in ("epochs", "device", "compile")}
    return {**{k: v for k, v in config.items() if k not in free}, "train": train}


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Settings added after runs were already written, with the value those runs had: a run whose
# config lacks one continues when the value given now is that default.
ADDED_SETTINGS: dict[str, Any] = {"train.amp": "none"}


def _differences(saved_config: dict[str, Any], config: dict[str, Any], free: tuple[str, ...],
                 where: str) -> list[str]:
    """``key: <saved> in <where>, <given> given`` for every key of the resumable views that
    differs (``resumable_view``)."""
    # as JSON gives them back: a tuple in the job is the list its recorded config holds
    saved, given = (_flat(resumable_view(json.loads(json.dumps(c, default=str)), free))
                    for c in (saved_config, config))
    saved = {**{k: v for k, v in ADDED_SETTINGS.items() if k in given}, **saved}

    def show(values: dict[str, Any], key: str) -> str:
        return repr(values[key]) if key in values else "absent"

    return [f"{k}: {show(saved, k)} in {where}, {show(given, k)} given"
            for k in sorted(set(saved) | set(given), key=str)
            if k not in saved or k not in given or saved[k] != given[k]]


def checkpoint_run_config(checkpoint: str | Path) -> dict[str, Any] | None:
    """The run configuration a training checkpoint recorded (``metadata.run_config``, read
    from its header only), or None for a checkpoint that records none (older runs)."""
    from advlab.io import load_state_meta

    meta = load_state_meta(checkpoint).get("metadata")
    config = meta.get("run_config") if isinstance(meta, dict) else None
    return config if isinstance(config, dict) else None


def saved_run_config(path: str | Path, checkpoint: str = "checkpoint.safetensors"
                     ) -> dict[str, Any] | None:
    """The configuration of the run in ``path``: its config.yaml, else the one its checkpoint
    recorded (config.yaml lost), else None."""
    run = RunDir(Path(path))
    if (run.path / "config.yaml").is_file():
        return run.read_config()
    ckpt = run.path / checkpoint
    return checkpoint_run_config(ckpt) if ckpt.is_file() else None


def check_resume(run: RunDir | str | Path, config: dict[str, Any],
                 free: tuple[str, ...] = ("data_dir",),
                 may_change: str = "--epochs and --device", *,
                 checkpoint: str | None = None) -> None:
    """Raise ``ValueError`` unless a resume of the job ``config`` into ``run`` continues the
    job the run holds; reads only, so a refused resume leaves the run as it was.

    With ``checkpoint`` (the checkpoint's file name in the run) the run must hold config.yaml
    or that checkpoint (else there is nothing to resume), and the configuration the checkpoint
    recorded is the reference: it is compared as config.yaml is, so a lost or edited
    config.yaml cannot make a run continue another job. Every key (``train.lr``) that differs
    outside what a resume may change (``resumable_view``) is named.
    """
    path = run.path if isinstance(run, RunDir) else Path(run)
    run = RunDir(path)
    ckpt = path / checkpoint if checkpoint else None
    has_yaml = (path / "config.yaml").is_file()
    if ckpt is not None and not has_yaml and not ckpt.is_file():
        raise ValueError(f"--resume: {path} holds no run to continue (no config.yaml, no "
                         f"{checkpoint}): nothing to resume; drop --resume to start a new run")
    references = []
    if has_yaml:
        references.append((run.read_config(), "its config.yaml", "the run"))
    if ckpt is not None and ckpt.is_file():
        recorded = checkpoint_run_config(ckpt)
        if recorded is not None:
            references.append((recorded, f"its checkpoint {ckpt}", "the checkpoint"))
    for saved_config, source, where in references:
        theirs, ours = saved_config.get("command"), config.get("command")
        if theirs != ours:
            raise ValueError(f"cannot resume {path}: it is a {theirs!r} run, not a {ours!r} "
                             f"one ({source} says so); choose another --out")
        diffs = _differences(saved_config, config, free, where)
        if diffs:
            raise ValueError(f"cannot resume {path}: {source} differs from the options given "
                             f"({'; '.join(diffs)}); only {may_change} may change")


def check_epochs(run: RunDir, checkpoint: Path, epochs: int) -> None:
    """Raise ``ValueError`` if the run's ``checkpoint`` has completed more than ``epochs``
    epochs: a resume may extend a run, never shorten one that is further along (its config
    would then claim fewer epochs than its weights have)."""
    if not checkpoint.is_file():
        return
    from advlab.io import load_state_meta

    done = load_state_meta(checkpoint).get("epoch")  # the header only, not the weights
    if isinstance(done, int) and done > epochs:
        raise ValueError(f"cannot resume {run.path}: it has completed {done} epochs, more than "
                         f"--epochs {epochs}; pass --epochs {done} or more")


MARKER = ".advlab-run"  # created exclusively: the one command that made the directory its run


def check_out(out: str | Path | None, *, exist_ok: bool = False,
              resumable: bool = False) -> None:
    """Raise ``ValueError`` if ``out`` cannot become a new run directory (``exist_ok=False``:
    it is a file or a non-empty directory); cheap, for a command to call before its work.
    ``resumable``: the command has ``--resume`` (the message then offers it); with
    ``exist_ok`` (a resume) ``out`` must then exist."""
    if out is None:
        return
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path}: exists and is not a directory")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise WriteError(f"cannot create the run directory {path}: {blocker} is a file, not a "
                         f"directory", errno.ENOTDIR)
    if exist_ok and resumable and not path.exists():  # --resume of a run that is not there
        raise ValueError(f"--resume: no run directory at {path} to continue (a typo?); drop "
                         f"--resume to start a new run there")
    if path.is_dir() and any(path.iterdir()) and not exist_ok:
        hint = " (or pass --resume to continue the run in it)" if resumable else ""
        raise ValueError(f"--out {path}: directory is not empty; choose a new one{hint}")


def _claim(path: Path) -> bool:
    """Create ``path/MARKER`` exclusively: True for exactly one caller, even concurrent ones."""
    try:
        os.close(os.open(path / MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except FileExistsError:
        return False
    return True


def _cannot_create(path: Path, err: OSError, verb: str = "create the run directory") \
        -> WriteError:
    """A one-line ``WriteError`` for a run directory ``path`` that cannot be made or written:
    the path and the reason (a regular file in the way is named)."""
    if isinstance(err, WriteError):
        return err
    if isinstance(err, (NotADirectoryError, FileExistsError)):
        blocker = next((p for p in [*reversed(path.parents), path]
                        if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return WriteError(f"cannot {verb} {path}: {blocker} is a file, not a directory",
                              errno.ENOTDIR)
    return WriteError(f"cannot {verb} {path}: {reason(err)}", err.errno)


def _made(path: Path) -> RunDir:
    from advlab.report.html import note_run  # the command line reports the runs it made

    note_run(path)
    return RunDir(path)


def new_run_dir(command: str, out: str | Path | None = None, *, exist_ok: bool = False,
                root: str | Path = "runs", resumable: bool = False) -> RunDir:
    """Create ``out`` (or ``runs/<command>-<timestamp>``) and return it.

    Under torchrun rank 0 creates it once every rank got here, and every rank gets the same
    directory, or the same error (``advlab.distributed.on_main``); the other ranks write
    nothing into it (``RunDir``'s writers, ``log_to_run`` and ``lock_run`` do nothing there).
    """
    if "advlab.distributed" in sys.modules:
        from advlab import distributed

        if distributed.active():
            return distributed.on_main(_new_run_dir, command, out, exist_ok=exist_ok,
                                       root=root, resumable=resumable)
    return _new_run_dir(command, out, exist_ok=exist_ok, root=root, resumable=resumable)


def _new_run_dir(command: str, out: str | Path | None = None, *, exist_ok: bool = False,
                 root: str | Path = "runs", resumable: bool = False) -> RunDir:
    """``new_run_dir`` in one process.

    ``exist_ok=False`` refuses to write into a non-empty directory, so no earlier result is
    overwritten by accident (``--resume`` passes ``exist_ok=True``). The directory is claimed
    atomically (an exclusively created marker file), so two commands started at once with the
    same ``--out``, or in the same second without one, never share a directory. A directory
    that cannot be created or written (read-only file system, no permission, a regular file
    in the way) raises a one-line ``WriteError`` (a ``ValueError``) naming it and the reason.
    """
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(root) / f"{command}-{stamp}"
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _cannot_create(base, e) from None
        path, i = base, 1
        while True:
            try:
                path.mkdir()
            except FileExistsError:
                path, i = Path(f"{base}-{i}"), i + 1
                continue
            except OSError as e:
                raise _cannot_create(path, e) from None
            try:
                _claim(path)
            except OSError as e:
                raise _cannot_create(path, e, "write into the run directory") from None
            return _made(path)
    path = Path(out)
    check_out(path, exist_ok=exist_ok, resumable=resumable)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _cannot_create(path, e) from None
    try:
        claimed = _claim(path)
    except OSError as e:
        raise _cannot_create(path, e, "write into the run directory") from None
    if not claimed and not exist_ok:
        raise ValueError(f"--out {path}: directory is not empty (another advlab command has "
                         f"just claimed it); choose a new one")
    return _made(path)


LOCK = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:  # platforms without signal 0: assume the holder is gone
        return False
    try:  # Linux: a zombie (exited, not yet reaped by its parent) still answers signal 0
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, field 22 of /proc/PID/stat), or
    None where /proc does not tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


def _command_line(pid: int) -> str | None:
    """The command line of process ``pid`` (/proc/PID/cmdline), or None where unknown."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return " ".join(a.decode("utf-8", "replace") for a in raw.split(b"\0") if a) or None


def _read_lock(path: Path) -> tuple[int, str | None]:
    """(PID, start time or None) written in the lock file ``path``; (0, None) if unreadable."""
    try:
        fields = path.read_text(encoding="utf-8").split()
        return int(fields[0]) if fields else 0, fields[1] if len(fields) > 1 else None
    except (OSError, ValueError):
        return 0, None


def _holder(path: Path, run: RunDir) -> str | None:
    """Why the lock ``path`` is held (the message of the refusal), or None if it is stale:
    its process is gone, or the PID now belongs to a process started at another time."""
    pid, started = _read_lock(path)
    if not pid or pid == os.getpid() or not _alive(pid):
        return None
    now = _start_time(pid)
    if started is not None and now is not None and started != now:
        return None  # the PID was reused: the process that took the lock is gone
    remove = (f"if no advlab command is training into {run.path}, remove {path} and run "
              f"again")
    cmdline = _command_line(pid)
    if cmdline is None:
        return (f"{run.path} is locked by process {pid}, whose command line cannot be read "
                f"(it may be an advlab command training into it): {remove}")
    if "advlab" not in cmdline.lower():
        shown = cmdline if len(cmdline) <= 80 else cmdline[:77] + "..."
        return (f"{run.path} is locked by process {pid}, which is not advlab ({shown}); the "
                f"advlab process that took the lock has probably ended and its PID been "
                f"reused: {remove}")
    return (f"{run.path} is in use: advlab process {pid} is training into it; wait for it to "
            f"finish or stop it ({remove})")


@contextmanager
def lock_run(run: RunDir) -> Iterator[None]:
    """Hold ``<run>/.lock`` (this process's PID and start time) while a training job writes
    into ``run``.

    Two processes training into one directory (a second ``--resume`` while the first still
    runs) would overwrite each other's checkpoints; the second gets a ``ValueError`` naming the
    first's PID. A lock left by a process that is gone (killed), or whose PID now belongs to a
    process started later, is taken over; a lock whose PID belongs to a program that is not
    advlab is refused with a message saying how to remove it. The lock is per machine:
    processes on other hosts sharing the directory are not seen.
    """
    path = run.path / LOCK
    if not _writes():  # rank 0 of a torchrun job holds the lock for all its ranks
        yield
        return
    while True:
        if path.is_dir() or (path.exists() and not path.is_file()):
            kind = "a directory" if path.is_dir() else "not a regular file"
            raise ValueError(f"{path} is {kind}, not the run's lock file; remove it and run "
                             f"again")
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            if path.is_dir():
                continue  # made a directory meanwhile: refused above
            held = _holder(path, run)
            if held is not None:
                raise ValueError(held) from None
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        except OSError as e:
            raise WriteError(f"cannot write the lock file {path}: {reason(e)}", e.errno) \
                from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            start = _start_time(os.getpid())
            f.write(f"{os.getpid()} {start}" if start is not None else str(os.getpid()))
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def open_run_dir(path: str | Path) -> RunDir:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no run directory at {path}")
    return RunDir(path)


class _RunLog(logging.FileHandler):
    """A run's log.txt. A record that cannot be written (full disk) is reported in one line
    on stderr, once; the log file is then given up (its records still reach the console),
    instead of a '--- Logging error ---' traceback for every record."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        self.failed = True
        err = sys.exc_info()[1]
        why = reason(err) if isinstance(err, OSError) else str(err)
        sys.stderr.write(f"warning: cannot write {self.baseFilename}: {why}; the rest of "
                         f"this run's log goes to the console only\n")

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)


@contextmanager
def log_to_run(run: RunDir, level: int = logging.INFO) -> Iterator[None]:
    """Send advlab's log records to ``<run>/log.txt`` while the block runs (appending, so a
    resume keeps history); the handler is removed and closed afterwards, also on errors.
    Under torchrun only rank 0 writes the log."""
    if not _writes():
        yield
        return
    try:
        handler = _RunLog(run.path / "log.txt", encoding="utf-8")
    except OSError as e:
        raise _cannot_create(run.path / "log.txt", e, "write the log") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(level)
    logger = logging.getLogger("advlab")
    logger.addHandler(handler)
    logger.setLevel(min(logger.level or level, level))
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


CHECKPOINT = "checkpoint.safetensors"  # the resumable state of every training job


def resume_hint(run: RunDir, checkpoint: str = CHECKPOINT) -> str:
    """What survives an interrupted training run and how to continue it: the last checkpoint
    (its epoch and path) and ``--resume``, or that no epoch was checkpointed."""
    ckpt = run.path / checkpoint
    epoch = None
    if ckpt.is_file():
        from advlab.io import load_state_meta

        try:
            epoch = load_state_meta(ckpt).get("epoch")
        except ValueError:
            epoch = None
    if isinstance(epoch, int):
        return (f"the last checkpoint (epoch {epoch}) survives at {ckpt}; run the same "
                f"command with --resume --out {run.path} to continue from it")
    return (f"no epoch was checkpointed in {run.path}; run the same command with --resume "
            f"--out {run.path} to start it again")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during a training job; its message says what survives and how to continue."""


@contextmanager
def training_run(run: RunDir) -> Iterator[None]:
    """What a training job holds on its run directory: the lock (``lock_run``) and the log.

    A full disk (``DiskFullError`` from any writer) ends the job with a one-line error that
    says so, names the checkpoint that survives and how to resume (``resume_hint``); Ctrl-C
    raises ``TrainingInterrupted`` (a ``KeyboardInterrupt``) saying the same."""
    with lock_run(run), log_to_run(run):
        try:
            yield
        except DiskFullError as e:
            raise DiskFullError(f"{e}; {resume_hint(run)} once space is freed",
                                e.errno) from e
        except KeyboardInterrupt as e:
            if isinstance(e, TrainingInterrupted):
                raise
            raise TrainingInterrupted(resume_hint(run)) from None
