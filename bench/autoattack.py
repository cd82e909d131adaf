"""AutoAttack-grade evaluation, side by side with torchattacks 3.5.1's port of AutoAttack.

    ADVLAB_DATA=../shared/data python -m bench.autoattack --run RUN [--n 1000] [--repeats 1]

On the first ``n`` MNIST test points at ℓ∞ ε = 0.3, for a classifier run (default: the
``wong-cnn`` fast-at model that ``python -m bench.defenses --part mnist`` trains), in one
process on one thread, alternating the two libraries:

- the ``autoattack`` suite of ``advlab eval robust`` vs torchattacks' AutoAttack: seconds
  (median over ``repeats``) and robust accuracy (ours must not be above theirs). Two budgets,
  each run by both libraries: AutoAttack's own (APGD/FAB 100 iterations; torchattacks' four
  attacks composed with those settings in its ``MultiAttack``, as its ``AutoAttack`` does), and
  the budget of ``torchattacks.AutoAttack(version="standard")`` as shipped, whose APGD, APGD-T
  and FAB-T run only 10 iterations (its constructor's default);
- APGD-CE's cost per gradient step against one forward+backward pass of the same model on the
  same batch (the floor), ε = 0 so that every step runs on the whole batch;
- Square (5000 queries): median queries per fooled point, ours vs torchattacks' Square, on the
  points both start from (correctly classified).

Writes docs/benchmarks/autoattack.md (assembled into docs/BENCHMARKS.md by ``bench.run``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import ROOT, require_data, write_fragment

DEFAULT_RUN = ROOT / "bench" / "out" / "defenses" / "wongcnn-mnist-fastat-selected"


def _first(n: int):
    from advlab import data

    test = data.load("mnist", "test")
    return test.x[:n], test.y[:n]


def _ours(model, x, y, eps: float, steps: int) -> tuple[float, float, list[tuple[str, float]]]:
    from advlab.attacks import ThreatModel
    from advlab.eval import AutoAttackSettings, standard_evaluation

    t = time.perf_counter()
    r = standard_evaluation(model, x, y, threat=ThreatModel("linf", eps), suite="autoattack",
                            batch_size=500, autoattack=AutoAttackSettings(steps=steps))
    return time.perf_counter() - t, r.robust_accuracy, r.cumulative()


def _theirs(model, x, y, eps: float, steps: int | None) -> tuple[float, float]:
    """torchattacks' AutoAttack as shipped (``steps`` None), or its four attacks composed the
    same way with ``steps`` iterations for APGD, APGD-T and FAB-T."""
    import torchattacks

    if steps is None:
        aa = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard",
                                     n_classes=10, seed=0)
    else:
        kw = dict(eps=eps, norm="Linf", seed=0, n_restarts=1)
        aa = torchattacks.MultiAttack([
            torchattacks.APGD(model, loss="ce", steps=steps, **kw),
            torchattacks.APGDT(model, n_classes=10, steps=steps, **kw),
            torchattacks.FAB(model, multi_targeted=True, n_classes=10, steps=steps, **kw),
            torchattacks.Square(model, n_queries=5000, **kw)])
    t = time.perf_counter()
    advs = [aa(x[i:i + 500], y[i:i + 500]) for i in range(0, len(x), 500)]
    seconds = time.perf_counter() - t
    with torch.no_grad():
        pred = torch.cat([model(a).argmax(1) for a in advs])
    return seconds, (pred == y).float().mean().item()


def _apgd_cost(model, x, repeats: int) -> tuple[float, float]:
    """(seconds per APGD-CE step, seconds of one forward+backward) on the batch ``x``."""
    from advlab.attacks import APGD

    with torch.no_grad():
        y = model(x).argmax(1)

    def fwd_bwd() -> None:
        xg = x.detach().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)

    steps, per_step, floor = 100, [], []  # AutoAttack's 100 iterations
    fwd_bwd()
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            fwd_bwd()
        floor.append((time.perf_counter() - t) / steps)
        t = time.perf_counter()
        APGD(eps=0.0, steps=steps)(model, x, y)
        per_step.append((time.perf_counter() - t) / steps)
    return statistics.median(per_step), statistics.median(floor)


def _square_queries(model, x, y, eps: float) -> tuple[float, float, int, int]:
    import torchattacks

    from advlab.attacks import Square

    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok], y[ok]
    r = Square(eps=eps, queries=5000)(model, x, y)
    ours = r.info["queries"][r.success].float()
    sq = torchattacks.Square(model, norm="Linf", eps=eps, n_queries=5000, seed=0)
    sq.init_hyperparam(x)  # what its forward does before the run
    n_q, adv = sq.attack_single_run(x, y)
    with torch.no_grad():
        fooled = model(adv).argmax(1) != y
    theirs = n_q[fooled].float()
    return (ours.median().item() if ours.numel() else float("nan"),
            theirs.median().item() if theirs.numel() else float("nan"),
            int(r.success.sum()), int(fooled.sum()))


def main(run: Path = DEFAULT_RUN, n: int = 1000, eps: float = 0.3, repeats: int = 1,
         quick: bool = False) -> None:
    require_data()
    torch.set_num_threads(1)
    from advlab.weights import load_model

    if quick:
        n = min(n, 100)
    model = load_model(run).eval()
    x, y = _first(n)
    rows, after = [], {}
    for label, ours_steps, their_steps in (("AutoAttack's budget (100 iterations)", 100, 100),
                                           ("torchattacks' default budget (10 iterations)",
                                            10, None)):
        ours_s, theirs_s = [], []
        for _ in range(repeats):
            s, ours_acc, after[label] = _ours(model, x, y, eps, ours_steps)
            ours_s.append(s)
            s, theirs_acc = _theirs(model, x, y, eps, their_steps)
            theirs_s.append(s)
        rows.append({"budget": label, "advlab_seconds": ours_s, "torchattacks_seconds": theirs_s,
                     "advlab_robust_accuracy": ours_acc,
                     "torchattacks_robust_accuracy": theirs_acc})
        print(rows[-1], flush=True)
    per_step, floor = _apgd_cost(model, x[:500], 5)
    sq_ours, sq_theirs, sq_n_ours, sq_n_theirs = _square_queries(model, x[:200], y[:200], eps)
    res = {"run": str(run), "n": n, "eps": eps, "repeats": repeats, "rows": rows,
           "advlab_after_each": after, "apgd_step_seconds": per_step,
           "fwd_bwd_seconds": floor, "square_median_queries": [sq_ours, sq_theirs],
           "square_fooled": [sq_n_ours, sq_n_theirs]}
    out = ROOT / "bench" / "out" / "autoattack.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    name = run.relative_to(ROOT) if run.is_relative_to(ROOT) else run
    def line(r: dict) -> str:
        o, t = (statistics.median(r[k]) for k in ("advlab_seconds", "torchattacks_seconds"))
        return (f"| {r['budget']} | {o:.1f} | {t:.1f} | {t / o:.2f}× | "
                f"{r['advlab_robust_accuracy']:.2%} | {r['torchattacks_robust_accuracy']:.2%} |")

    table = "\n".join(map(line, rows))
    head = ("| budget | advlab seconds | torchattacks seconds | advlab speed-up | "
            "advlab robust accuracy | torchattacks robust accuracy |")
    cumul = "; ".join(f"{label}: " + ", ".join(f"{k} {v:.2%}" for k, v in steps)
                      for label, steps in after.items())
    body = f"""
Model: `{name}`; the first {n} MNIST test points; ℓ∞ ε = {eps:g}; one thread; the two
libraries alternate in one process ({repeats} run(s) each, median). advlab runs
`standard_evaluation(suite="autoattack")` (the CLI's `--suite autoattack`, `--aa-steps` for
the budget); torchattacks 3.5.1 runs `AutoAttack(version="standard")` as shipped for its own
budget — its APGD, APGD-T and FAB-T default to 10 iterations, not AutoAttack's 100 — and
for AutoAttack's budget the same four attacks composed in its `MultiAttack` with 100
iterations. Square has 5000 queries in every row.

{head}
|---|---|---|---|---|---|
{table}

advlab after each attack (cumulative): {cumul}.

APGD-CE per gradient step on 500 of these points (ε = 0: every step on the whole batch):
{1e3 * per_step:.1f} ms against {1e3 * floor:.1f} ms for one forward+backward of the model,
a ratio of **{per_step / floor:.3f}** (medians of 5 alternated runs of 100 steps; the attack's
fixed costs — its clean and final forward passes, the random start — are spread over them).

Square, 5000 queries, on the correctly classified points among the first 200: median queries
per fooled point {sq_ours:.0f} (advlab, {sq_n_ours} fooled) vs {sq_theirs:.0f}
(torchattacks, {sq_n_theirs} fooled).
"""
    write_fragment("autoattack", "AutoAttack-grade evaluation vs torchattacks' AutoAttack",
                   f"python -m bench.autoattack --run {name} --n {n} --repeats {repeats}", body)
    print(body)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", type=Path, default=DEFAULT_RUN)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    main(a.run.resolve(), a.n, a.eps, a.repeats, a.quick)
