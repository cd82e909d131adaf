"""AutoAttack-grade evaluation, side by side with torchattacks 3.5.1's port of AutoAttack.

    ADVLAB_DATA=../shared/data python -m bench.autoattack [--model-run RUN] [--n N] [--quick]

On the first ``n`` MNIST test points at ℓ∞ ε = 0.3, for a classifier run (default: the
``fast-at`` job of the ``mnist-linf`` recipe, a ``wong-cnn``), one process, one thread:

- the ``autoattack`` suite of ``advlab eval robust`` vs torchattacks' AutoAttack, alternated:
  seconds (median over ``repeats``) and robust accuracy (ours must not be above theirs), at
  AutoAttack's budget (APGD/FAB 100 iterations; torchattacks' four attacks so composed in its
  ``MultiAttack``) and at ``torchattacks.AutoAttack(version="standard")``'s as shipped (its
  APGD, APGD-T and FAB-T run 10 iterations);
- APGD's cost per gradient step (CE and DLR in ℓ∞, CE in ℓ2, APGD-T with one target class)
  against one forward+backward of the model on the same batch, ε = 0 so that every step runs
  on the whole batch;
- Square (5000 queries): median queries per fooled point, ours vs torchattacks' Square, on the
  points both start from (correctly classified).

Writes docs/benchmarks/autoattack.md (assembled into docs/BENCHMARKS.md by ``bench.run``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from bench.common import ROOT, alternated, fwd_bwd, model_run, require_data, timed, write_fragment

DEFAULT_RUN = ROOT / "runs" / "reproduce" / "mnist-linf" / "fast-at"
HINT = "run `advlab reproduce mnist-linf` first"


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
    import torchattacks as ta

    kw = dict(eps=eps, norm="Linf", seed=0)
    if steps is None:
        aa = ta.AutoAttack(model, version="standard", n_classes=10, **kw)
    else:
        kw["n_restarts"] = 1
        aa = ta.MultiAttack([ta.APGD(model, loss="ce", steps=steps, **kw),
                             ta.APGDT(model, n_classes=10, steps=steps, **kw),
                             ta.FAB(model, multi_targeted=True, n_classes=10, steps=steps, **kw),
                             ta.Square(model, n_queries=5000, **kw)])
    t = time.perf_counter()
    advs = [aa(x[i:i + 500], y[i:i + 500]) for i in range(0, len(x), 500)]
    seconds = time.perf_counter() - t
    with torch.no_grad():
        pred = torch.cat([model(a).argmax(1) for a in advs])
    return seconds, (pred == y).float().mean().item()


def _apgd_cost(model, x, reps: int, steps: int = 100) -> tuple[float, dict[str, float]]:
    """(CPU seconds of one forward+backward, {APGD variant: CPU seconds per step}) on ``x``,
    medians of ``reps`` alternated runs of ``steps`` steps (AutoAttack's 100 iterations)."""
    from advlab.attacks import APGD, APGDT

    with torch.no_grad():
        y = model(x).argmax(1)  # with ε = 0 no point is ever fooled
    attacks = {"APGD-CE ℓ∞": APGD(eps=0.0, steps=steps),
               "APGD-DLR ℓ∞": APGD(eps=0.0, steps=steps, loss="dlr"),
               "APGD-CE ℓ2": APGD(eps=0.0, steps=steps, norm="l2"),
               "APGD-T ℓ∞, 1 target": APGDT(eps=0.0, steps=steps, n_target_classes=1)}
    fwd_bwd(model, x, y, len(x))  # warm-up
    clock = time.thread_time  # one thread: the machine's other processes do not count

    def floor(r: int) -> float:
        return timed(lambda: [fwd_bwd(model, x, y, len(x)) for _ in range(steps)], clock) / steps

    def cost(attack):
        return lambda r: timed(lambda: attack(model, x, y), clock) / steps

    base, *per_step = alternated([floor, *map(cost, attacks.values())], reps)
    return base, dict(zip(attacks, per_step, strict=True))


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


def main(quick: bool = False, run: Path = DEFAULT_RUN, n: int = 1000, eps: float = 0.3,
         repeats: int = 1) -> None:
    require_data()
    torch.set_num_threads(1)
    from advlab import data
    from advlab.weights import load_model

    model = load_model(model_run(run, HINT)).eval()
    n = min(n, 20) if quick else n
    test = data.load("mnist", "test")
    x, y = test.x[:n], test.y[:n]
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
        o, t = statistics.median(ours_s), statistics.median(theirs_s)
        rows.append(f"| {label} | {o:.1f} | {t:.1f} | {t / o:.2f}× | {ours_acc:.2%} | "
                    f"{theirs_acc:.2%} |")
        print(rows[-1], flush=True)
    xa, reps, steps = x[:500], *((1, 10) if quick else (5, 100))
    floor, per_step = _apgd_cost(model, xa, reps, steps)
    sq_ours, sq_theirs, sq_n_ours, sq_n_theirs = _square_queries(model, x[:200], y[:200], eps)
    name = run.relative_to(ROOT) if run.is_relative_to(ROOT) else run

    cumul = "; ".join(f"{label}: " + ", ".join(f"{k} {v:.2%}" for k, v in steps)
                      for label, steps in after.items())
    apgd = "\n".join(f"| {k} | {1e3 * v:.1f} | {1e3 * floor:.1f} | **{v / floor:.3f}** |"
                     for k, v in per_step.items())
    body = f"""
Model: `{name}`; the first {n} MNIST test points; ℓ∞ ε = {eps:g}; one thread; the two
libraries alternate in one process ({repeats} run(s) each, median). advlab runs
`standard_evaluation(suite="autoattack")` (the CLI's `--suite autoattack`, `--aa-steps` for
the budget); torchattacks 3.5.1 runs `AutoAttack(version="standard")` as shipped for its own
budget — its APGD, APGD-T and FAB-T default to 10 iterations, not AutoAttack's 100 — and
for AutoAttack's budget the same four attacks composed in its `MultiAttack` with 100
iterations. Square has 5000 queries in every row.

| budget | advlab seconds | torchattacks seconds | advlab speed-up | advlab robust accuracy | \
torchattacks robust accuracy |
|---|---|---|---|---|---|
{chr(10).join(rows)}

advlab after each attack (cumulative): {cumul}.

APGD per gradient step on {len(xa)} of these points (ε = 0: every step on the whole batch),
against one forward+backward of the model (CPU time of the one thread, medians of
{reps} alternated runs of {steps} steps; the attack's fixed costs —
its clean and final forward passes, the random start — are spread over them):

| attack | ms per step | ms per forward+backward | ratio |
|---|---|---|---|
{apgd}

Square, 5000 queries, on the correctly classified points among the first {min(n, 200)}: median
queries per fooled point {sq_ours:.0f} (advlab, {sq_n_ours} fooled) vs {sq_theirs:.0f}
(torchattacks, {sq_n_theirs} fooled).
"""
    write_fragment("autoattack" + "-quick" * quick,
                   "AutoAttack-grade evaluation vs torchattacks' AutoAttack",
                   f"python -m bench.autoattack --model-run {name} --n {n} --repeats {repeats}"
                   + " --quick" * quick, body)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model-run", "--run", type=Path, default=DEFAULT_RUN,
                    help="an MNIST classifier run (default: the mnist-linf recipe's fast-at job)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="20 points, short APGD timing")
    a = ap.parse_args()
    main(a.quick, a.model_run.resolve(), a.n, a.eps, a.repeats)
