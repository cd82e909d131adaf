"""``advlab.allocator``: glibc keeps freed tensor memory, so attack loops stop page-faulting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from advlab import allocator

# A forward-only loop of one batch size, as Square's queries: the same 6 MB activation is
# allocated and freed 40 times. The minor page faults the loop takes are counted.
LOOP = """
import resource, sys, torch
torch.set_num_threads(1)
from advlab import allocator
if sys.argv[1] == "tune":
    assert allocator.tune()
conv = torch.nn.Conv2d(1, 16, 4, 2, 1).requires_grad_(False)
x = torch.rand(500, 1, 28, 28)
for _ in range(3):
    conv(x).relu()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    conv(x).relu()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setitem(allocator._state, "tuned", None)
    for name in ("ADVLAB_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _glibc() -> bool:
    return allocator._glibc() is not None


def _faults(mode: str) -> int:
    env_off = {"ADVLAB_MALLOC": "off"} if mode == "default" else {}
    env = {k: v for k, v in os.environ.items()
           if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "ADVLAB_MALLOC")}
    out = subprocess.run([sys.executable, "-c", LOOP, mode], env={**env, **env_off},
                         capture_output=True, text=True, timeout=120, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not _glibc(), reason="glibc's malloc only (Linux)")
def test_tuned_loops_reuse_freed_memory_instead_of_faulting_it_in_again():
    default, tuned = _faults("default"), _faults("tune")
    # default: every 6 MB activation is a fresh mapping, ~1500 pages zero-filled per call
    assert default > 20_000, default
    assert tuned < default / 20, (tuned, default)


@pytest.mark.skipif(not _glibc(), reason="glibc's malloc only (Linux)")
def test_tune_sets_the_thresholds_once_per_process(fresh):
    calls = []
    real = allocator._glibc

    def counting():
        calls.append(1)
        return real()

    fresh.setattr(allocator, "_glibc", counting)
    assert allocator.tuned() is None
    assert allocator.tune() is True and allocator.tune() is True
    assert allocator.tuned() is True and len(calls) == 1


@pytest.mark.parametrize("env", [{"ADVLAB_MALLOC": "off"}, {"ADVLAB_MALLOC": " OFF "},
                                 {"MALLOC_MMAP_THRESHOLD_": "65536"},
                                 {"MALLOC_TRIM_THRESHOLD_": "0"}])
def test_off_or_glibcs_own_variables_leave_the_defaults(fresh, env):
    for k, v in env.items():
        fresh.setenv(k, v)
    fresh.setattr(allocator, "_glibc", lambda: pytest.fail("glibc must not be touched"))
    assert allocator.tune() is False and allocator.tuned() is False


def test_elsewhere_than_glibc_nothing_happens(fresh):
    fresh.setattr(allocator.sys, "platform", "darwin")
    assert allocator._glibc() is None
    assert allocator.tune() is False


def test_a_bad_value_names_the_valid_ones(fresh):
    fresh.setenv("ADVLAB_MALLOC", "jemalloc")
    with pytest.raises(ValueError, match="ADVLAB_MALLOC to be auto or off, got 'jemalloc'"):
        allocator.tune()


def test_the_command_line_refuses_a_bad_value_in_one_line():
    env = {**os.environ, "ADVLAB_MALLOC": "sometimes"}
    out = subprocess.run([sys.executable, "-m", "advlab", "reproduce", "list"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "ADVLAB_MALLOC to be auto or off, got 'sometimes'" in out.stderr
    assert "Traceback" not in out.stderr
