"""Issue 2: seconds per epoch of advlab's loop / a plain hand-written PyTorch loop.

Both train the same model from the same initial weights on the same in-memory tensors with the
same batch size and optimizer; they run alternately (ABAB...) and the ratio of the medians is
reported, so machine noise hits both alike. The plain loop is the fastest simple loop one would
write by hand: a permutation, tensor slicing, zero_grad / forward / loss / backward / step.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn.functional as F

from bench.common import require_data, write_fragment


def plain_epoch(model, x, y, batch_size, opt, seed):
    model.train()
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=g)
    total = torch.zeros(())
    for i in range(0, x.shape[0], batch_size):
        idx = perm[i:i + batch_size]
        xb, yb = x[idx], y[idx]
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        total += loss.detach() * yb.shape[0]
    return total.item() / x.shape[0]


def measure(model_name, dataset, n, reps, batch_size=128):
    from advlab import data, models
    from advlab.train import TrainConfig, fit

    train = data.subset(data.load(dataset, "train"), n, seed=0) if n else data.load(dataset,
                                                                                    "train")
    torch.manual_seed(0)
    base = models.create(model_name, dataset=dataset)
    cfg = TrainConfig(epochs=1, batch_size=batch_size, lr=1e-3, device="cpu")
    ours, plain = [], []
    # Warm-up of both (first-call costs: thread pools, allocator, lazy imports).
    fit(copy.deepcopy(base), train.subset(torch.arange(min(512, len(train)))), cfg,
        progress=False)
    for r in range(reps):
        m = copy.deepcopy(base)
        t = time.perf_counter()
        fit(m, train, cfg, progress=True)
        ours.append(time.perf_counter() - t)
        m = copy.deepcopy(base)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        t = time.perf_counter()
        plain_epoch(m, train.x, train.y, batch_size, opt, r)
        plain.append(time.perf_counter() - t)
    return statistics.median(ours), statistics.median(plain), len(train)


def main(quick: bool = False) -> None:
    require_data()
    reps = 3 if quick else 7
    cases = [("mlp-100", "fashion-mnist", None if not quick else 10000),
             ("fmnist-cnn", "fashion-mnist", 10000 if not quick else 2000),
             ("madry-cnn", "mnist", 5000 if not quick else 1000)]
    rows = []
    for model, dataset, n in cases:
        ours, plain, size = measure(model, dataset, n, reps)
        rows.append(f"| `{model}` | {dataset} | {size} | {ours:.3f} | {plain:.3f} | "
                    f"**{ours / plain:.3f}** |")
        print(rows[-1])
    body = (
        f"One epoch, batch 128, Adam, median of {reps} alternating runs each. advlab's `fit` runs "
        "with its rich progress bar enabled and its per-epoch bookkeeping (loss and accuracy "
        "sums, NaN check, history row); no evaluation split is given to either loop. "
        "Target: ratio <= 1.10.\n\n"
        "| model | data set | examples | advlab s / epoch | plain loop s / epoch | ratio |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    write_fragment("loop" + ("-quick" if quick else ""), "Training loop overhead",
                   "python -m bench.run --only loop" + (" --quick" if quick else ""), body)
