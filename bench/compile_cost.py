"""Issue 18: eager vs ``torch.compile`` (and bf16 autocast) for training and PGD (CPU default).

One epoch of wong-cnn on 5,000 MNIST training points (batch 128, Adam) and PGD-20 (ℓ∞, ε 0.3)
on 500 MNIST test points, each arm from the same weights and data. The first compiled call is
timed alone (it includes compilation, in a fresh inductor cache); then the arms run alternately
(ABAB...) ``--reps`` times and the medians and their ratios are reported, so a load that comes
and goes hits every arm alike. The load average is printed before and after.

    ADVLAB_DATA=../shared/data python bench/compile_cost.py [--reps 3] [--threads 2]
        [--device cuda] [--no-bf16]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time

# a cold compile: the inductor and FX-graph caches of an earlier run would hide its cost
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-"))

import torch  # noqa: E402


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    from torch._dynamo.utils import counters

    from advlab import data, models
    from advlab.attacks import PGD
    from advlab.train import TrainConfig, fit
    from advlab.train.loop import compiled_forward

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--n-attack", type=int, default=500)
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 training arm")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (training and PGD)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    train = data.subset(data.load("mnist", "train"), args.n_train, seed=0, balanced=True)
    test = data.load("mnist", "test")
    x_att, y_att = test.x[:args.n_attack], test.y[:args.n_attack]
    torch.manual_seed(0)
    base = models.create("wong-cnn", dataset="mnist")
    cfg = dict(epochs=1, batch_size=128, lr=1e-3, device=args.device)

    def epoch(**kw) -> tuple[float, torch.nn.Module]:
        model = copy.deepcopy(base)
        result = fit(model, train, TrainConfig(**cfg, **kw), progress=False)
        return result.history[0]["train_seconds"], model

    # warm-up: thread pools, allocator, lazy imports (eager only)
    fit(copy.deepcopy(base), train.subset(torch.arange(512)), TrainConfig(**cfg),
        progress=False)
    _, trained = epoch()  # the weights PGD attacks
    trained.eval()
    pgd = PGD(eps=0.3, alpha=0.01, steps=20)

    def attack(compiled: bool) -> tuple[float, float]:
        with compiled_forward(trained, compiled):
            seconds, result = _timed(lambda: pgd(trained, x_att, y_att))
        return seconds, result.success.float().mean().item()

    graphs0 = counters["stats"]["unique_graphs"]
    first_train, _ = epoch(compile=True)  # its compilation happens in its first steps
    graphs_train = counters["stats"]["unique_graphs"] - graphs0
    first_attack, _ = attack(True)
    graphs_attack = counters["stats"]["unique_graphs"] - graphs0 - graphs_train

    times: dict[str, list[float]] = {k: [] for k in ("train eager", "train compiled",
                                                     "train bf16", "pgd eager",
                                                     "pgd compiled")}
    success: dict[str, float] = {}
    for _ in range(args.reps):  # alternately
        times["train eager"].append(epoch()[0])
        times["train compiled"].append(epoch(compile=True)[0])
        if not args.no_bf16:
            times["train bf16"].append(epoch(amp="bf16")[0])
        for name, compiled in (("pgd eager", False), ("pgd compiled", True)):
            seconds, success[name] = attack(compiled)
            times[name].append(seconds)
    recompiles = counters["stats"]["unique_graphs"] - graphs0 - graphs_train - graphs_attack
    times = {k: v for k, v in times.items() if v}
    med = {k: statistics.median(v) for k, v in times.items()}

    def paired(a: str, b: str) -> float:
        """The median of the per-round ratios b / a (each round ran a then b)."""
        return statistics.median(y / x for x, y in zip(times[a], times[b], strict=True))

    report = {
        "threads": args.threads, "load_before": load_before, "load_after": os.getloadavg(),
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "reps": args.reps,
        "device": args.device,
        "seconds": times, "median": med, "min": {k: min(v) for k, v in times.items()},
        "first_compiled_epoch": first_train, "first_compiled_pgd": first_attack,
        "compile_seconds_train": first_train - med["train compiled"],
        "compile_seconds_pgd": first_attack - med["pgd compiled"],
        "graphs": {"train": graphs_train, "pgd": graphs_attack, "later": recompiles},
        "pgd_success": success,
        "ratio_train_compiled_over_eager": med["train compiled"] / med["train eager"],
        "ratio_pgd_compiled_over_eager": med["pgd compiled"] / med["pgd eager"],
        "paired_ratio_train_compiled_over_eager": paired("train eager", "train compiled"),
        "paired_ratio_pgd_compiled_over_eager": paired("pgd eager", "pgd compiled"),
    }
    if "train bf16" in med:
        report["ratio_train_bf16_over_eager"] = med["train bf16"] / med["train eager"]
        report["paired_ratio_train_bf16_over_eager"] = paired("train eager", "train bf16")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
