"""Issue 16, items 7, 8 and 15: every file advlab writes honours the umask; a write that fails
(disk full, read-only file system, no permission) is a one-line error naming the file, and the
previous version survives; a run directory that cannot be created says where and why."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError
from typer.testing import CliRunner

from advlab import io, models
from advlab.cli.main import app
from advlab.runs import new_run_dir
from advlab.weights import save_model

runner = CliRunner()


@pytest.fixture
def umask():
    """Set the process umask for a test, restored after."""
    old = os.umask(0o022)
    os.umask(old)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _writers(tmp_path: Path) -> dict[str, Path]:
    """One file of every kind advlab writes atomically."""
    from advlab.data.cache import _save_atomic
    from advlab.report import figures

    model = models.create("lrl", dataset="digits")
    out = {"text": tmp_path / "config.yaml", "json": tmp_path / "metrics.json",
           "state": tmp_path / "checkpoint.safetensors", "npy": tmp_path / "cache.npy",
           "figure": tmp_path / "figure.png"}
    io.write_text(out["text"], "a: 1\n")
    io.write_json(out["json"], {"a": 1})
    io.save_state(out["state"], {"w": torch.zeros(3)})
    _save_atomic(out["npy"], np.zeros(3))
    import matplotlib.pyplot as plt

    figures.save(plt.figure(), out["figure"])
    out["weights"] = save_model(tmp_path / "run", model)
    out["weights.json"] = out["weights"].with_suffix(".json")
    return out


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_every_atomic_writer_honours_the_umask(tmp_path, umask, mask):
    umask(mask)
    for kind, path in _writers(tmp_path).items():
        assert _mode(path) == 0o666 & ~mask, kind


def test_a_run_directory_files_have_the_modes_of_its_log(tmp_path, umask):
    from advlab.runs import log_to_run

    umask(0o022)
    run = new_run_dir("x", tmp_path / "run")
    run.write_config({"command": "x"})
    run.write_metrics({"a": 1})
    with log_to_run(run):
        import logging

        logging.getLogger("advlab.test").warning("hello")
    modes = {p.name: _mode(p) for p in run.path.iterdir() if p.is_file()}
    assert modes["config.yaml"] == modes["metrics.json"] == modes["log.txt"] == 0o644


def test_download_honours_the_umask(tmp_path, umask, monkeypatch):
    from advlab.data import fetch

    umask(0o027)
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    dest = fetch.download(src.as_uri(), tmp_path / "out" / "data.bin", None)
    assert dest.read_bytes() == b"abc" and _mode(dest) == 0o640


# --- item 8: a full disk -----------------------------------------------------------------


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _full_safetensors(*args, **kwargs):
    raise SafetensorError("Error while serializing: I/O error: No space left on device "
                          "(os error 28)")


@pytest.mark.parametrize("kind", ["text", "json", "state"])
def test_a_full_disk_is_a_one_line_error_and_the_previous_file_survives(tmp_path, monkeypatch,
                                                                        kind):
    path = tmp_path / {"text": "config.yaml", "json": "metrics.json",
                       "state": "checkpoint.safetensors"}[kind]
    write = {"text": lambda: io.write_text(path, "new"),
             "json": lambda: io.write_json(path, {"new": 1}),
             "state": lambda: io.save_state(path, {"w": torch.ones(2)})}[kind]
    write()
    before = path.read_bytes()
    monkeypatch.setattr(Path, "write_text", _full)
    monkeypatch.setattr(io, "save_file", _full_safetensors)
    with pytest.raises(io.DiskFullError) as info:
        write()
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "disk is full" in message
    assert "left as it was" in message
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert isinstance(info.value, ValueError)  # every command reports it in one line
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary file left


def test_other_write_failures_name_the_file_and_the_reason(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "write_text", read_only)
    with pytest.raises(io.WriteError, match=rf"cannot write {path}: read-only file system"):
        io.write_json(path, {})
    assert not path.exists() and os.listdir(tmp_path) == []


def test_a_full_disk_while_training_names_the_checkpoint_and_how_to_resume(tmp_path,
                                                                           monkeypatch):
    """The checkpoint of epoch 2 fails to be written: one line that says the disk is full,
    that epoch 1's checkpoint survives (its path) and how to continue; the resume works."""
    out = tmp_path / "run"
    calls = {"n": 0}
    real = io.save_file

    def full_at_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            _full_safetensors()
        return real(*args, **kwargs)

    monkeypatch.setattr(io, "save_file", full_at_second)
    args = ["train", "classifier", "--model", "lrl", "--n-train", "200", "--epochs", "3",
            "--device", "cpu", "--no-progress", "--out", str(out)]
    res = runner.invoke(app, args)
    text = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert "disk is full" in text and "epoch 1" in text and "--resume" in text
    assert str(out / "checkpoint.safetensors") in text
    assert "Traceback" not in res.output
    monkeypatch.setattr(io, "save_file", real)
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output


def test_a_full_disk_while_attacking_is_a_one_line_error(tmp_path, monkeypatch):
    clf = tmp_path / "clf"
    res = runner.invoke(app, ["train", "classifier", "--model", "lrl", "--n-train", "200",
                              "--epochs", "1", "--device", "cpu", "--no-progress",
                              "--out", str(clf)])
    assert res.exit_code == 0, res.output
    monkeypatch.setattr(Path, "write_text", _full)
    res = runner.invoke(app, ["attack", str(clf), "--attack", "fgsm", "--eps", "0.1",
                              "--n", "20", "--no-progress", "--out", str(tmp_path / "att")])
    assert res.exit_code == 2, res.output
    assert "disk is full" in " ".join(res.output.split())
    assert "Traceback" not in res.output


# --- item 7: a run directory that cannot be created -----------------------------------------


def test_out_under_a_regular_file_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=rf"{blocker} is a file, not a directory"):
        new_run_dir("train", blocker / "run")
    with pytest.raises(ValueError, match=rf"{blocker} is a file, not a directory"):
        new_run_dir("eval", root=blocker / "runs")  # the default runs/<command>-<time>


@pytest.mark.parametrize("err", [errno.EROFS, errno.EACCES])
def test_out_on_a_read_only_or_forbidden_place_is_a_one_line_error(tmp_path, monkeypatch, err):
    def refuse(*args, **kwargs):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "mkdir", refuse)
    reason = os.strerror(err).lower()
    with pytest.raises(ValueError, match=rf"cannot create the run directory .*new.*: {reason}"):
        new_run_dir("train", tmp_path / "new")
    with pytest.raises(ValueError, match=rf"cannot create the run directory .*: {reason}"):
        new_run_dir("eval", root=tmp_path / "runs")


def test_an_existing_directory_that_cannot_be_written_is_a_one_line_error(tmp_path,
                                                                          monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    real = os.open

    def refuse(path, *args, **kwargs):
        if str(path).startswith(str(out)):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(ValueError, match=rf"cannot write into the run directory {out}: "
                                         r"permission denied"):
        new_run_dir("train", out)


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clf") / "run"
    res = runner.invoke(app, ["train", "classifier", "--model", "lrl", "--n-train", "200",
                              "--epochs", "1", "--device", "cpu", "--no-progress",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("command", [
    ["train", "classifier", "--model", "lrl", "--epochs", "1", "--device", "cpu"],
    ["train", "generative", "--dataset", "ring8", "--epochs", "1", "--device", "cpu"],
    ["demo", "--quick", "--device", "cpu"],
    ["eval", "RUN"],
    ["eval", "robust", "RUN", "--suite", "quick", "--eps", "0.1", "--n", "10"],
    ["attack", "RUN", "--attack", "fgsm", "--eps", "0.1", "--n", "10"],
    ["defend", "svd", "RUN", "--n", "10"],
])
def test_every_command_reports_an_out_under_a_file_in_one_line(tmp_path, command,
                                                               classifier_run):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    command = [str(classifier_run) if a == "RUN" else a for a in command]
    res = runner.invoke(app, [*command, "--out", str(blocker / "run")])
    assert res.exit_code == 2, res.output
    assert "is a file, not a directory" in " ".join(res.output.split())
    assert "Traceback" not in res.output



def test_a_log_file_that_stops_being_writable_is_reported_once_not_per_record(tmp_path,
                                                                              capsys):
    """A full disk also stops log.txt: one line on stderr, then the records go on to the
    console only (no '--- Logging error ---' traceback for every record)."""
    import logging

    from advlab.runs import log_to_run

    run = new_run_dir("x", tmp_path / "run")

    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

        def close(self):
            pass

    log = logging.getLogger("advlab.test_full")
    with log_to_run(run):
        handler = next(h for h in logging.getLogger("advlab").handlers
                       if isinstance(h, logging.FileHandler))
        handler.stream = Full()
        for i in range(3):
            log.info("record %d", i)
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err
    assert err.count("log.txt") == 1 and "disk is full" in err


def test_a_run_whose_final_writes_failed_is_completed_by_resume(tmp_path, monkeypatch):
    """The disk fills when metrics.json is written, after the last epoch: the message names
    the final checkpoint; --resume with the same options writes the results, training no
    further epoch."""
    import json

    real = Path.write_text

    def full_for_metrics(self, *args, **kwargs):
        if self.name.startswith(".metrics.json."):
            _full()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_for_metrics)
    out = tmp_path / "run"
    args = ["train", "classifier", "--model", "lrl", "--n-train", "200", "--epochs", "2",
            "--device", "cpu", "--no-progress", "--out", str(out)]
    res = runner.invoke(app, args)
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "disk is full" in text and "epoch 2" in text, res.output
    assert not (out / "metrics.json").exists()
    monkeypatch.undo()
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2]
