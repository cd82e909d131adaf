"""AutoAttack-grade evaluation, side by side with torchattacks 3.5.1's port of AutoAttack.

    ADVLAB_DATA=../shared/data python -m bench.autoattack [--model-run RUN] [--n N] [--quick]

For a classifier run (default: the ``fast-at`` job of the ``mnist-linf`` recipe, a ``wong-cnn``)
on the first ``n`` MNIST test points at ℓ∞ ε = 0.3, one thread: the ``autoattack`` suite of
``advlab eval robust`` vs torchattacks' AutoAttack at two budgets (seconds, robust accuracy),
each run in a fresh process (``--worker``) as a user would start it, the libraries
alternating (``--part suites``, docs/benchmarks/autoattack.md). Then APGD's cost per gradient
step against one forward+backward, and Square's queries per fooled point (``--part steps``,
docs/benchmarks/autoattack-steps.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from advlab.attacks import backward
from bench.common import ROOT, alternated, clocked, fwd_bwd, model_run, write_fragment

DEFAULT_RUN = ROOT / "runs" / "reproduce" / "mnist-linf" / "fast-at"
HINT = "run `advlab reproduce mnist-linf` first"


def _fresh(lib: str, run: Path, n: int, eps: float, steps: int | None, acc: dict):
    """``fn(r) -> seconds``: one suite run of ``lib`` in a new process (``--worker``), its
    accuracies into ``acc``."""
    def fn(r: int) -> float:
        argv = [sys.executable, "-m", "bench.autoattack", "--worker", lib, "--model-run",
                str(run), "--n", str(n), "--eps", str(eps), "--steps", str(steps or 0)]
        out = subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, text=True).stdout
        res = json.loads(out.strip().splitlines()[-1])
        acc[lib] = res["robust_accuracy"]
        if "after" in res:
            acc["after"] = res["after"]
        return res["seconds"]
    return fn


def _worker(lib: str, run: Path, n: int, eps: float, steps: int) -> None:
    """One suite run in this process; prints its seconds and robust accuracy as JSON."""
    torch.set_num_threads(1)
    from advlab import data
    from advlab.weights import load_model

    model = load_model(run).eval()
    test = data.load("mnist", "test")
    acc: dict = {}
    run_suite = _ours if lib == "advlab" else _theirs
    seconds = run_suite(model, test.x[:n], test.y[:n], eps, steps or None, acc)
    print(json.dumps({"seconds": seconds, "robust_accuracy": acc[lib],
                      **({"after": acc["after"]} if "after" in acc else {})}))


def _ours(model, x, y, eps: float, steps: int, acc: dict) -> float:
    """Seconds of advlab's suite; its robust accuracy, also after each attack, into ``acc``."""
    from advlab.attacks import ThreatModel
    from advlab.eval import AutoAttackSettings, standard_evaluation

    seconds, ev = clocked(lambda: standard_evaluation(
        model, x, y, threat=ThreatModel("linf", eps), suite="autoattack", batch_size=500,
        autoattack=AutoAttackSettings(steps=steps)))
    acc["advlab"], acc["after"] = ev.robust_accuracy, ev.cumulative()
    return seconds


def _theirs(model, x, y, eps: float, steps: int | None, acc: dict) -> float:
    """Seconds of torchattacks' AutoAttack as shipped (``steps`` None), or of its four attacks
    composed the same way with ``steps`` iterations for APGD, APGD-T and FAB-T; its robust
    accuracy into ``acc``."""
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
    seconds, advs = clocked(lambda: [aa(x[i:i + 500], y[i:i + 500])
                                     for i in range(0, len(x), 500)])
    with torch.no_grad():
        pred = torch.cat([model(a).argmax(1) for a in advs])
    acc["torchattacks"] = (pred == y).float().mean().item()
    return seconds


def _apgd_cost(model, x, reps: int, steps: int = 100
               ) -> tuple[float, dict[str, tuple[float, float]]]:
    """(CPU seconds of one forward+backward, {APGD variant: (CPU seconds per step, ratio)}) on
    ``x``, over ``reps`` rounds of ``steps`` steps (AutoAttack's 100 iterations). Paired: in a
    round the floor is timed before the first variant and after each one, and a variant's
    ratio is its time over the mean of the two floors beside it (the machine's drift between
    rounds cancels); medians over the rounds."""
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
        return clocked(lambda: [fwd_bwd(model, x, y, len(x)) for _ in range(steps)],
                       clock)[0] / steps

    def cost(attack):
        return lambda r: clocked(lambda: attack(model, x, y), clock)[0] / steps

    floors, secs = [], {k: [] for k in attacks}
    ratios = {k: [] for k in attacks}
    for r in range(reps):
        before = floor(r)
        floors.append(before)
        for name, attack in attacks.items():
            t = cost(attack)(r)
            after = floor(r)
            floors.append(after)
            secs[name].append(t)
            ratios[name].append(t / ((before + after) / 2))
            before = after
    med = statistics.median
    return med(floors), {k: (med(secs[k]), med(ratios[k])) for k in attacks}


def _square_queries(model, x, y, eps: float) -> list[tuple[float, int]]:
    """(median queries per fooled point, points fooled) of advlab's Square, torchattacks'."""
    import torchattacks

    from advlab.attacks import Square

    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok], y[ok]
    r = Square(eps=eps, queries=5000)(model, x, y)
    ours = r.info["queries"][r.success]
    sq = torchattacks.Square(model, norm="Linf", eps=eps, n_queries=5000, seed=0)
    sq.init_hyperparam(x)  # what its forward does before the run
    n_q, adv = sq.attack_single_run(x, y)
    with torch.no_grad():
        fooled = model(adv).argmax(1) != y
    return [(q.float().median().item() if len(q) else float("nan"), len(q))
            for q in (ours, n_q[fooled])]


BUDGETS = {100: ("AutoAttack's budget (100 iterations)", 100, 100),
           10: ("torchattacks' default budget (10 iterations)", 10, None)}


def main(quick: bool = False, run: Path = DEFAULT_RUN, n: int = 1000, eps: float = 0.3,
         repeats: int = 1, budgets: tuple[int, ...] = (100, 10), part: str = "all",
         rounds: int = 7) -> None:
    """``part``: ``suites`` (the suite timings, docs/benchmarks/autoattack.md), ``steps``
    (APGD per step and Square's queries, autoattack-steps.md) or ``all``."""
    torch.set_num_threads(1)
    model_run(run, HINT)
    if part in ("all", "suites"):
        _suites(quick, run, n, eps, repeats, budgets)
    if part in ("all", "steps"):
        _steps(quick, run, n, eps, rounds)


def _shown(run: Path) -> Path:
    """``run`` as the docs name it: relative to the checkout when inside it."""
    return run.relative_to(ROOT) if run.is_relative_to(ROOT) else run


def _command(run: Path, quick: bool, part: str, **options) -> str:
    return (f"python -m bench.autoattack --model-run {_shown(run)} --part {part} "
            + " ".join(f"--{k} {v}" for k, v in options.items()) + " --quick" * quick)


def _suites(quick: bool, run: Path, n: int, eps: float, repeats: int,
            budgets: tuple[int, ...]) -> None:
    n = min(n, 20) if quick else n
    rows, after = [], {}
    for label, ours_steps, their_steps in (BUDGETS[b] for b in budgets):
        acc: dict = {}
        o, t = alternated([_fresh("advlab", run, n, eps, ours_steps, acc),
                           _fresh("torchattacks", run, n, eps, their_steps, acc)], repeats)
        after[label] = acc["after"]
        rows.append(f"| {label} | {o:.1f} | {t:.1f} | **{t / o:.2f}×** | "
                    f"{acc['advlab']:.2%} | {acc['torchattacks']:.2%} |")
        print(rows[-1], flush=True)
    name = _shown(run)
    cumul = "; ".join(f"{label}: " + ", ".join(f"{k} {v:.2%}" for k, v in steps)
                      for label, steps in after.items())
    body = f"""
Model: `{name}`; the first {n} MNIST test points; ℓ∞ ε = {eps:g}; one thread; every run in a
fresh Python process, as a user starts it, the libraries alternating ({repeats} run(s) each,
median; the seconds are the suite's alone, not the imports). advlab runs
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

APGD's cost per gradient step and Square's queries: the next section.
"""
    options = {"n": n, "repeats": repeats}
    if budgets != (100, 10):
        options["budgets"] = ",".join(map(str, budgets))
    write_fragment("autoattack" + "-quick" * quick,
                   "AutoAttack-grade evaluation vs torchattacks' AutoAttack",
                   _command(run, quick, "suites", **options), body)


def _steps(quick: bool, run: Path, n: int, eps: float, rounds: int) -> None:
    from advlab import data
    from advlab.weights import load_model

    model = load_model(run).eval()
    test = data.load("mnist", "test")
    x, y = test.x[:min(n, 500)], test.y[:min(n, 500)]
    reps, steps = (1, 10) if quick else (rounds, 100)
    floor, per_step = _apgd_cost(model, x, reps, steps)
    choice = backward.conv_backward(model, x.shape[1:], x.device)
    (sq_ours, sq_n_ours), (sq_theirs, sq_n_theirs) = _square_queries(model, x[:200], y[:200], eps)
    apgd = "\n".join(f"| {k} | {1e3 * v:.1f} | {1e3 * floor:.1f} | **{r:.3f}** |"
                     for k, (v, r) in per_step.items())
    print(apgd, flush=True)
    name = _shown(run)
    body = f"""
Model: `{name}`. APGD per gradient step on the first {len(x)} MNIST test points (ε = 0: every
step on the whole batch), against one forward+backward of the model (advlab chose the {choice}
CPU convolution backward for both); CPU time of the one thread. {reps} rounds; in each, the
floor is timed before the first variant and after every variant, and a variant's ratio is its
time over the mean of the two floors beside it (the machine's drift cancels within a pair);
medians over the rounds. The fixed costs — the clean and final forward passes, the random
start — are spread over the {steps} steps. Target: ≤ 1.05.

| attack | ms per step | ms per forward+backward | ratio |
|---|---|---|---|
{apgd}

Square, 5000 queries, ℓ∞ ε = {eps:g}, on the correctly classified points among the first 200:
median queries per fooled point {sq_ours:.0f} (advlab, {sq_n_ours} fooled) vs {sq_theirs:.0f}
(torchattacks 3.5.1, {sq_n_theirs} fooled).
"""
    write_fragment("autoattack-steps" + "-quick" * quick,
                   "APGD per gradient step, and Square's queries",
                   _command(run, quick, "steps", rounds=rounds), body)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model-run", "--run", type=Path, default=DEFAULT_RUN,
                    help="an MNIST classifier run (default: the mnist-linf recipe's fast-at job)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="20 points, short APGD timing")
    ap.add_argument("--budgets", default="100,10",
                    help="rows: 100 (AutoAttack's iterations), 10 (torchattacks' default)")
    ap.add_argument("--part", choices=("all", "suites", "steps"), default="all",
                    help="suites: the suite timings; steps: APGD per step and Square's queries")
    ap.add_argument("--rounds", type=int, default=7, help="paired rounds of the APGD timing")
    ap.add_argument("--worker", choices=("advlab", "torchattacks"), help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        _worker(a.worker, a.model_run.resolve(), a.n, a.eps, a.steps)
    else:
        budgets = tuple(int(b) for b in a.budgets.split(","))
        if not set(budgets) <= set(BUDGETS):
            ap.error(f"--budgets: expected some of 100,10, got {a.budgets!r}")
        main(a.quick, a.model_run.resolve(), a.n, a.eps, a.repeats, budgets, a.part, a.rounds)
