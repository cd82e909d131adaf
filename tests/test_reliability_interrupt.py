"""Issue 16, item 14: ``data prepare`` says that a local archive failed its checksum before it
downloads another; Ctrl-C during training says how to continue (``--resume``), exit 130."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from advlab.cli.main import app
from advlab.data import DataError

runner = CliRunner()


def test_prepare_says_a_local_archive_failed_its_checksum_before_downloading(tmp_path,
                                                                              monkeypatch,
                                                                              caplog):
    from advlab.data import catalog

    archive = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"half a download")
    said_before = []

    def offline(resource, directory):
        said_before.append("checksum" in caplog.text)
        raise DataError("could not download cifar-10-python.tar.gz (offline test)")

    monkeypatch.setattr(catalog, "fetch", offline)
    with caplog.at_level(logging.WARNING, logger="advlab"):
        res = runner.invoke(app, ["data", "prepare", "cifar10", "--data-dir", str(tmp_path)])
    assert res.exit_code == 2 and said_before == [True]
    warning = next(r.getMessage() for r in caplog.records if "checksum" in r.getMessage())
    assert str(archive) in warning and "downloading it again" in warning
    assert hashlib.md5(b"half a download").hexdigest() in warning and "expected" in warning


@pytest.mark.parametrize("command", [
    ["train", "classifier", "--model", "lrl", "--n-train", "200"],
    ["train", "generative", "--dataset", "ring8", "--steps-per-epoch", "2"],
])
def test_ctrl_c_while_training_says_how_to_resume_and_exits_130(tmp_path, monkeypatch,
                                                                command):
    """Ctrl-C after the first epoch's checkpoint: a line naming it and --resume, status 130;
    the resume then finishes the run."""
    from advlab.io import save_state as real_save

    calls = {"n": 0}

    def interrupt_at_second(path, state):
        real_save(path, state)
        if str(path).endswith("checkpoint.safetensors"):
            calls["n"] += 1
            if calls["n"] == 1:
                raise KeyboardInterrupt

    import advlab.generative.train as gen_train
    import advlab.train.loop as loop

    monkeypatch.setattr(loop, "save_state", interrupt_at_second)
    monkeypatch.setattr(gen_train, "save_state", interrupt_at_second)
    out = tmp_path / "run"
    args = [*command, "--epochs", "3", "--device", "cpu", "--no-progress", "--out", str(out)]
    res = runner.invoke(app, args)
    text = " ".join(res.output.split())
    assert res.exit_code == 130, res.output
    assert "interrupted" in text and "epoch 1" in text and "--resume" in text
    assert str(out / "checkpoint.safetensors") in text
    assert not (out / ".lock").exists()
    monkeypatch.undo()
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output


@pytest.mark.slow  # about 9 s: a real process, started and interrupted
@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_a_real_sigint_exits_130_with_the_resume_line(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "advlab.cli.main", "train", "classifier", "--dataset",
            "digits", "--model", "lrl", "--epochs", "100000", "--batch-size", "512",
            "--device", "cpu", "--no-progress", "--out", str(out)]
    # A shell starts a background job (`make test &`) with SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler in the child: give the child the default back.
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "300"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        ckpt = out / "checkpoint.safetensors"
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None and not ckpt.exists():
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # a failed assertion above: no run left behind
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    text = " ".join(err.split())
    assert "interrupted" in text and "--resume" in text and "Traceback" not in err
