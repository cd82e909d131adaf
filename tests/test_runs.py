"""Run directories: one training process at a time per directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from advlab.generative.job import GenerativeJob, train_generative
from advlab.generative.train import GenerativeTrainConfig
from advlab.runs import LOCK, lock_run, new_run_dir


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def advlab_process():
    """A live process whose command line names advlab (as a training command's does)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "advlab"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_lock_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path, advlab_process):
    run = new_run_dir("x", tmp_path / "run")
    lock = run.path / LOCK
    lock.write_text(str(advlab_process))  # a live process that is not this one
    with pytest.raises(ValueError, match=rf"in use: advlab process {advlab_process} is "
                                         rf"training"):
        with lock_run(run):
            pass
    assert lock.read_text() == str(advlab_process)  # the holder's lock is left alone
    lock.write_text(str(_dead_pid()))
    with lock_run(run):
        assert lock.read_text().split()[0] == str(os.getpid())
    assert not lock.exists()
    with pytest.raises(RuntimeError), lock_run(run):  # released on errors too
        raise RuntimeError
    assert not lock.exists()


def test_a_second_resume_into_a_run_in_use_is_refused(tmp_path, advlab_process):
    cfg = GenerativeTrainConfig(epochs=1, batch_size=32, steps_per_epoch=2, n_snapshot=4,
                                device="cpu")
    job = GenerativeJob(dataset="ring8", model="vae", model_kwargs={"hidden": [4]},
                        figure_every=0, train=cfg)
    out = tmp_path / "run"
    train_generative(job, out, progress=False)
    assert not (out / LOCK).exists()
    (out / LOCK).write_text(str(advlab_process))
    with pytest.raises(ValueError, match="in use"):
        train_generative(job, out, resume=True, progress=False)
    (out / LOCK).unlink()
    train_generative(job, out, resume=True, progress=False)


def test_a_run_directory_is_claimed_at_once(tmp_path):
    """Two commands given one --out: the second is refused even before the first writes
    anything (an empty directory checked, then used, would let both in)."""
    out = tmp_path / "out"
    first = new_run_dir("eval", out)
    with pytest.raises(ValueError, match="not empty"):
        new_run_dir("eval", out)
    assert first.path == out
    empty = tmp_path / "empty"
    empty.mkdir()
    new_run_dir("eval", empty)  # an empty directory given on purpose is used
    with pytest.raises(ValueError, match="not empty"):
        new_run_dir("eval", empty)
    assert new_run_dir("train", out, exist_ok=True).path == out  # --resume: the same run


def test_default_run_directories_never_collide(tmp_path):
    paths = {new_run_dir("eval", root=tmp_path).path for _ in range(5)}
    assert len(paths) == 5 and all(p.is_dir() for p in paths)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_a_lock_held_by_a_zombie_process_is_taken_over(tmp_path):
    """A training process that exited but was not reaped yet (a zombie) holds nothing."""
    from advlab.runs import _alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    for _ in range(200):  # wait until it has exited, without reaping it
        stat = open(f"/proc/{child.pid}/stat").read()
        if stat.rpartition(")")[2].split()[0] == "Z":
            break
        time.sleep(0.05)
    try:
        assert not _alive(child.pid)
        run = new_run_dir("train", tmp_path / "r")
        (run.path / LOCK).write_text(str(child.pid))
        with lock_run(run):
            assert (run.path / LOCK).read_text().split()[0] == str(os.getpid())
    finally:
        child.wait()
    assert _alive(os.getpid())


def test_check_resume_compares_the_command_first(tmp_path):
    from advlab.runs import check_resume

    run = new_run_dir("eval", tmp_path / "r")
    run.write_config({"command": "eval", "n": 5})
    with pytest.raises(ValueError, match="it is a 'eval' run, not a 'train classifier' one"):
        check_resume(run, {"command": "train classifier", "train": {}})
    with pytest.raises(ValueError, match=r"differs .*\(n: 5 in the run, 6 given\)"):
        check_resume(run, {"command": "eval", "n": 6})
    check_resume(run, {"command": "eval", "n": 5})


def test_resume_of_a_directory_that_does_not_exist_is_refused(tmp_path):
    from advlab.runs import check_out

    with pytest.raises(ValueError, match="--resume: no run directory at .*missing"):
        new_run_dir("train", tmp_path / "missing", exist_ok=True, resumable=True)
    assert not (tmp_path / "missing").exists()
    (tmp_path / "started").mkdir()  # killed before anything was written: resumable
    check_out(tmp_path / "started", exist_ok=True, resumable=True)
