"""Issue 2: seconds per epoch of advlab's loop / a plain hand-written PyTorch loop.

Both train the same model from the same initial weights on the same in-memory tensors with the
same batch size and optimizer; they run alternately (ABAB...) and the ratio of the medians is
reported, so machine noise hits both alike. The plain loop is the fastest simple loop one would
write by hand: a permutation, tensor slicing, zero_grad / forward / loss / backward / step.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from bench.common import alternated, require_data, timed, write_fragment


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
    from advlab import data, models
    from advlab.train import TrainConfig, fit

    train = data.load(dataset, "train")
    train = data.subset(train, n, seed=0) if n else train
    torch.manual_seed(0)
    base = models.create(model_name, dataset=dataset)
    cfg = TrainConfig(epochs=1, batch_size=batch_size, lr=1e-3, device="cpu")
    # Warm-up (first-call costs: thread pools, allocator, lazy imports).
    fit(copy.deepcopy(base), train.subset(torch.arange(min(512, len(train)))), cfg,
        progress=False)

    def ours(r: int) -> float:
        m = copy.deepcopy(base)
        return timed(lambda: fit(m, train, cfg, progress=True))

    def plain(r: int) -> float:
        m = copy.deepcopy(base)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        return timed(lambda: plain_epoch(m, train.x, train.y, batch_size, opt, r))

    return *alternated([ours, plain], reps), len(train)


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
    write_fragment("loop" + "-quick" * quick, "Training loop overhead",
                   "python -m bench.run --only loop" + " --quick" * quick, body)
