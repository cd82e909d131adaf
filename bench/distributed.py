"""Scaling on torch.distributed (`python -m bench.distributed`): 2 processes x 1 thread vs 1 x 1.

Side by side in one run, through the command line as a user runs it:

- ``eval robust --suite quick`` of an MNIST mlp-100 (trained here once, 1 epoch) on ``--n``
  test points, eps 0.03 (most points survive APGD-CE: the suite spends its whole budget), batch
  size 250 (both runs cut the same batches: their numbers must be identical, checked);
- one epoch of PGD adversarial training (pgd-at, MNIST defaults: eps 0.3, 40 steps) of
  ``wong-cnn`` on ``--n-train`` MNIST points (the per-point cost is what scales).

Seconds are the command's own (the evaluation's ``seconds``, the epoch's ``train_seconds``:
start-up left out), the wall time of the whole command beside them. Peak memory (VmHWM) and CPU
time are read in each process (``python -m bench.distributed rss -- ARGS`` runs the command);
CPU time, unlike wall time, does not depend on what else the machine runs.
"""

import json
import os
import re
import resource
import runpy
import socket
import subprocess
import sys
import time

from bench.common import OUT, ROOT, cli, clocked, peak_kb, require_data, write_fragment

RUNS = OUT / "distributed"


def advlab(args: list[str], nproc: int) -> tuple[float, dict[int, tuple[float, float]]]:
    """(wall seconds, {rank: (peak MB, CPU seconds)}) of ``advlab ARGS`` as ``nproc`` processes."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m"]
    if nproc > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd += ["torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
                f"--master-port={port}", "-m"]
    cmd += ["bench.distributed", "rss", "--", *args]
    wall, done = clocked(lambda: subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True,
                                                text=True))
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return wall, {int(r): (float(m), float(c)) for r, m, c in re.findall(
        r"RSS rank=(\d+) maxrss_mb=(\d+) cpu_s=([0-9.]+)", done.stderr)}


def without_seconds(d):
    if isinstance(d, dict):
        return {k: without_seconds(v) for k, v in d.items() if k != "seconds"}
    return [without_seconds(v) for v in d] if isinstance(d, list) else d


def main(quick: bool = False, n: int = 2000, eps: float = 0.03, n_train: int = 2000) -> None:
    require_data()
    n, n_train = (min(n, 500), min(n_train, 200)) if quick else (n, n_train)
    RUNS.mkdir(parents=True, exist_ok=True)
    load, model = [os.getloadavg()[0]], RUNS / "mnist-mlp100"
    common = ["--no-progress", "--device", "cpu", "--out"]
    jobs = []  # (workload, points, advlab ARGS, the command's own seconds in its metrics)
    if n:
        if not (model / "model.safetensors").exists():
            advlab([*"train classifier --dataset mnist --model mlp-100 --epochs 1".split(),
                    *common, str(model)], 1)
        jobs.append((f"`eval robust --suite quick`, {n} MNIST points (mlp-100, ε = {eps:g})", n,
                     ["eval", "robust", str(model), *f"--eps {eps} --suite quick --n {n}".split(),
                      "--batch-size", "250"], lambda m: m["seconds"]))
    if n_train:
        jobs.append((f"PGD-AT (ε = 0.3, 40 steps) of `wong-cnn`, 1 epoch of {n_train} MNIST "
                     "points", n_train, f"train classifier --dataset mnist --model wong-cnn "
                     f"--defense pgd-at --n-train {n_train} --epochs 1".split(),
                     lambda m: m["history"][0]["train_seconds"]))
    lines, results, base = [], {}, {}
    for name, points, args, seconds in jobs:
        for nproc in (1, 2):
            out = RUNS / f"{args[0]}-{nproc}x1-{int(time.time())}"
            wall, rss = advlab([*args, *common, str(out)], nproc)
            results[args[0], nproc] = m = json.loads((out / "metrics.json").read_text())
            rate = points / seconds(m)
            base.setdefault(name, rate)  # 1 process
            mem = ", ".join(f"{rss[r][0]:.0f}" for r in sorted(rss))
            cpu = ", ".join(f"{rss[r][1]:.1f}" for r in sorted(rss))
            lines.append(f"| {name if nproc == 1 else 'same'} | {nproc} × 1 | {seconds(m):.1f} | "
                         f"{rate:.0f} | {rate / base[name]:.2f}× | {wall:.1f} | {cpu} | {mem} |")
    load.append(os.getloadavg()[0])
    notes = "" if not n else (
        "The two evaluations gave identical `metrics.json` numbers: "
        f"{without_seconds(results['eval', 1]) == without_seconds(results['eval', 2])} "
        f"(robust accuracy {results['eval', 1]['robust_accuracy']:.4f}).")
    body = (__doc__.split("\n\n", 1)[1].strip() + "\n\n"
            f"Load average (1 min) {load[0]:.1f} before, {load[1]:.1f} after, on {os.cpu_count()} "
            "cores: the second process competes with the machine's other work.\n\n"
            "| workload | processes × threads | seconds | points / s | speed-up | wall s (whole "
            "command) | CPU s per process | peak RSS per process (MB) |\n"
            "|---|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n\n" + notes)
    write_fragment("distributed", "Scaling on torch.distributed (2 processes)",
                   f"python -m bench.distributed --n {n} --n-train {n_train}", body, quick)


if __name__ == "__main__":
    if sys.argv[1:2] == ["rss"]:
        # `rss -- ARGS`: run `advlab ARGS` here, then print its rank, peak memory and CPU time
        sys.argv = ["advlab", *sys.argv[sys.argv.index("--") + 1:]]
        try:
            runpy.run_module("advlab", run_name="__main__")
        finally:  # one line on stderr, read by advlab()
            use = resource.getrusage(resource.RUSAGE_SELF)
            sys.stderr.write(f"RSS rank={os.environ.get('RANK', '0')} maxrss_mb="
                             f"{peak_kb() / 1024:.0f} cpu_s={use.ru_utime + use.ru_stime:.2f}\n")
        sys.exit(0)
    a = cli(__doc__, "500 and 200 points (smoke run)",
            n=dict(type=int, default=2000, help="points of eval robust (0: skip it)"),
            eps=dict(type=float, default=0.03, help="linf budget of eval robust"),
            n_train=dict(type=int, default=2000, help="points of PGD-AT (0: skip it)"))
    main(a.quick, a.n, a.eps, a.n_train)
