"""Issue 2: seconds per epoch of advlab's loop / a plain hand-written PyTorch loop (the fastest
simple one: a permutation, tensor slicing, zero_grad / forward / loss / backward / step), the same
model from the same initial weights on the same in-memory tensors, batch size and optimizer, run
alternately (ABAB...: machine noise hits both alike); the ratio of the medians is reported.

``ADVLAB_DATA=... python -m bench.loop --compile`` (issue 18; method and figures in
docs/guide-performance.md): eager vs ``torch.compile`` vs bf16 autocast for training and PGD;
prints the medians, minima and ratios as JSON (``--help``: its options).
"""

import copy
import json
import os
import statistics
import tempfile
from functools import partial

import torch
import torch.nn.functional as F

from advlab import data, models
from advlab.attacks import PGD
from advlab.train import TrainConfig, fit
from advlab.train.loop import compiled_forward
from bench.common import alternated, cli, clocked, machine, require_data, rounds, write_fragment


def plain_epoch(model, x, y, batch_size, opt, seed):
    model.train()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    total = torch.zeros(())
    for idx in perm.split(batch_size):
        xb, yb = x[idx], y[idx]
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        total += loss.detach() * len(yb)
    return total.item() / len(x)


def measure(model_name, dataset, n, reps, batch_size=128):
    """(advlab's seconds per epoch, the plain loop's: medians of ``reps``, examples)."""
    train = data.load(dataset, "train")
    train = data.subset(train, n, seed=0) if n else train
    torch.manual_seed(0)
    base = models.create(model_name, dataset=dataset)
    cfg = TrainConfig(epochs=1, batch_size=batch_size, lr=1e-3, device="cpu")
    # warm-up (first-call costs: thread pools, allocator, lazy imports)
    fit(copy.deepcopy(base), train.subset(torch.arange(min(512, len(train)))), cfg, progress=False)

    def ours(r: int) -> float:
        m = copy.deepcopy(base)
        return clocked(lambda: fit(m, train, cfg, progress=True))[0]

    def plain(r: int) -> float:
        m = copy.deepcopy(base)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        return clocked(lambda: plain_epoch(m, train.x, train.y, batch_size, opt, r))[0]

    return *alternated([ours, plain], reps), len(train)


def main(quick: bool = False) -> None:
    require_data()
    reps, rows = (3 if quick else 7), []
    for model, dataset, n, n_quick in (("mlp-100", "fashion-mnist", None, 10000),
                                       ("fmnist-cnn", "fashion-mnist", 10000, 2000),
                                       ("madry-cnn", "mnist", 5000, 1000)):
        ours, plain, size = measure(model, dataset, n_quick if quick else n, reps)
        rows.append(f"| `{model}` | {dataset} | {size} | {ours:.3f} | {plain:.3f} | "
                    f"**{ours / plain:.3f}** |")
        print(rows[-1])
    body = (f"One epoch, batch 128, Adam, median of {reps} alternating runs each. advlab's `fit` "
            "runs with its rich progress bar enabled and its per-epoch bookkeeping (loss and "
            "accuracy sums, NaN check, history row); no evaluation split is given to either "
            "loop. Target: ratio <= 1.10.\n\n"
            "| model | data set | examples | advlab s / epoch | plain loop s / epoch | ratio |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    write_fragment("loop", "Training loop overhead", "python -m bench.run --only loop", body, quick)


def compile_cost(reps: int = 3, quick: bool = False, bf16: bool = True,
                 device: str = "cpu") -> dict:
    """Issue 18: wong-cnn trained one epoch on 5,000 MNIST points, PGD-20 on 500 (``quick``: 500
    and 100), from the same weights; each compiled arm first timed alone (compilation)."""
    # a cold compile: the inductor and FX-graph caches of an earlier run would hide its cost
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-"))
    from torch._dynamo.utils import counters

    load, (n_train, n_attack) = [os.getloadavg()], (500, 100) if quick else (5000, 500)
    train = data.subset(data.load("mnist", "train"), n_train, seed=0, balanced=True)
    test = data.load("mnist", "test")
    x, y = test.x[:n_attack], test.y[:n_attack]
    torch.manual_seed(0)
    base = models.create("wong-cnn", dataset="mnist")
    attacked, pgd, success = copy.deepcopy(base), PGD(eps=0.3, alpha=0.01, steps=20), {}

    def epoch(r: int, model: torch.nn.Module | None = None, **kw) -> float:
        cfg = TrainConfig(epochs=1, batch_size=128, lr=1e-3, device=device, **kw)
        model = copy.deepcopy(base) if model is None else model
        return fit(model, train, cfg, progress=False).history[0]["train_seconds"]  # no set-up

    def attack(r: int, arm: str) -> float:
        with compiled_forward(attacked, arm == "pgd compiled"):
            seconds, result = clocked(lambda: pgd(attacked, x, y))
        success[arm] = result.success.float().mean().item()
        return seconds

    epoch(0, attacked)  # warm-up (thread pools, allocator, lazy imports); the weights PGD attacks
    attacked.eval()
    arms = {"train eager": epoch, "train compiled": partial(epoch, compile=True),
            **({"train bf16": partial(epoch, amp="bf16")} if bf16 else {}),
            **{arm: partial(attack, arm=arm) for arm in ("pgd eager", "pgd compiled")}}
    graphs, first = [counters["stats"]["unique_graphs"]], {}
    for arm in ("train compiled", "pgd compiled"):  # timed alone: each compiles in its first call
        first[arm] = arms[arm](-1)
        graphs.append(counters["stats"]["unique_graphs"])
    times = dict(zip(arms, rounds(list(arms.values()), reps), strict=True))
    graphs.append(counters["stats"]["unique_graphs"])
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"machine": machine(), "device": device, "load": load + [os.getloadavg()],
            "seconds": times, "median": med, "min": {k: min(v) for k, v in times.items()},
            "compile_seconds": {k: s - med[k] for k, s in first.items()},
            "graphs_train_pgd_later": [b - a for a, b in zip(graphs, graphs[1:])],
            "pgd_success": success,  # the per-round ratios' median: a round runs eager first
            "paired_ratio_over_eager": {k: statistics.median(
                b / a for a, b in zip(times[k.split()[0] + " eager"], v, strict=True))
                for k, v in times.items() if not k.endswith("eager")}}


if __name__ == "__main__":
    a = cli(__doc__, compile=dict(action="store_true", help="eager vs torch.compile (issue 18)"),
            reps=dict(type=int, default=3, help="--compile's rounds"),
            threads=dict(type=int, default=2, help="--compile's torch threads"),
            no_bf16=dict(action="store_true", help="--compile without the bf16 arm"),
            device=dict(default="cpu", help="--compile's device: cpu | cuda"))
    if a.compile:
        require_data()
        torch.set_num_threads(a.threads)
        print(json.dumps(compile_cost(a.reps, a.quick, not a.no_bf16, a.device), indent=1))
    else:
        main(a.quick)
