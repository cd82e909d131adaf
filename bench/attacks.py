"""Issue 3: the attack engine against its peers, side by side, on the same model and images.

    ADVLAB_DATA=../shared/data python -m bench.attacks [--model-run RUN] [--quick]

Model: an MNIST `madry-cnn` run (default bench/out/madrycnn-mnist-cos: 8 epochs, Adam 1e-3,
batch 128, cosine lr), the first N MNIST test images (N = 1000; torchattacks' DeepFool, a
per-sample Python loop, and CW with a binary search on smaller slices stated in the table).
Every measurement runs in its own worker process, so its peak resident memory (``VmHWM`` of
that process) is its own; the workers of the libraries alternate (advlab, torchattacks,
Foolbox, advlab, ...) and each figure is the median over the repetitions. Inside a worker, a
warm-up call on 10 images precedes the timed call (the same for every library). The peers get
the whole batch, as their documentation shows; advlab runs its evaluation path:
``advlab.eval.robust_accuracy`` (clean pass, the still-correct points only, in the batch size
measured for the machine, PGD stopping per sample once fooled). The peers' time includes one
forward pass on their adversarial batch, to read the robust accuracy. The floor: one
forward+backward with respect to the input, timed in the same worker at the same batch size;
advlab's PGD without early stop or mask, per step, is divided by it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from bench.common import OUT, ROOT, clocked, fwd_bwd, model_run, peak_kb, write_fragment

DEFAULT_RUN = OUT / "madrycnn-mnist-cos"
TRAIN = ("train it with `advlab train classifier --dataset mnist --model madry-cnn --epochs 8 "
         f"--batch-size 128 --lr 0.001 --schedule cosine --out {DEFAULT_RUN.relative_to(ROOT)}`")
PGD = dict(alpha=0.01, steps=40, random_start=False)  # the same names in torchattacks
FB_PGD = dict(abs_stepsize=0.01, steps=40, random_start=False)
DF = dict(steps=50, overshoot=0.02)
CW = dict(c=1.0, kappa=0.0, steps=100, lr=0.01)


def _pgd(eps: float) -> tuple:
    return (f"PGD-40, linf eps = {eps}, step 0.01, no random start",
            ("pgd", dict(eps=eps, **PGD, early_stop=True)), lambda ta, m: ta.PGD(m, eps=eps, **PGD),
            lambda fb: (fb.attacks.LinfPGD(**FB_PGD), eps))


# case -> (description, advlab's (attack, parameters), torchattacks' attack (ta, model) or None,
#          Foolbox's (attack, eps) (fb) or None)
CASES = {
    "fgsm": ("FGSM, linf eps = 0.1", ("fgsm", dict(eps=0.1)),
             lambda ta, m: ta.FGSM(m, eps=0.1), lambda fb: (fb.attacks.FGSM(), 0.1)),
    "pgd": _pgd(0.3),
    "pgd-small": _pgd(0.1),
    "deepfool": ("DeepFool l2, 50 steps, overshoot 0.02, 10 candidate classes",
                 ("deepfool", dict(**DF, num_classes=10)), None,
                 lambda fb: (fb.attacks.L2DeepFoolAttack(**DF, candidates=10), None)),
    "deepfool-ta": ("DeepFool l2, 50 steps, overshoot 0.02 (slice for torchattacks' loop)",
                    ("deepfool", dict(**DF, num_classes=10)), lambda ta, m: ta.DeepFool(m, **DF),
                    lambda fb: (fb.attacks.L2DeepFoolAttack(**DF, candidates=10), None)),
    "cw": ("CW-l2, c = 1, kappa = 0, 100 Adam steps of lr 0.01, no binary search",
           ("cw", dict(**CW, binary_search_steps=1)), lambda ta, m: ta.CW(m, **CW), None),
    "cw-search": ("CW-l2, 5 binary-search steps x 100 Adam steps from c = 1",
                  ("cw", dict(**CW, binary_search_steps=5)), None,
                  lambda fb: (fb.attacks.L2CarliniWagnerAttack(
                      binary_search_steps=5, steps=100, stepsize=0.01, confidence=0,
                      initial_const=1.0), None)),
    "step": ("advlab PGD-40 per step (no early stop, no mask) / one forward+backward",
             ("pgd", dict(eps=0.3, **PGD, early_stop=False)), None, None),
}


def libraries(case: str) -> tuple[str, ...]:
    _, _, ta, fb = CASES[case]
    return ("advlab",) + ("torchattacks",) * bool(ta) + ("foolbox",) * bool(fb)


# --- the worker: one library, one case, one timed call ---------------------------------------

def _peer(lib: str, case: str, model):
    """A function (x, y) -> adversarial x of the peer library for the case."""
    if lib == "torchattacks":
        import torchattacks
        return CASES[case][2](torchattacks, model)
    import foolbox
    atk, eps = CASES[case][3](foolbox)
    fmodel = foolbox.PyTorchModel(model, bounds=(0, 1), device="cpu")
    return lambda x, y: atk(fmodel, x, y, epsilons=eps)[1]  # (raw, clipped, success)


def worker(spec: dict) -> dict:
    from advlab import data
    from advlab.attacks import create
    from advlab.eval.robust import robust_accuracy
    from advlab.tuning import auto_batch_size
    from advlab.weights import load_model

    model = load_model(Path(spec["run"]), "cpu").eval().requires_grad_(False)
    ds = data.load("mnist", "test")
    x, y = ds.x[:spec["n"]].contiguous(), ds.y[:spec["n"]].contiguous()
    lib, case = spec["lib"], spec["case"]
    out: dict = {"lib": lib, "case": case, "n": int(x.shape[0])}
    if lib == "none":  # baseline memory: model and data loaded, nothing run
        return out
    name, params = CASES[case][1]
    attack = create(name, **params)  # advlab's (the peers' workers leave it unused)
    if case == "step":
        batch = auto_batch_size(model, tuple(x.shape[1:]), "cpu")
        attack(model, x[:10], y[:10])
        out["seconds"] = clocked(lambda: [attack(model, xb, yb) for xb, yb in
                                          zip(x.split(batch), y.split(batch), strict=True)])[0]
        fwd_bwd(model, x, y, batch)
        out["floor"] = statistics.median(clocked(lambda: fwd_bwd(model, x, y, batch))[0]
                                         for _ in range(5))
        out["batch_size"] = batch
        return out
    if lib == "advlab":
        robust_accuracy(model, x[:10], y[:10], attack)  # warm-up (and batch size, cached)
        out["seconds"], ev = clocked(lambda: robust_accuracy(model, x, y, attack))
        fooled, l2 = ev.fooled, ev.result.l2
        out.update(robust_accuracy=ev.robust_accuracy, batch_size=ev.batch_size,
                   mean_iterations=float(ev.result.iterations[ev.attacked].float().mean()))
    else:
        run, calls = _peer(lib, case, model), []
        run(x[:10], y[:10])
        model.register_forward_hook(lambda *_: calls.append(1))  # one call per attack step

        def attack_and_read() -> tuple[torch.Tensor, ...]:
            adv = run(x, y)
            out["forwards"] = len(calls)  # torchattacks' CW stops early: its steps taken
            with torch.no_grad():
                return adv, model(x).argmax(1) == y, model(adv).argmax(1)

        out["seconds"], (adv, clean, pred) = clocked(attack_and_read)
        fooled, l2 = clean & (pred != y), (adv - x).flatten(1).norm(dim=1)
        out["robust_accuracy"] = float((clean & (pred == y)).float().mean())
    l2 = l2[fooled]  # the fooled points' perturbations; ρ₂ = mean ‖r‖₂ / ‖x‖₂ over them
    out.update(success=int(fooled.sum()), rho=float((l2 / x[fooled].flatten(1).norm(dim=1)).mean()),
               l2_median=statistics.median(l2.tolist()) if len(l2) else float("nan"))
    return out


# --- the parent: alternate workers, collect medians ------------------------------------------

def run_worker(spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "bench.attacks", "--worker", json.dumps(spec)],
                          capture_output=True, env=env, cwd=ROOT, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # with the worker's own peak


def main(quick: bool = False, run: Path = DEFAULT_RUN) -> None:
    run = model_run(run, TRAIN)
    n, reps = (100, 1) if quick else (1000, 3)
    # the slowest cases on fewer images and one repetition, to fit the run in ~30 minutes:
    # torchattacks' per-sample DeepFool loop, and CW with its binary search (5 x 100 steps)
    slow = {"deepfool-ta": 20 if quick else 100, "cw-search": 50 if quick else 200}
    versions = {m: __import__(m).__version__ for m in ("torch", "torchattacks", "foolbox")}
    base = run_worker({"run": str(run), "n": n, "lib": "none", "case": "none"})
    results: dict[tuple[str, str], list[dict]] = {}
    for case in CASES:
        for r in range(1 if case in slow else reps):
            for lib in libraries(case):
                res = run_worker({"run": str(run), "n": slow.get(case, n), "lib": lib,
                                  "case": case})
                results.setdefault((case, lib), []).append(res)
                print(f"[attacks] {case} {lib} rep {r}: {res.get('seconds', 0):.2f} s, "
                      f"robust {res.get('robust_accuracy')}, peak {res['peak_kb'] / 1024:.0f} MB",
                      flush=True)

    def med(case: str, lib: str, key=lambda r: r["seconds"]) -> float:
        return statistics.median(map(key, results[(case, lib)]))

    rows = []
    for case, (desc, *_) in CASES.items():
        if case == "step":
            continue
        libs = libraries(case)
        fastest = min(med(case, lib) for lib in libs[1:])
        for lib in libs:
            r0 = results[(case, lib)][0]
            extra = (f"ρ₂ {r0['rho']:.4f}" if case.startswith("deepfool") else
                     f"median ℓ2 {r0['l2_median']:.3f}" if case.startswith("cw") else "")
            if lib == "advlab":
                extra += (f"{'; ' * bool(extra)}batch {r0['batch_size']}, mean steps "
                          f"{r0['mean_iterations']:.1f}")
            speed = f"**{fastest / med(case, lib):.2f}×**" if lib == "advlab" else ""
            peak = max(r["peak_kb"] for r in results[(case, lib)])
            rows.append(f"| {desc if lib == 'advlab' else ''} | {lib} | {r0['n']} | "
                        f"{med(case, lib):.2f} | {speed} | {r0['robust_accuracy']:.4f} | "
                        f"{r0['success']} | {extra} | {(peak - base['peak_kb']) / 1024:.0f} |")
    per_step, floor = med("step", "advlab") / 40, med("step", "advlab", lambda r: r["floor"])
    cw_ours = med("cw", "advlab") / 100
    ta_steps = med("cw", "torchattacks", lambda r: r["forwards"])
    cw_ta = med("cw", "torchattacks", lambda r: r["seconds"] / r["forwards"])
    df_ta = med("deepfool-ta", "torchattacks") / med("deepfool-ta", "advlab")
    name = run.relative_to(ROOT) if run.is_relative_to(ROOT) else run
    body = (
        __doc__.split("\n\n", 2)[2].strip() + "\n\n"
        f"Model run `{name}`; {reps} repetitions (1 for {', '.join(slow)}); versions: "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f". Baseline peak memory of a worker (model and data loaded): "
        f"{base['peak_kb'] / 1024:.0f} MB; the table's memory column is the peak above it.\n\n"
        "| attack | library | images | seconds (median) | advlab speed-up vs fastest peer | "
        "robust accuracy | fooled | notes | peak MB above baseline |\n"
        "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"- advlab PGD per gradient step, no early stop and no mask, batch "
        f"{results['step', 'advlab'][0]['batch_size']}: {per_step * 1e3:.1f} ms per step "
        f"for {n} images vs {floor * 1e3:.1f} ms for one forward+backward of the same "
        f"batches: ratio **{per_step / floor:.3f}** (target ≤ 1.05).\n"
        f"- CW per Adam step (the `cw` row, {n} images): advlab {cw_ours * 1e3:.1f} ms "
        f"(includes the clean pass, the final bisection's 10 forward passes and the robust "
        f"mask), torchattacks {cw_ta * 1e3:.1f} ms per step it took (its CW stops early when "
        f"the total cost rose since the last tenth of the steps: {ta_steps:.0f} forward passes "
        f"of the 100 here, which is also why it fools fewer points): ratio "
        f"**{cw_ours / cw_ta:.3f}** (target ≤ 1.1).\n"
        f"- DeepFool against torchattacks' per-sample loop (the slice row): advlab "
        f"**{df_ta:.1f}×** faster (target ≥ 10×), and it fools every point where torchattacks, "
        f"clipping every step, stalls short of the boundary.\n"
    )
    flags = (f" --model-run {name}" if run != DEFAULT_RUN else "") + " --quick" * quick
    write_fragment("attacks" + "-quick" * quick, "Attack engine vs peers",
                   "python -m bench.attacks" + flags, body)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        torch.manual_seed(0)
        print(json.dumps({**worker(json.loads(sys.argv[2])), "peak_kb": peak_kb()}))  # after it
    else:
        ap = argparse.ArgumentParser(description=__doc__)
        ap.add_argument("--model-run", type=Path, default=DEFAULT_RUN, help="an MNIST model run")
        ap.add_argument("--quick", action="store_true", help="smaller settings (smoke run)")
        a = ap.parse_args()
        main(a.quick, a.model_run.resolve())
