"""Scaling on torch.distributed: 2 processes x 1 thread against 1 process x 1 thread (not a test).

Side by side in one run, on the same machine, through the command line as a user runs it:

- ``eval robust --suite quick`` of an MNIST mlp-100 (trained here once, 1 epoch) on 2,000 test
  points, eps 0.03 (most points survive APGD-CE: the suite spends its whole budget), batch
  size 250 (both runs cut the same 8 batches, so the numbers must be identical: checked);
- one epoch of PGD adversarial training (pgd-at, MNIST defaults: eps 0.3, 40 steps) of
  ``wong-cnn`` on ``--n-train`` MNIST points (a fraction of an epoch; the per-point cost is
  what scales).

Each figure is the command's own measurement (the evaluation's ``seconds``, the epoch's
``train_seconds``), so process start-up is left out; the wall time of the whole command is
printed beside it. The peak resident memory and CPU time of every process (``getrusage``) are
recorded by running the command through this file (``bench/distributed.py rss -- ARGS``): the
CPU time, unlike the wall time, does not depend on what else the machine runs. The load
average is printed: on a shared machine the second process competes with other work.
Run: ``ADVLAB_DATA=../shared/data .venv/bin/python bench/distributed.py [--n-train 2000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import runpy
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
OUT = HERE.parent / "out" / "distributed"


def _rss_main() -> None:
    """``distributed.py rss -- ARGS``: run ``advlab ARGS`` here, then print this process's
    peak resident memory (one line on stderr, with its rank)."""
    args = sys.argv[sys.argv.index("--") + 1:]
    sys.argv = ["advlab", *args]
    try:
        runpy.run_module("advlab", run_name="__main__")
    except SystemExit as e:
        code = e.code
    else:
        code = 0
    use = resource.getrusage(resource.RUSAGE_SELF)
    sys.stderr.write(f"RSS rank={os.environ.get('RANK', '0')} maxrss_mb={use.ru_maxrss / 1024:.0f}"
                     f" cpu_s={use.ru_utime + use.ru_stime:.2f}\n")
    raise SystemExit(code)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], nproc: int) -> tuple[float, dict[int, tuple[float, float]], str]:
    """(wall seconds, {rank: (peak MB, CPU seconds)}, output) of ``advlab ARGS`` as ``nproc``
    processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env = {k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    me = [str(HERE), "rss", "--", *args]
    if nproc == 1:
        cmd = [sys.executable, *me]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
               "--master-addr=127.0.0.1", f"--master-port={_port()}", *me]
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    rss = {int(r): (float(m), float(c)) for r, m, c in re.findall(
        r"RSS rank=(\d+) maxrss_mb=(\d+) cpu_s=([0-9.]+)", done.stderr)}
    return wall, rss, done.stdout


def metrics(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())


def without_seconds(d):
    if isinstance(d, dict):
        return {k: without_seconds(v) for k, v in d.items() if k != "seconds"}
    if isinstance(d, list):
        return [without_seconds(v) for v in d]
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="points of eval robust")
    ap.add_argument("--eps", type=float, default=0.03, help="linf budget of eval robust")
    ap.add_argument("--n-train", type=int, default=2000, help="points of the PGD-AT epoch")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-eval", action="store_true")
    a = ap.parse_args()
    if not os.environ.get("ADVLAB_DATA"):
        sys.exit("set ADVLAB_DATA (e.g. ../shared/data)")
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()}")
    rows = []
    if not a.skip_eval:
        model = OUT / "mnist-mlp100"
        if not (model / "model.safetensors").exists():
            run(["train", "classifier", "--dataset", "mnist", "--model", "mlp-100", "--epochs",
                 "1", "--out", str(model), "--no-progress", "--device", "cpu"], 1)
        results = {}
        for nproc in (1, 2):
            out = OUT / f"eval-{nproc}x1-{int(time.time())}"
            wall, rss, _ = run(["eval", "robust", str(model), "--eps", str(a.eps), "--suite",
                                "quick", "--n", str(a.n), "--batch-size", "250",
                                "--no-progress", "--device", "cpu", "--out", str(out)], nproc)
            m = metrics(out)
            results[nproc] = m
            rows.append((f"eval robust quick, {a.n} MNIST points", f"{nproc}x1", m["seconds"],
                         a.n / m["seconds"], wall, rss))
        same = without_seconds(results[1]) == without_seconds(results[2])
        print(f"eval robust: identical metrics.json numbers 1x1 vs 2x1: {same}; robust "
              f"accuracy {results[1]['robust_accuracy']:.4f}")
    if not a.skip_train:
        for nproc in (1, 2):
            out = OUT / f"pgd-at-{nproc}x1-{int(time.time())}"
            wall, rss, _ = run(["train", "classifier", "--dataset", "mnist", "--model",
                                "wong-cnn", "--defense", "pgd-at", "--n-train",
                                str(a.n_train), "--epochs", "1", "--no-progress", "--device",
                                "cpu", "--out", str(out)], nproc)
            h = metrics(out)["history"][0]
            rows.append((f"PGD-AT wong-cnn, {a.n_train} MNIST points (1 epoch)", f"{nproc}x1",
                         h["train_seconds"], a.n_train / h["train_seconds"], wall, rss))
    print(f"load average after: {os.getloadavg()}")
    print("| workload | processes x threads | seconds | points / s | speed-up | wall s (whole "
          "command) | CPU s per rank (whole command) | peak RSS per rank (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    base = {}
    for name, conf, secs, rate, wall, rss in rows:
        base.setdefault(name, rate)
        mem = ", ".join(f"{rss[r][0]:.0f}" for r in sorted(rss))
        cpu = ", ".join(f"{rss[r][1]:.1f}" for r in sorted(rss))
        print(f"| {name} | {conf} | {secs:.1f} | {rate:.1f} | {rate / base[name]:.2f}x | "
              f"{wall:.1f} | {cpu} | {mem} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "rss":
        _rss_main()
    else:
        main()
