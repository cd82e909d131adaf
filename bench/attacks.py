"""Issue 3: the attack engine against its peers, side by side, on the same model and images.

    ADVLAB_DATA=../shared/data python -m bench.run --only attacks [--quick]

Model: the `madry-cnn` trained by the classifiers benchmark (bench/out/madrycnn-mnist-cos), the
first N MNIST test images (N = 1000; torchattacks' DeepFool, a per-sample Python loop, and CW
with a binary search on smaller slices stated in the table). Every measurement runs in its own
worker process, so its peak resident memory (``ru_maxrss`` of that process) is its own; the
workers of the libraries alternate (advlab, torchattacks, Foolbox, advlab, ...) and each figure
is the median over the repetitions. Inside a worker, a warm-up call on 10 images precedes the
timed call (the same for every library). The peers get the whole batch, as their documentation
shows; advlab runs its evaluation path: ``advlab.eval.robust_accuracy`` (clean pass, the still-
correct points only, in the batch size measured for the machine, PGD stopping per sample once
fooled). The peers' time includes one forward pass on their adversarial batch, to read the
robust accuracy.

The floor: one forward+backward with respect to the input, timed in the same worker at the same
batch size; advlab's PGD without early stop or mask, per step, is divided by it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.common import ROOT, require_data, write_fragment

OUT = ROOT / "bench" / "out"
MODEL_RUNS = [OUT / "madrycnn-mnist-cos", OUT / "madrycnn-mnist",
              OUT / "defenses" / "madrycnn-mnist-plain"]

# case -> (description, libraries)
CASES = {
    "fgsm": ("FGSM, linf eps = 0.1", ("advlab", "torchattacks", "foolbox")),
    "pgd": ("PGD-40, linf eps = 0.3, step 0.01, no random start",
            ("advlab", "torchattacks", "foolbox")),
    "pgd-small": ("PGD-40, linf eps = 0.1, step 0.01, no random start",
                  ("advlab", "torchattacks", "foolbox")),
    "deepfool": ("DeepFool l2, 50 steps, overshoot 0.02, 10 candidate classes",
                 ("advlab", "foolbox")),
    "deepfool-ta": ("DeepFool l2, 50 steps, overshoot 0.02 (slice for torchattacks' loop)",
                    ("advlab", "torchattacks", "foolbox")),
    "cw": ("CW-l2, c = 1, kappa = 0, 100 Adam steps of lr 0.01, no binary search",
           ("advlab", "torchattacks")),
    "cw-search": ("CW-l2, 5 binary-search steps x 100 Adam steps from c = 1",
                  ("advlab", "foolbox")),
    "step": ("advlab PGD-40 per step (no early stop, no mask) / one forward+backward",
             ("advlab",)),
}


# --- the worker: one library, one case, one timed call ---------------------------------------

def _model_run(quick: bool = False) -> Path:
    """A trained madry-cnn run; with ``quick`` the smoke run's one-epoch model will do."""
    candidates = MODEL_RUNS + ([OUT / "quick" / MODEL_RUNS[0].name] if quick else [])
    for p in candidates:
        if (p / "metrics.json").is_file():
            return p
    sys.exit("no trained madry-cnn: run `python -m bench.run --only classifiers"
             + (" --quick" if quick else "") + "` first")


def _fb_model(model):
    import foolbox as fb
    return fb.PyTorchModel(model, bounds=(0, 1), device="cpu")


def _peer(lib: str, case: str, model):
    """A function (x, y) -> (adv, extra) for the peer library and case."""
    if lib == "torchattacks":
        import torchattacks as ta
        atk = {
            "fgsm": lambda: ta.FGSM(model, eps=0.1),
            "pgd": lambda: ta.PGD(model, eps=0.3, alpha=0.01, steps=40, random_start=False),
            "pgd-small": lambda: ta.PGD(model, eps=0.1, alpha=0.01, steps=40,
                                        random_start=False),
            "deepfool-ta": lambda: ta.DeepFool(model, steps=50, overshoot=0.02),
            "cw": lambda: ta.CW(model, c=1, kappa=0, steps=100, lr=0.01),
        }[case]()
        return lambda x, y: atk(x, y)
    import foolbox as fb
    fmodel = _fb_model(model)
    atk, eps = {
        "fgsm": (lambda: fb.attacks.FGSM(), 0.1),
        "pgd": (lambda: fb.attacks.LinfPGD(abs_stepsize=0.01, steps=40, random_start=False),
                0.3),
        "pgd-small": (lambda: fb.attacks.LinfPGD(abs_stepsize=0.01, steps=40,
                                                 random_start=False), 0.1),
        "deepfool": (lambda: fb.attacks.L2DeepFoolAttack(steps=50, candidates=10,
                                                         overshoot=0.02), None),
        "deepfool-ta": (lambda: fb.attacks.L2DeepFoolAttack(steps=50, candidates=10,
                                                            overshoot=0.02), None),
        "cw-search": (lambda: fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=5, steps=100, stepsize=0.01, confidence=0, initial_const=1.0),
            None),
    }[case]
    atk = atk()

    def run(x, y):
        raw, clipped, success = atk(fmodel, x, y, epsilons=eps)
        return clipped
    return run


def _ours(case: str):
    from advlab.attacks import create
    return {
        "fgsm": lambda: create("fgsm", eps=0.1),
        "pgd": lambda: create("pgd", eps=0.3, alpha=0.01, steps=40, random_start=False,
                              early_stop=True),
        "pgd-small": lambda: create("pgd", eps=0.1, alpha=0.01, steps=40, random_start=False,
                                    early_stop=True),
        "deepfool": lambda: create("deepfool", steps=50, overshoot=0.02, num_classes=10),
        "deepfool-ta": lambda: create("deepfool", steps=50, overshoot=0.02, num_classes=10),
        "cw": lambda: create("cw", c=1.0, kappa=0.0, steps=100, lr=0.01,
                             binary_search_steps=1),
        "cw-search": lambda: create("cw", c=1.0, kappa=0.0, steps=100, lr=0.01,
                                    binary_search_steps=5),
    }[case]()


def _fwd_bwd(model, x, batch: int, reps: int = 5) -> float:
    """Median seconds of one forward+backward (w.r.t. the input) over x in batches."""
    import torch
    times = []
    for _ in range(reps + 1):
        t = time.perf_counter()
        for xb in x.split(batch):
            xa = xb.clone().requires_grad_(True)
            torch.autograd.grad(model(xa).logsumexp(1).sum(), xa)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def worker(spec: dict) -> dict:
    import torch

    from advlab import data
    from advlab.eval.robust import robust_accuracy
    from advlab.tuning import auto_batch_size
    from advlab.weights import load_model

    model = load_model(Path(spec["run"]), "cpu").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    ds = data.load("mnist", "test")
    x, y = ds.x[:spec["n"]].contiguous(), ds.y[:spec["n"]].contiguous()
    lib, case = spec["lib"], spec["case"]
    out: dict = {"lib": lib, "case": case, "n": int(x.shape[0])}
    if lib == "none":  # baseline memory: model and data loaded, nothing run
        return out
    if lib == "advlab" and case == "step":
        attack = create_step_attack()
        batch = auto_batch_size(model, tuple(x.shape[1:]), "cpu")
        attack(model, x[:10], y[:10])
        t = time.perf_counter()
        for xb, yb in zip(x.split(batch), y.split(batch), strict=True):
            attack(model, xb, yb)
        out["seconds"] = time.perf_counter() - t
        out["floor"] = _fwd_bwd(model, x, batch)
        out["batch_size"] = batch
        return out
    if lib == "advlab":
        attack = _ours(case)
        robust_accuracy(model, x[:10], y[:10], attack)  # warm-up (and batch size, cached)
        t = time.perf_counter()
        ev = robust_accuracy(model, x, y, attack)
        out["seconds"] = time.perf_counter() - t
        fooled = ev.fooled
        out.update(robust_accuracy=ev.robust_accuracy, success=int(fooled.sum()),
                   batch_size=ev.batch_size,
                   mean_iterations=float(ev.result.iterations[ev.attacked].float().mean()),
                   l2=ev.result.l2[fooled].tolist(), fooled_idx=torch.nonzero(fooled)
                   .squeeze(1).tolist())
    else:
        counter = _Counting(model).eval()
        run = _peer(lib, case, counter)
        run(x[:10], y[:10])
        counter.calls = 0
        t = time.perf_counter()
        adv = run(x, y)
        out["forwards"] = counter.calls  # torchattacks' CW stops early: its steps taken
        with torch.no_grad():
            clean = model(x).argmax(1) == y
            pred = model(adv).argmax(1)
        out["seconds"] = time.perf_counter() - t
        fooled = clean & (pred != y)
        l2 = (adv - x).flatten(1).norm(dim=1)
        out.update(robust_accuracy=float((clean & (pred == y)).float().mean()),
                   success=int(fooled.sum()), l2=l2[fooled].tolist(),
                   fooled_idx=torch.nonzero(fooled).squeeze(1).tolist())
    out["x_norm"] = x.flatten(1).norm(dim=1).tolist()
    return out


class _Counting(torch.nn.Module):
    """``model`` wrapped to count its forward calls (one per attack step in the peers)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def create_step_attack():
    from advlab.attacks import create
    return create("pgd", eps=0.3, alpha=0.01, steps=40, random_start=False, early_stop=False)


# --- the parent: alternate workers, collect medians ------------------------------------------

def run_worker(spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "bench.attacks", "--worker", json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT,
                            text=True)
    stdout, stderr = proc.communicate()
    # wait4's rusage is gone after communicate(); the worker reports its own peak instead.
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def _rho(r: dict) -> float:
    if not r["fooled_idx"]:
        return float("nan")
    return statistics.fmean(l2 / r["x_norm"][i] for l2, i in zip(r["l2"], r["fooled_idx"],
                                                                  strict=True))


def _fmt_mb(kb: float) -> str:
    return f"{kb / 1024:.0f}"


def main(quick: bool = False) -> None:
    require_data()
    run = _model_run(quick)
    n = 100 if quick else 1000
    reps = 1 if quick else 3
    # the slowest cases on fewer images and one repetition, to fit the run in ~30 minutes:
    # torchattacks' per-sample DeepFool loop, and CW with its binary search (5 x 100 steps)
    sizes = {"deepfool-ta": 20 if quick else 100, "cw-search": 50 if quick else 200}
    case_reps = {"deepfool-ta": 1, "cw-search": 1}
    versions = {}
    for mod in ("torch", "torchattacks", "foolbox"):
        versions[mod] = __import__(mod).__version__
    base = run_worker({"run": str(run), "n": n, "lib": "none", "case": "none"})
    results: dict[tuple[str, str], list[dict]] = {}
    for case, (_, libs) in CASES.items():
        size = sizes.get(case, n)
        for r in range(case_reps.get(case, reps)):
            for lib in libs:
                res = run_worker({"run": str(run), "n": size, "lib": lib, "case": case})
                results.setdefault((case, lib), []).append(res)
                print(f"[attacks] {case} {lib} rep {r}: {res.get('seconds', 0):.2f} s, "
                      f"robust {res.get('robust_accuracy')}, peak {_fmt_mb(res['peak_kb'])} MB",
                      flush=True)
    rows = []
    for case, (desc, libs) in CASES.items():
        if case == "step":
            continue
        med = {lib: statistics.median(r["seconds"] for r in results[(case, lib)])
               for lib in libs}
        peers = [lib for lib in libs if lib != "advlab"]
        fastest = min(peers, key=med.get)
        for lib in libs:
            r0 = results[(case, lib)][0]
            extra = ""
            if case.startswith("deepfool"):
                extra = f"ρ₂ {_rho(r0):.4f}"
            elif case.startswith("cw"):
                l2 = r0["l2"]
                extra = f"median ℓ2 {statistics.median(l2):.3f}" if l2 else "median ℓ2 n/a"
            if lib == "advlab":
                extra += f"; batch {r0['batch_size']}, mean steps {r0['mean_iterations']:.1f}"
            speed = f"**{med[fastest] / med[lib]:.2f}×**" if lib == "advlab" else ""
            peak = max(r["peak_kb"] for r in results[(case, lib)])
            rows.append(f"| {desc if lib == libs[0] else ''} | {lib} | {r0['n']} | "
                        f"{med[lib]:.2f} | {speed} | {r0['robust_accuracy']:.4f} | "
                        f"{r0['success']} | {extra} | {_fmt_mb(peak - base['peak_kb'])} |")
    step = results[("step", "advlab")]
    per_step = statistics.median(r["seconds"] / 40 for r in step)
    floor = statistics.median(r["floor"] for r in step)
    cw_ours = statistics.median(r["seconds"] for r in results[("cw", "advlab")]) / 100
    ta_steps = statistics.median(r["forwards"] for r in results[("cw", "torchattacks")])
    cw_ta = statistics.median(r["seconds"] / r["forwards"]
                              for r in results[("cw", "torchattacks")])
    df_ta = (statistics.median(r["seconds"] for r in results[("deepfool-ta", "torchattacks")])
             / statistics.median(r["seconds"] for r in results[("deepfool-ta", "advlab")]))
    body = (
        __doc__.split("\n\n", 2)[2].strip() + "\n\n"
        f"Model run `{run.relative_to(ROOT)}`; {reps} repetitions (1 for "
        f"{', '.join(case_reps)}); versions: "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f". Baseline peak memory of a worker (model and data loaded): "
        f"{_fmt_mb(base['peak_kb'])} MB; the table's memory column is the peak above it.\n\n"
        "| attack | library | images | seconds (median) | advlab speed-up vs fastest peer | "
        "robust accuracy | fooled | notes | peak MB above baseline |\n"
        "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"- advlab PGD per gradient step, no early stop and no mask, batch "
        f"{step[0]['batch_size']}: {per_step * 1e3:.1f} ms per step for {n} images vs "
        f"{floor * 1e3:.1f} ms for one forward+backward of the same batches: ratio "
        f"**{per_step / floor:.3f}** (target ≤ 1.05).\n"
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
    write_fragment("attacks" + ("-quick" if quick else ""), "Attack engine vs peers",
                   "python -m bench.run --only attacks" + (" --quick" if quick else ""), body)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        import resource

        import torch
        torch.manual_seed(0)
        res = worker(json.loads(sys.argv[2]))
        res["peak_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps(res))
    else:
        main(quick="--quick" in sys.argv)
