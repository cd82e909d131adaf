"""APGD's cost per gradient step against one forward+backward pass of the model (not a test).

A small CNN (conv 1->4, BatchNorm, ReLU, linear: tests/attack_fixtures.SmallCNN sized for
28x28) on a batch of 500 random 28x28 images, one thread. Labels are the clean predictions and
eps = 0, so no point is ever fooled: every step runs on the whole batch.

The model is instrumented: a timestamp (this thread's CPU time) when its forward starts and
one when the backward pass reaches the input. Per step, the model's forward+backward (with
the loss) is the time between the two; the attack's own work (update, projections,
bookkeeping, checkpoints) is the time from the end of one backward to the start of the next
forward. Medians over the steps: a shared machine's other processes slow a few intervals down
and leave the medians alone, where whole-call timings swing by 20%. The whole-call figure (CPU
time / steps, which adds the per-point random start and the clean and final forward passes)
is printed too, as the minimum of three calls. glibc's allocator is told to keep freed memory
(the script re-executes itself with the tunables), else page faults on re-allocated
activations inflate the model's time.
Run: ``.venv/bin/python bench/apgd_cost.py``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from advlab.attacks import APGD, APGDT

_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "1073741824",
           "MALLOC_TOP_PAD_": "268435456"}


class CNN28(nn.Module):
    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1),
                                      nn.BatchNorm2d(channels), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.5),
                                  nn.Linear(channels * 28 * 28, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _Mark(torch.autograd.Function):
    """Identity; its backward, the last node before the input, stamps the end of a backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, log: list) -> torch.Tensor:
        ctx.log = log
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.log.append(("bwd_end", time.thread_time()))
        return grad, None


class Timed(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.log = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(("fwd_start", time.thread_time()))
        return self.model(_Mark.apply(x, self.log) if x.requires_grad else x)


def step_times(log: list) -> list[float]:
    """The time from one backward's end to the next's: one whole step (attack work + model)."""
    ends = [t for event, t in log if event == "bwd_end"]
    return [b - a for a, b in zip(ends, ends[1:]) if b > a]


def split(log: list) -> tuple[float, float]:
    """Median model forward+backward and median attack work between two of them (seconds)."""
    model_s, attack_s, start, end = [], [], None, None
    for event, t in log:
        if event == "fwd_start":
            if end is not None:
                attack_s.append(t - end)
            start, end = t, None
        elif start is not None:
            model_s.append(t - start)
            start, end = None, t
    return statistics.median(model_s), statistics.median(attack_s)


def main(batch: int = 500, steps: int = 100) -> None:
    torch.set_num_threads(1)
    for channels in (4, 16):
        torch.manual_seed(0)
        model = Timed(CNN28(channels).eval())
        x = torch.rand(batch, 1, 28, 28)
        with torch.no_grad():
            y = model(x).argmax(dim=1)

        def forward_backward(model=model, x=x, y=y) -> float:
            t = time.thread_time()
            xg = x.detach().requires_grad_(True)
            loss = F.cross_entropy(model.model(xg), y, reduction="none").sum()
            torch.autograd.grad(loss, xg)
            return time.thread_time() - t

        print(f"CNN {channels} channels, batch {batch}, {steps} steps, 1 thread; CPU ms, medians")
        for name, attack in [("apgd linf ce", APGD(eps=0.0, steps=steps)),
                             ("apgd linf dlr", APGD(eps=0.0, steps=steps, loss="dlr")),
                             ("apgd l2 ce", APGD(eps=0.0, steps=steps, norm="l2")),
                             ("apgd-t linf", APGDT(eps=0.0, steps=steps, n_target_classes=1))]:
            fb, steps_s, calls, model.log = [], [], [], []
            for _ in range(3):  # interleaved: the machine's load drifts
                fb += [forward_backward() for _ in range(steps // 2)]
                model.log, t = [], time.thread_time()
                assert not attack(model, x, y).success.any()
                calls.append((time.thread_time() - t) / steps)
                steps_s += step_times(model.log)
            base, step = statistics.median(fb), statistics.median(steps_s)
            _, work = split(model.log)
            print(f"  {name:14s} fwd+bwd {base * 1e3:6.2f}  step {step * 1e3:6.2f} (ratio "
                  f"{step / base:.3f}; attack work {work * 1e3:4.2f})  whole call / steps "
                  f"{min(calls) * 1e3:6.2f} (ratio {min(calls) / base:.3f})")


if __name__ == "__main__":
    if any(os.environ.get(k) != v for k, v in _MALLOC.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **_MALLOC})
    main()
