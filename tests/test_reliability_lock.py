"""Issue 16, items 11 and 13: a run's ``.lock`` that is a directory, or that names a PID now
used by another program, gives a clear message that says how to remove it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from advlab.runs import LOCK, lock_run, new_run_dir

linux = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")


@pytest.fixture
def sleeper():
    """Start a live process with the given command line; stopped at the end."""
    procs = []

    def start(*argv: str) -> subprocess.Popen:
        proc = subprocess.Popen(list(argv))
        procs.append(proc)
        # the child's /proc entry shows its own command line once exec has finished: on some
        # kernels (and sandboxes) that is a moment after Popen returns
        cmdline = Path(f"/proc/{proc.pid}/cmdline")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if argv[-1].encode() in cmdline.read_bytes():
                    break
            except OSError:
                pass
            time.sleep(0.01)
        else:
            pytest.skip(f"/proc/{proc.pid}/cmdline never showed {argv}")
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_lock_that_is_a_directory_is_a_clear_error(tmp_path):
    run = new_run_dir("train", tmp_path / "run")
    (run.path / LOCK).mkdir()
    with pytest.raises(ValueError, match=r"\.lock is a directory.*remove it"):
        with lock_run(run):
            pass
    assert (run.path / LOCK).is_dir()  # left for the user to look at


@linux
def test_a_lock_naming_a_pid_that_another_program_now_holds_says_how_to_remove_it(
        tmp_path, sleeper):
    """An old lock (no start time recorded) whose PID belongs to a program that is not advlab:
    refused (it may still be an advlab run under another name), with the way out."""
    proc = sleeper("sleep", "30")
    run = new_run_dir("train", tmp_path / "run")
    lock = run.path / LOCK
    lock.write_text(str(proc.pid))
    with pytest.raises(ValueError) as info:
        with lock_run(run):
            pass
    message = str(info.value)
    assert f"process {proc.pid}" in message and "sleep" in message
    assert "not advlab" in message and "is training into it" not in message
    assert f"remove {lock}" in message
    assert lock.read_text() == str(proc.pid)  # left alone


@linux
def test_a_lock_held_by_an_advlab_process_names_it_and_how_to_remove_a_stale_one(
        tmp_path, sleeper):
    proc = sleeper(sys.executable, "-c", "import time; time.sleep(30)", "advlab", "train")
    run = new_run_dir("train", tmp_path / "run")
    lock = run.path / LOCK
    lock.write_text(str(proc.pid))
    with pytest.raises(ValueError, match=rf"advlab process {proc.pid} is training into it.*"
                                         rf"remove {lock}"):
        with lock_run(run):
            pass


@linux
def test_a_lock_whose_pid_was_reused_is_taken_over(tmp_path, sleeper):
    """The lock records its process's start time: a live process with that PID that started
    at another time is not the one that took the lock."""
    proc = sleeper("sleep", "30")
    run = new_run_dir("train", tmp_path / "run")
    lock = run.path / LOCK
    lock.write_text(f"{proc.pid} 1")  # started at clock tick 1: long before this process
    with lock_run(run):
        assert lock.read_text().split()[0] == str(os.getpid())
    assert not lock.exists()


@linux
def test_the_lock_records_the_start_time_of_its_process(tmp_path):
    run = new_run_dir("train", tmp_path / "run")
    with lock_run(run):
        pid, start = (run.path / LOCK).read_text().split()
    stat = open(f"/proc/{os.getpid()}/stat").read().rpartition(")")[2].split()
    assert int(pid) == os.getpid() and start == stat[19]  # field 22 of proc(5)
