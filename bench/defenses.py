"""Issue 5 acceptance: defenses trained by advlab's loop on real data, evaluated by advlab.eval.

    ADVLAB_DATA=../shared/data python -m bench.run --only defenses [--quick]
    ADVLAB_DATA=../shared/data python -m bench.defenses --part mnist [--quick]

Parts: ``mnist`` (fast adversarial training of madry-cnn at ε = 0.3, PGD-50 × 10 restarts,
undefended model beside it), ``fashion`` (the Deep Defense report's table for mlp-100:
vanilla, DeepFool fine-tuning, Deep Defense) and ``lipschitz`` (spectrally bounded mlp-100 vs
plain on Fashion-MNIST: CW perturbation and certified accuracy) and ``svd`` (the SVD sweep of
the vanilla Fashion-MNIST and MNIST models), ``defense-gan`` (Defense-GAN on MNIST with plain
gradients and BPDA, and the checks) and ``latent`` (classifiers on AE/VAE codes; its rows are
cached in bench/out/defenses/latent-rows/, ``--latent-dataset mnist`` fills one data set's rows so
two processes can share the work). Runs are written to
bench/out/defenses/<run>/ (bench/out/defenses/quick/ with --quick) and reused when complete;
each part stores its numbers in bench/out/defenses/<part>.json and the markdown fragment
docs/benchmarks/defenses.md is rebuilt from the parts present. Torch runs on one thread: on
this shared 2-core CPU a second intra-op thread slows small ops down (spin-waits).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
import zlib
from pathlib import Path
from typing import Any

import torch

from bench.common import FRAGMENTS, ROOT, require_data, write_fragment

OUT = ROOT / "bench" / "out" / "defenses"
PARTS = ("mnist", "fashion", "lipschitz", "svd", "latent", "defense-gan")
log = logging.getLogger("bench.defenses")


def _out(quick: bool) -> Path:
    return OUT / "quick" if quick else OUT


def train_run(name: str, job_kwargs: dict, train_kwargs: dict, quick: bool,
              defense: str | None = None, defense_params: dict | None = None,
              quick_epochs: int = 1) -> tuple[dict, Path]:
    """Train (or reuse) the run ``name``: the ordinary ``train_classifier`` with an objective."""
    from advlab import defenses
    from advlab.train.classifier import ClassifierJob, train_classifier
    from advlab.train.config import TrainConfig

    run_dir = _out(quick) / name
    if (run_dir / "metrics.json").is_file():
        return json.loads((run_dir / "metrics.json").read_text()), run_dir
    train_kwargs = dict(train_kwargs)
    job_kwargs = dict(job_kwargs)
    if quick:
        train_kwargs["epochs"] = quick_epochs
        job_kwargs["n_train"] = 2000
    job = ClassifierJob(train=TrainConfig(device="cpu", **train_kwargs), **job_kwargs)
    objective, extra = None, None
    if defense:
        objective = defenses.create_objective(defense, dataset=job.dataset,
                                              **(defense_params or {}))
        extra = {"defense": defense, "defense_config": defenses.config(objective)}
    log.info("training %s", name)
    run, metrics = train_classifier(job, run_dir, resume=run_dir.is_dir(), objective=objective,
                                    progress=False, extra_config=extra)
    return metrics, run.path


def _train_seconds(metrics: dict) -> float:
    """Training time of a run, plus that of the run it was fine-tuned from (if any)."""
    return (sum(r["train_seconds"] for r in metrics["history"])
            + metrics.get("init_train_seconds", 0.0))


def _test(dataset: str, n: int | None, seed: int = 0):
    from advlab import data

    test = data.load(dataset, "test")
    return data.subset(test, n, seed=seed) if n is not None and n < len(test) else test


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


# --- part 1: MNIST adversarial training --------------------------------------------------------

FAST_AT = dict(epochs=10, batch_size=100, lr=2e-3, schedule="onecycle")
# Wong et al.'s MNIST recipe on their network: Adam, lr 0 -> 5e-3 at 2/5 of training -> 0
FAST_AT_WONG = dict(epochs=10, batch_size=100, lr=5e-3, schedule="cyclic")


def train_fast_at_selected(quick: bool, model_name: str = "madry-cnn",
                           recipe: dict | None = None,
                           run_name: str = "madrycnn-mnist-fastat-selected",
                           defense: str = "fast-at", defense_params: dict | None = None,
                           init: Path | None = None) -> tuple[dict, Path]:
    """fast-at with Wong et al.'s guard against catastrophic overfitting: after every epoch,
    PGD-20 accuracy on 500 held-out training images; the epoch with the best one is kept.
    ``defense``/``defense_params`` choose another objective (pgd-at), ``init`` a run whose
    weights training starts from (fine-tuning; its training time is added to this one's)."""
    recipe = recipe or FAST_AT
    import copy

    from advlab import attacks, data, defenses, models
    from advlab.eval import robust_accuracy
    from advlab.runs import RunDir
    from advlab.train import TrainConfig, fit
    from advlab.weights import load_model, save_model

    run_dir = _out(quick) / run_name
    if (run_dir / "metrics.json").is_file():
        return json.loads((run_dir / "metrics.json").read_text()), run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    train = data.load("mnist", "train")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    n_hold = 100 if quick else 500
    hold = train.subset(perm[:n_hold])
    rest = train.subset(perm[n_hold:2000] if quick else perm[n_hold:])
    config = TrainConfig(device="cpu", **{**recipe, "epochs": 1 if quick else recipe["epochs"]})
    objective = defenses.create_objective(defense, dataset="mnist", **(defense_params or {}))
    torch.manual_seed(config.seed)
    model = models.create(model_name, "mnist")
    if init is not None:
        model.load_state_dict(load_model(init).state_dict())
    pgd = attacks.create("pgd", eps=0.3, alpha=0.025, steps=20, early_stop=True)
    best: dict[str, Any] = {"acc": -1.0, "epoch": 0, "state": None}

    def select(row: dict[str, float]) -> None:
        acc = robust_accuracy(model, hold.x, hold.y, pgd).robust_accuracy
        row["holdout_pgd20_acc"] = acc
        log.info("%s epoch %d: held-out PGD-20 accuracy %.4f", defense, row["epoch"], acc)
        if acc > best["acc"]:
            best.update(acc=acc, epoch=int(row["epoch"]),
                        state=copy.deepcopy(model.state_dict()))

    result = fit(model, rest, config, objective=objective, progress=False, on_epoch=select)
    model.load_state_dict(best["state"])
    model.eval()
    save_model(run_dir, model, {"dataset": "mnist", "selected_epoch": best["epoch"]})
    metrics = {"history": result.history, "selected_epoch": best["epoch"],
               "holdout_pgd20_acc": best["acc"], "n_holdout": n_hold,
               "defense_config": defenses.config(objective), "train": recipe,
               **({"init": str(init.relative_to(ROOT)),
                   "init_train_seconds": _train_seconds(json.loads(
                       (init / "metrics.json").read_text()))} if init is not None else {})}
    RunDir(run_dir).write_metrics(metrics)
    return metrics, run_dir


# pgd-at fine-tuning of the wong-cnn fast-at model: Madry et al.'s adversary (PGD-40 of 0.01,
# random start, ε = 0.3), Adam, cosine lr from 5e-4, 3 epochs, the epoch with the best held-out
# PGD-20 accuracy kept; its training time includes the fast-at run's
PGD_FT = "`wong-cnn` pgd-at, 3 epochs fine-tuning the fast-at model above, epoch selected"
PGD_FT_RECIPE = dict(epochs=3, batch_size=100, lr=5e-4, schedule="cosine")
PGD_FT5 = "`wong-cnn` pgd-at, the same fine-tuning over 5 epochs, epoch selected"


def _wong_pgd(restarts: int):
    """Wong et al.'s evaluation: PGD-50 of 0.01 on the cross-entropy, ``restarts`` starts."""
    from advlab import attacks

    return attacks.create("pgd", eps=0.3, alpha=0.01, steps=50, restarts=restarts,
                          early_stop=True)


def _pgd_full(row: dict[str, Any], model, full, restarts: int) -> None:
    """PGD-50 × ``restarts`` on the whole test set (the wong-cnn rows: 10k points in minutes)."""
    from advlab.eval import robust_accuracy

    t0 = time.perf_counter()
    res = robust_accuracy(model, full.x, full.y, _wong_pgd(restarts))
    row.update(pgd_full=res.robust_accuracy, pgd_full_summary=res.summary(),
               pgd_full_seconds=time.perf_counter() - t0, n_full=len(full))
    log.info("mnist full test set PGD-50 x %d: %.4f", restarts, res.robust_accuracy)


def part_mnist(quick: bool) -> dict[str, Any]:
    from advlab import attacks
    from advlab.attacks import ThreatModel
    from advlab.eval import clean_accuracy, reliable, robust_accuracy, soundness_checks
    from advlab.weights import load_model

    n_eval = 100 if quick else 1000
    restarts = 2 if quick else 10
    n_checks = 50 if quick else 200
    runs = {
        "undefended": train_run("madrycnn-mnist-plain",
                                dict(dataset="mnist", model="madry-cnn"),
                                dict(epochs=3, batch_size=128, lr=1e-3), quick),
        "fast-at (Wong et al.'s unclipped start), epoch selected by held-out PGD":
            train_fast_at_selected(quick),
        "`madry-cnn` fast-at, Wong et al.'s recipe (cyclic lr 5e-3), epoch selected":
            train_fast_at_selected(quick, "madry-cnn", FAST_AT_WONG,
                                   "madrycnn-mnist-fastat-wong-selected"),
        "`wong-cnn` undefended": train_run("wongcnn-mnist-plain",
                                           dict(dataset="mnist", model="wong-cnn"),
                                           dict(epochs=3, batch_size=128, lr=1e-3), quick),
        "`wong-cnn` fast-at, Wong et al.'s recipe (cyclic lr 5e-3), epoch selected":
            train_fast_at_selected(quick, "wong-cnn", FAST_AT_WONG,
                                   "wongcnn-mnist-fastat-selected"),
        "`wong-cnn` fast-at, the same over 20 epochs, epoch selected":
            train_fast_at_selected(quick, "wong-cnn", {**FAST_AT_WONG, "epochs": 20},
                                   "wongcnn-mnist-fastat20-selected"),
        # pgd-at (PGD-40 of 0.01 from a random start, ε = 0.3 from the first step) with this
        # cyclic lr 5e-3 collapsed to chance on wong-cnn (loss ln 10 from epoch 1, 2026-11-30):
        # from scratch it needs Madry et al.'s lr 1e-4 over many epochs, or an ε ramp
    }
    fast_dir = runs["`wong-cnn` fast-at, Wong et al.'s recipe (cyclic lr 5e-3), epoch selected"][1]
    runs[PGD_FT] = train_fast_at_selected(quick, "wong-cnn", PGD_FT_RECIPE,
                                          "wongcnn-mnist-fastat-pgdft-3", defense="pgd-at",
                                          init=fast_dir)
    runs[PGD_FT5] = train_fast_at_selected(quick, "wong-cnn", {**PGD_FT_RECIPE, "epochs": 5},
                                           "wongcnn-mnist-fastat-pgdft-5", defense="pgd-at",
                                           init=fast_dir)
    full, sub = _test("mnist", None), _test("mnist", n_eval)
    plain = load_model(runs["undefended"][1])
    rows = {}
    for name, (metrics, run_dir) in runs.items():
        cached = run_dir / "bench_eval.json"  # the evaluation of this run, kept beside it
        if cached.is_file():
            row = json.loads(cached.read_text())
            if (row.get("n_eval"), row.get("restarts")) == (len(sub), restarts):
                rows[name] = row
                if "wong-cnn" in name and "pgd_full" not in row and not quick:
                    _pgd_full(row, load_model(run_dir), full, restarts)
                    cached.write_text(json.dumps(row, indent=1, default=float))
                continue
        model = load_model(run_dir)
        t0 = time.perf_counter()
        fgsm = robust_accuracy(model, sub.x, sub.y, attacks.create("fgsm", eps=0.3))
        pgd = robust_accuracy(model, sub.x, sub.y, _wong_pgd(restarts))
        eval_s = time.perf_counter() - t0
        checks = soundness_checks(model, sub.x, sub.y, threat=ThreatModel("linf", 0.3),
                                  surrogate=None if "undefended" in name else plain,
                                  n=n_checks)
        rows[name] = {
            "clean_full": clean_accuracy(model, full.x, full.y), "clean_sub": pgd.clean_accuracy,
            "fgsm": fgsm.robust_accuracy, "pgd": pgd.robust_accuracy,
            "pgd_summary": pgd.summary(), "train_seconds": _train_seconds(metrics),
            "epochs": len(metrics["history"]), "selected_epoch": metrics.get("selected_epoch"),
            "history": [{k: v for k, v in h.items() if k in ("epoch", "adv_acc", "test_acc",
                                                              "holdout_pgd20_acc")}
                        for h in metrics["history"]],
            "eval_seconds": eval_s, "reliable": reliable(checks),
            "failed_checks": [c.name for c in checks if not c.passed],
            "run": str(run_dir.relative_to(ROOT)), "n_eval": len(sub), "restarts": restarts}
        if "wong-cnn" in name and not quick:  # small enough for the whole test set
            _pgd_full(rows[name], model, full, restarts)
        cached.write_text(json.dumps(rows[name], indent=1, default=float))
        log.info("mnist %s: %s", name, rows[name])
    # the whole protocol of `advlab eval robust` on the whole test set for the most robust run
    for label in (PGD_FT, PGD_FT5):
        _protocol(rows[label], runs[label][1], runs["`wong-cnn` undefended"][1], full, quick,
                  label)
    return {"n_eval": len(sub), "restarts": restarts, "n_checks": n_checks, "rows": rows}


def _protocol(row: dict[str, Any], run_dir: Path, plain_dir: Path, full, quick: bool,
              label: str) -> None:
    """The whole protocol of `advlab eval robust` on the whole test set, cached in the row."""
    from advlab.attacks import ThreatModel
    from advlab.eval.protocol import standard_evaluation
    from advlab.weights import load_model

    if not quick and "protocol" not in row:
        res = standard_evaluation(load_model(run_dir), full.x, full.y,
                                  threat=ThreatModel("linf", 0.3),
                                  surrogate=load_model(plain_dir))
        d = res.to_dict()
        row["protocol"] = {
            "n": d["n"], "clean": d["clean_accuracy"], "worst_case": d["robust_accuracy"],
            "reliable": d["reliable"], "seconds": d["seconds"],
            "attacks": {k: v["robust_accuracy"] for k, v in d["attacks"].items()},
            "minimal_at_eps": (d["minimal"] or {}).get("accuracy_at_eps"),
            "transfer": d["transfer_accuracy"],
            "failed_checks": [c["name"] for c in d["checks"] if not c["passed"]]}
        (run_dir / "bench_eval.json").write_text(json.dumps(row, indent=1, default=float))
        log.info("mnist protocol of %s: %s", label, row["protocol"])


def md_mnist(r: dict[str, Any]) -> str:
    lines = ["### MNIST, `madry-cnn` and `wong-cnn`, ℓ∞ ε = 0.3: fast adversarial training "
             "(Wong et al. 2020)",
             "",
             f"Clean accuracy on the full test set; FGSM and PGD-50 (step 0.01, random start, "
             f"{r['restarts']} restarts, per-sample best) on a seeded subset of {r['n_eval']} "
             f"test points; soundness checks of `advlab.eval.checks` on "
             f"{r.get('n_checks', 200)} of them (the undefended model is the transfer "
             "surrogate of the defended ones). `fast-at`: FGSM from a uniform random start, "
             "step 1.25·ε = 0.375, Adam with a one-cycle schedule (max lr 2e-3), batch 100, "
             "as Wong et al.'s code: the gradient taken at the unclipped start (10 epochs, 500 "
             "training images held out, the epoch with the best held-out PGD-20 accuracy kept). "
             "`wong-cnn` is Wong et al.'s own MNIST network, trained with their recipe "
             "(Adam, lr linearly 0 → 5e-3 at 2/5 of 10 epochs → 0, `--schedule cyclic`). "
             "An earlier run (2026-11-22) that clipped the start to [0, 1] before the gradient "
             "overfit catastrophically: 6 epochs, clean 0.9887, FGSM 0.9760, PGD-50 × 10 "
             "0.0000 — the case FGSM accuracy alone would have hidden. "
             "The last two rows fine-tune the `wong-cnn` fast-at model with `pgd-at` (Madry "
             "et al.'s adversary: PGD-40 of 0.01 from a random start) for 3 and 5 epochs "
             "(Adam, cosine lr from 5e-4; held-out selection as above); their training time "
             "includes the fast-at run's. The `wong-cnn` rows are also attacked on the whole "
             "test set (column `10k`). "
             "Target: ≥ 98% clean and ≥ 88% under PGD-50 × 10 (Wong et al.: "
             "98.5% / 88.8%), judged on the whole test set where measured.", "",
             f"| model | epochs | train time (s) | clean (10k) | FGSM ({r['n_eval']}) | "
             f"PGD-50 × restarts ({r['n_eval']}) | PGD-50 × restarts (10k) | checks | run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in r["rows"].items():
        checks = "pass" if row["reliable"] else "FAILED: " + ", ".join(row["failed_checks"])
        epochs = str(row["epochs"])
        if row.get("selected_epoch"):
            epochs += f" (kept {row['selected_epoch']})"
        lines.append(f"| {name} | {epochs} | {row['train_seconds']:.0f} | "
                     f"{row['clean_full']:.4f} | {row['fgsm']:.4f} | {row['pgd']:.4f} | "
                     f"**{_fmt(row.get('pgd_full'))}** | {checks} | `{row['run']}` |")

    def robust(row: dict[str, Any]) -> float:  # the whole test set where measured
        return row.get("pgd_full", row["pgd"])

    best = max((row for name, row in r["rows"].items() if "undefended" not in name),
               key=robust)  # fast-at or pgd-at: the target is either
    met = best["clean_full"] >= 0.98 and robust(best) >= 0.88
    summary = best.get("pgd_full_summary", best["pgd_summary"])
    lines += ["", f"Target met on Wong et al.'s evaluation (PGD-50 × {r['restarts']} on the "
              f"cross-entropy, step 0.01): **{'yes' if met else 'no'}** (`{best['run']}`: clean "
              f"{best['clean_full']:.4f}, PGD-50 × {r['restarts']} {robust(best):.4f}, "
              f"training {best['train_seconds']:.0f} s). PGD result line: `{summary}`."]
    for name, row in r["rows"].items():
        p = row.get("protocol")
        if p:
            attacks = ", ".join(f"{k} {v:.4f}" for k, v in p["attacks"].items())
            lines.append(
                f"The full `advlab eval robust` protocol on the whole test set ({p['n']} points) "
                f"for {name}: clean {p['clean']:.4f}; {attacks}; DeepFool at ε "
                f"{_fmt(p['minimal_at_eps'])}; transfer from the undefended `wong-cnn` "
                f"{_fmt(p['transfer'])}; **per-point worst case {p['worst_case']:.4f}**; checks "
                + ("pass" if p["reliable"] else "FAILED: " + ", ".join(p["failed_checks"]))
                + f" ({p['seconds']:.0f} s). The protocol's PGD (step 2.5·ε/50 = 0.015, then "
                f"the CW margin loss on the points left) is stronger than Wong et al.'s: under "
                f"it the 88% target is {'met' if p['worst_case'] >= 0.88 else 'missed'}.")
    for name, row in r["rows"].items():
        hist = [h for h in row.get("history", []) if "holdout_pgd20_acc" in h]
        if hist:
            lines.append(f"Per epoch of {name} (accuracy on the training adversaries / "
                         "held-out PGD-20 accuracy): " + ", ".join(
                             f"{h['epoch']}: {h['adv_acc']:.3f} / {h['holdout_pgd20_acc']:.3f}"
                             for h in hist) + ".")
    return "\n".join(lines)


# --- part 2: the Deep Defense table on Fashion-MNIST ----------------------------------------

FINETUNE = dict(epochs=5, batch_size=100, optimizer="sgd", lr=5e-4, momentum=0.9,
                weight_decay=5e-4, schedule="step", step_size=4, gamma=0.5)


# (row label, run name, defense, parameters, the report's ρ₂ for the row)
FASHION_ROWS = [
    # the trained model's own DeepFool examples, computed once and trained on for 5 epochs
    ("DeepFool fine-tuning (set computed once)", "mlp100-fmnist-deepfool-finetune-once",
     "deepfool-finetune", {"refresh": "once"}, 4.36e-2),
    ("DeepFool fine-tuning (report's DeepFool, set computed once)",
     "mlp100-fmnist-deepfool-finetune-report-once", "deepfool-finetune",
     {"refresh": "once", "deepfool": "report", "steps": 5}, 4.36e-2),
    ("DeepFool fine-tuning (set refreshed per epoch)", "mlp100-fmnist-deepfool-finetune-epoch",
     "deepfool-finetune", {"refresh": "epoch"}, 4.36e-2),
    ("DeepFool fine-tuning (adversarial only)", "mlp100-fmnist-deepfool-finetune",
     "deepfool-finetune", {}, 4.36e-2),
    ("DeepFool fine-tuning (50% clean)", "mlp100-fmnist-deepfool-finetune-mix",
     "deepfool-finetune", {"clean_weight": 0.5}, 4.36e-2),
    ("DeepFool fine-tuning (report's DeepFool, set refreshed per epoch)",
     "mlp100-fmnist-deepfool-finetune-report-epoch", "deepfool-finetune",
     {"refresh": "epoch", "deepfool": "report", "steps": 5}, 4.36e-2),
    ("Deep Defense", "mlp100-fmnist-deep-defense", "deep-defense", {}, 5.54e-2),
    ("Deep Defense, 15 epochs", "mlp100-fmnist-deep-defense-15", "deep-defense", {}, 5.54e-2),
    # the same budgets for both: DeepFool fine-tuning over 15 epochs too, and Deep Defense with
    # stronger regularizers (λ = 25 ... 1000) over 5 epochs
    ("DeepFool fine-tuning (set refreshed per epoch), 15 epochs",
     "mlp100-fmnist-deepfool-finetune-epoch-15", "deepfool-finetune", {"refresh": "epoch"},
     4.36e-2),
    ("Deep Defense, λ = 25", "mlp100-fmnist-deep-defense-l25", "deep-defense", {"lam": 25.0},
     5.54e-2),
    ("Deep Defense, λ = 35", "mlp100-fmnist-deep-defense-l35", "deep-defense", {"lam": 35.0},
     5.54e-2),
    ("Deep Defense, λ = 50", "mlp100-fmnist-deep-defense-l50", "deep-defense", {"lam": 50.0},
     5.54e-2),
    ("Deep Defense, λ = 200", "mlp100-fmnist-deep-defense-l200", "deep-defense",
     {"lam": 200.0}, 5.54e-2),
    ("Deep Defense, λ = 1000", "mlp100-fmnist-deep-defense-l1000", "deep-defense",
     {"lam": 1000.0}, 5.54e-2),
    ("Deep Defense, λ = 200, 15 epochs", "mlp100-fmnist-deep-defense-l200-15", "deep-defense",
     {"lam": 200.0}, 5.54e-2),
    ("Deep Defense, λ = 1000, 15 epochs", "mlp100-fmnist-deep-defense-l1000-15",
     "deep-defense", {"lam": 1000.0}, 5.54e-2),
]
# the DeepFool fine-tuning row of the report's three-row table
REPORT_DEEPFOOL_ROW = "DeepFool fine-tuning (set computed once)"
# per-row overrides of the fine-tuning recipe (FINETUNE)
FASHION_TRAIN = {"Deep Defense, 15 epochs": {"epochs": 15, "step_size": 12},
                 "DeepFool fine-tuning (set refreshed per epoch), 15 epochs":
                     {"epochs": 15, "step_size": 12},
                 "Deep Defense, λ = 200, 15 epochs": {"epochs": 15, "step_size": 12},
                 "Deep Defense, λ = 1000, 15 epochs": {"epochs": 15, "step_size": 12}}


def _min_l2_ratios(model, x):
    """‖Δ‖₂/‖x‖₂ of the smallest adversary inside the pixel box found by CW-ℓ2 (6 searches of
    c × 200 Adam steps) or DeepFool (50 steps, clipped), away from the model's prediction as
    the report's ρ₂; NaN where neither fools the model. The minimal perturbation the report's
    5-step unclipped DeepFool estimates, measured with stronger attacks and valid images."""
    import torch

    from advlab import attacks
    from advlab.eval.robust import predict

    pred = predict(model, x).argmax(1)
    best = torch.full((x.shape[0],), float("inf"))
    for attack in (attacks.create("cw", c=1.0, steps=200, lr=0.01, binary_search_steps=6),
                   attacks.create("deepfool", steps=50, overshoot=0.02)):
        res = attack(model, x, pred)
        l2 = (res.adv - x).flatten(1).norm(dim=1)
        best = torch.where(res.success, torch.minimum(best, l2), best)
    ratio = best / x.flatten(1).norm(dim=1).clamp_min(1e-12)
    return torch.where(best.isfinite(), ratio, torch.nan)


def part_fashion(quick: bool) -> dict[str, Any]:
    from advlab import attacks
    from advlab.defenses import deepfool_ratios
    from advlab.eval import (
        clean_accuracy,
        eps_ref,
        per_class_roc,
        rho2,
        robust_accuracy,
        softmax_scores,
    )
    from advlab.weights import load_model

    n_eval = 300 if quick else 10_000
    vanilla_m, vanilla_dir = train_run(
        "mlp100-fmnist-vanilla", dict(dataset="fashion-mnist", model="mlp-100"),
        dict(epochs=10, batch_size=64, lr=1e-3), quick, quick_epochs=2)
    runs = {"vanilla": (vanilla_m, vanilla_dir)}
    report = {"vanilla": 3.92e-2}
    for label, name, defense, params, rho_report in FASHION_ROWS:
        if quick and params.get("lam", 0) > 50:
            # the 2-epoch quick vanilla model misclassifies many points, whose exp(d·ρ) terms
            # at λ ≥ 200 blow the weights up (the loop stops with TrainingDiverged)
            continue
        runs[label] = train_run(
            name, dict(dataset="fashion-mnist", model="mlp-100", init=str(vanilla_dir)),
            {**FINETUNE, **FASHION_TRAIN.get(label, {})}, quick, defense=defense,
            defense_params=params)
        report[label] = rho_report
    test = _test("fashion-mnist", n_eval)
    models_ = {k: load_model(d) for k, (_, d) in runs.items()}
    ref = eps_ref(models_["Deep Defense"], test.x, test.y)
    rows = {}
    for label, model in models_.items():
        ratios = deepfool_ratios(model, test.x, steps=5, overshoot=0.02)
        boxed = _min_l2_ratios(model, test.x)
        r2c = rho2(model, test.x, test.y, over="correct", steps=5, overshoot=0.02)
        accs = {f: robust_accuracy(model, test.x, test.y,
                                   attacks.create("fgsm", eps=f * ref.eps)).robust_accuracy
                for f in (0.2, 0.5, 1.0)}
        roc = per_class_roc(softmax_scores(model, test.x), test.y, test.classes)
        rows[label] = {"run": str(runs[label][1].relative_to(ROOT)),
                       "clean": clean_accuracy(model, test.x, test.y),
                       "rho2": ratios.mean().item(), "rho2_report": report[label],
                       "rho2_box_mean": boxed.nanmean().item(),
                       "rho2_box_median": boxed.nanmedian().item(),
                       "rho2_box_failed": int(boxed.isnan().sum()),
                       "rho2_eval_correct": r2c.value, "rho2_eval_used": r2c.n_used,
                       "rho2_eval_failed": r2c.n_failed,
                       "acc_eps_ref": {str(k): v for k, v in accs.items()},
                       "auc": roc.to_dict(), "train_seconds": _train_seconds(runs[label][0]),
                       "epochs": len(runs[label][0]["history"])}
        log.info("fashion %s: %s", label, rows[label])
    return {"n_eval": len(test), "eps_ref": ref.to_dict(), "rows": rows}


def _box(row: dict[str, Any]) -> str:
    if "rho2_box_mean" not in row:
        return "–"
    failed = f", {row['rho2_box_failed']} not fooled" if row["rho2_box_failed"] else ""
    return f"{row['rho2_box_mean']:.3e} / {row['rho2_box_median']:.3e}{failed}"


def md_fashion(r: dict[str, Any]) -> str:
    lines = ["### Fashion-MNIST, `mlp-100`: the Deep Defense report's table", "",
             f"{r['n_eval']} test points. ρ₂ = mean ‖Δ‖₂/‖x‖₂ over all points of the report's "
             "DeepFool (reference-code semantics: away from the prediction, ≤ 5 steps, "
             "overshoot 0.02, not clipped to the pixel box; `defenses.deepfool_ratios`). In "
             "brackets `advlab.eval.rho2` (advlab's DeepFool attack, which clips every iterate "
             "to [0, 1], 5 steps, mean over the correctly classified points it fooled) with "
             "the number of points it fooled / failed on: the clipped 5-step attack stalls on "
             "most Fashion-MNIST points (black background pixels cannot go below 0), so it is "
             "not the report's quantity. ε_ref = smallest FGSM ε with accuracy ≤ 50% on the "
             f"Deep Defense model: {r['eps_ref']['eps']:.4f}. Accuracy under FGSM at "
             "0.2 / 0.5 / 1.0 ε_ref. AUC: one-vs-rest ROC of the clean softmax scores, macro "
             "mean (min–max over classes). Vanilla: 10 epochs of Adam 1e-3, batch 64. "
             "Fine-tuning from it: SGD (momentum 0.9, weight decay 5e-4), lr 5e-4 halved after "
             "epoch 4, 5 epochs, batch 100 (the reference code's recipe). DeepFool fine-tuning "
             "six ways: on the vanilla model's own DeepFool examples, computed once before "
             "fine-tuning (`refresh=\"once\"`, with advlab's DeepFool and with the report's); "
             "as Moosavi-Dezfooli et al. §4.3, on the training set perturbed by "
             "DeepFool once per epoch (`refresh=\"epoch\"`); on DeepFool examples of the "
             "current weights for every batch (online, stronger); online mixed 50/50 with "
             "the clean loss; and per epoch with the report's own DeepFool (unclipped, 5 steps: "
             "the one Deep Defense differentiates through and ρ₂ measures with). "
             "ρ₂ ÷ vanilla: the row's ρ₂ over the vanilla row's, ours (the report's). The 15-epoch "
             "rows run the same recipe over 15 epochs (lr halved after epoch 12); `λ = 25` "
             "to `λ = 1000`: Deep Defense with a stronger "
             "regularizer than the report's default λ = 15 (c = 25, d = 5 kept). "
             "Minimal ℓ2 in the box: per point the smallest adversary found by CW-ℓ2 "
             "(6 searches of c × 200 Adam steps) or DeepFool (50 steps, clipped), away from "
             "the prediction, as ‖Δ‖₂/‖x‖₂, mean / median: what the report's ρ₂ estimates, "
             "measured with stronger attacks on valid images (a check that the ordering does "
             "not come from DeepFool's own blind spots on a model trained on DeepFool "
             "examples).", "",
             "| model | clean | ρ₂ | report ρ₂ | ρ₂ ÷ vanilla (report's) | ρ₂ eval (fooled/failed) "
             "| minimal ℓ2 in the box (mean / median) | FGSM 0.2 ε_ref | 0.5 ε_ref | 1.0 ε_ref | "
             "AUC macro (min–max) | train time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = r["rows"]["vanilla"]
    for label, row in r["rows"].items():
        aucs = [a for a in row["auc"]["auc"].values() if a is not None]
        acc = row["acc_eps_ref"]
        lines.append(f"| {label} | {row['clean']:.4f} | **{row['rho2']:.3e}** | "
                     f"{row['rho2_report']:.2e} | {row['rho2'] / base['rho2']:.2f} "
                     f"({row['rho2_report'] / base['rho2_report']:.2f}) | "
                     f"{_fmt(row['rho2_eval_correct'], '.3e')} "
                     f"({row['rho2_eval_used']}/{row['rho2_eval_failed']}) | "
                     f"{_box(row)} | {acc['0.2']:.4f} | {acc['0.5']:.4f} | {acc['1.0']:.4f} | "
                     f"{row['auc']['macro_auc']:.4f} ({min(aucs):.4f}–{max(aucs):.4f}) | "
                     f"{row['train_seconds']:.0f} |")
    rows = r["rows"]
    vanilla = rows["vanilla"]["rho2"]
    three = ("vanilla", REPORT_DEEPFOOL_ROW, "Deep Defense")
    if all(k in rows for k in three):
        v, f, d = (rows[k] for k in three)
        ok = v["rho2"] < f["rho2"] < d["rho2"]
        box = all(v[f"rho2_box_{s}"] < f[f"rho2_box_{s}"] < d[f"rho2_box_{s}"]
                  for s in ("mean", "median")) if "rho2_box_mean" in v else None
        lines += ["", f"**The report's three rows with advlab's defaults** (vanilla; "
                  f"{REPORT_DEEPFOOL_ROW}: fine-tuning on the trained model's own DeepFool "
                  "examples, the reading of the report's baseline whose gain over vanilla is "
                  f"closest to the report's ×{4.36e-2 / 3.92e-2:.2f}; Deep Defense "
                  f"with c = 25, d = 5, λ = 15): ρ₂ {v['rho2']:.2e} < {f['rho2']:.2e} < "
                  f"{d['rho2']:.2e} (report 3.92e-02 < 4.36e-02 < 5.54e-02): same ordering "
                  f"**{'yes' if ok else 'no'}**, Deep Defense ≥ 5.5e-2 "
                  f"**{'yes' if d['rho2'] >= 5.5e-2 else 'no'}**"
                  + ("" if box is None else f"; the same ordering by the minimal ℓ2 in the box "
                     f"(mean and median) **{'yes' if box else 'no'}**") + ". The stronger "
                  "DeepFool fine-tunings below (examples refreshed per epoch or per batch) "
                  "overtake Deep Defense at λ = 15; the comparisons that follow say at which λ "
                  "Deep Defense passes each of them."]
    lines += ["", "Ordering vanilla < DeepFool fine-tuning < Deep Defense (the report's), each "
              "DeepFool row against the Deep Defense rows with the same number of epochs "
              "(ρ₂, clean accuracy):", ""]
    for label, row in rows.items():
        if not label.startswith("DeepFool"):
            continue
        epochs = row.get("epochs")
        dds = [k for k, v in rows.items() if k.startswith("Deep Defense")
               and v.get("epochs") == epochs]
        verdicts = []
        for k in dds:
            ok = vanilla < row["rho2"] < rows[k]["rho2"]
            verdicts.append(f"{k} {rows[k]['rho2']:.2e} / {rows[k]['clean']:.4f}: "
                            f"**{'yes' if ok else 'no'}**")
        lines.append(f"- {label} ({epochs} epochs; {row['rho2']:.2e} / {row['clean']:.4f}) vs "
                     + ("; ".join(verdicts) if verdicts else "no Deep Defense row of that "
                        "budget") + ".")
    dd = min(v["rho2"] for k, v in rows.items() if k.startswith("Deep Defense"))
    lines.append(f"- Deep Defense ρ₂ ≥ 5.5e-2: **{'yes' if dd >= 5.5e-2 else 'no'}** "
                 f"(every Deep Defense row: "
                 + ", ".join(f"{v['rho2']:.2e}" for k, v in rows.items()
                             if k.startswith("Deep Defense")) + ").")
    if all("rho2_box_mean" in v for v in rows.values()):
        lines.append("- The same ordering by the minimal ℓ2 in the box (mean / median), each "
                     "Deep Defense row against the DeepFool rows with its number of epochs:")
        for label, row in rows.items():
            if not label.startswith("Deep Defense"):
                continue
            dfs = [k for k, v in rows.items() if k.startswith("DeepFool")
                   and v.get("epochs") == row.get("epochs")]
            verdicts = []
            for k in dfs:
                by = ["yes" if rows["vanilla"][f"rho2_box_{s}"] < rows[k][f"rho2_box_{s}"]
                      < row[f"rho2_box_{s}"] else "no" for s in ("mean", "median")]
                verdicts.append(f"{k} {rows[k]['rho2_box_mean']:.2e} / "
                                f"{rows[k]['rho2_box_median']:.2e}: **{by[0]} / {by[1]}**")
            lines.append(f"  - {label} ({row['rho2_box_mean']:.2e} / "
                         f"{row['rho2_box_median']:.2e}) vs " + "; ".join(verdicts) + ".")
    return "\n".join(lines)


# --- part 3: Lipschitz vs plain on Fashion-MNIST --------------------------------------------

LIPSCHITZ = dict(bound=1.0, margin_eps=0.5, scale=4.0)
CERT_EPS = (0.1, 0.2, 0.3, 0.5)


def part_lipschitz(quick: bool) -> dict[str, Any]:
    from advlab import attacks
    from advlab.defenses import certified_accuracy, lipschitz_bound
    from advlab.eval import clean_accuracy, robust_accuracy
    from advlab.weights import load_model

    n_eval = 100 if quick else 1000
    _, vanilla_dir = train_run(
        "mlp100-fmnist-vanilla", dict(dataset="fashion-mnist", model="mlp-100"),
        dict(epochs=10, batch_size=64, lr=1e-3), quick, quick_epochs=2)
    lip_m, lip_dir = train_run(
        "mlp100-fmnist-lipschitz", dict(dataset="fashion-mnist", model="mlp-100"),
        dict(epochs=10, batch_size=64, lr=1e-3), quick, defense="lipschitz",
        defense_params=LIPSCHITZ, quick_epochs=2)
    full, sub = _test("fashion-mnist", None), _test("fashion-mnist", n_eval)
    cw = attacks.create("cw", steps=100, binary_search_steps=6, c=1.0)
    rows = {}
    for label, d in (("plain", vanilla_dir), ("lipschitz", lip_dir)):
        model = load_model(d)
        lip = lipschitz_bound(model)
        ev = robust_accuracy(model, sub.x, sub.y, cw)
        rows[label] = {
            "run": str(d.relative_to(ROOT)), "lipschitz_bound": lip,
            "clean": clean_accuracy(model, full.x, full.y),
            "cw_success": ev.success_rate, "cw_l2_median": ev.l2_median,
            "cw_l2_mean": ev.l2_mean, "cw_seconds": ev.seconds,
            "certified": {str(e): certified_accuracy(model, full.x, full.y, e, lipschitz=lip)
                          for e in CERT_EPS}}
        log.info("lipschitz %s: %s", label, rows[label])
    return {"n_eval": len(sub), "params": LIPSCHITZ, "rows": rows,
            "lipschitz_train_seconds": _train_seconds(lip_m)}


def md_lipschitz(r: dict[str, Any]) -> str:
    p = r["params"]
    lines = ["### Fashion-MNIST, `mlp-100`: Lipschitz-constrained vs plain", "",
             f"`lipschitz` defense: every layer's spectral norm bounded by {p['bound']}, "
             f"Lipschitz-margin cross-entropy (margin_eps {p['margin_eps']}, logit scale "
             f"{p['scale']}), 10 epochs of Adam 1e-3. CW-ℓ2 (100 steps, 6 binary-search steps "
             f"over c from 1) on {r['n_eval']} test points: the ℓ2 perturbation needed to "
             "break the correctly classified points. Certified accuracy on the full test set "
             "from the logit margin (margin > √2·L·ε), L = `lipschitz_bound(model)`.", "",
             "| model | clean | Lipschitz bound L | CW success | CW median ℓ2 | CW mean ℓ2 | "
             + " | ".join(f"certified ε={e}" for e in CERT_EPS) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(CERT_EPS)]
    for label, row in r["rows"].items():
        lines.append(f"| {label} | {row['clean']:.4f} | {row['lipschitz_bound']:.3g} | "
                     f"{_fmt(row['cw_success'])} | **{_fmt(row['cw_l2_median'])}** | "
                     f"{_fmt(row['cw_l2_mean'])} | "
                     + " | ".join(f"{row['certified'][str(e)]:.4f}" for e in CERT_EPS) + " |")
    a, b = r["rows"]["plain"]["cw_l2_median"], r["rows"]["lipschitz"]["cw_l2_median"]
    lines += ["", f"CW perturbation needed, Lipschitz > plain (median): "
              f"**{'yes' if b is not None and a is not None and b > a else 'no'}**."]
    return "\n".join(lines)


# --- part 4: the SVD sweep ------------------------------------------------------------------

SVD_FRACTIONS = [round(0.1 * i, 2) for i in range(10)]


SVD_RUNS = {"fashion-mnist": "mlp100-fmnist-vanilla", "mnist": "mlp100-mnist-vanilla"}


def part_svd(quick: bool) -> dict[str, Any]:
    from advlab import attacks
    from advlab.defenses.svd import sweep
    from advlab.weights import load_model

    n_eval = 200 if quick else 2000
    out: dict[str, Any] = {"n_eval": n_eval, "datasets": {}}
    for ds, run in SVD_RUNS.items():
        _, run_dir = train_run(run, dict(dataset=ds, model="mlp-100"),
                               dict(epochs=10, batch_size=64, lr=1e-3), quick, quick_epochs=2)
        model = load_model(run_dir)
        test = _test(ds, n_eval)
        rows = {}
        for mode in ("zero", "scale"):
            for craft_on in ("truncated", "original"):
                key = mode if craft_on == "truncated" else f"{mode}-original"
                rows[key] = [r.__dict__ for r in sweep(
                    model, test.x, test.y, SVD_FRACTIONS, mode=mode, craft_on=craft_on,
                    attack=attacks.create("fgsm", eps=0.1))]
        out["datasets"][ds] = {"run": str(run_dir.relative_to(ROOT)), "rows": rows}
    return out


def md_svd(r: dict[str, Any]) -> str:
    lines = ["### SVD defense, `mlp-100` on Fashion-MNIST and MNIST (vanilla runs)", "",
             f"Bottom fraction of every weight matrix's singular values zeroed, or divided by "
             f"10; test accuracy and white-box FGSM (ε = 0.1) accuracy of each truncated model "
             f"on {r['n_eval']} test points (`advlab defend svd RUN --fraction 0:0.9:0.1 "
             "--attack fgsm --eps 0.1`); `transfer`: the FGSM examples crafted once on the "
             "original model and passed to each truncated one (`--craft-on original`), the "
             "setting where the truncation acts as a filter of the perturbation. Vanilla runs: "
             "10 epochs of Adam 1e-3, batch 64."]
    for ds, d in r.get("datasets", {}).items():
        rows = d["rows"]
        lines += ["", f"**{ds}** (`{d['run']}`)", "",
                  "| fraction | values changed | zero: test | zero: FGSM | zero: transfer | "
                  "÷10: test | ÷10: FGSM | ÷10: transfer |", "|---|---|---|---|---|---|---|---|"]
        for z, zo, sc, so in zip(rows["zero"], rows["zero-original"], rows["scale"],
                                 rows["scale-original"], strict=True):
            lines.append(f"| {z['fraction']:.1f} | {z['removed']} | {z['clean_accuracy']:.4f} | "
                         f"{z['adversarial_accuracy']:.4f} | {zo['adversarial_accuracy']:.4f} | "
                         f"{sc['clean_accuracy']:.4f} | {sc['adversarial_accuracy']:.4f} | "
                         f"{so['adversarial_accuracy']:.4f} |")
    return "\n".join(lines)


# --- part 5: classifiers on latent codes ("Making Neural Nets Robust Again") ---------------

HEADS = ("linear-1l", "linear-2l", "lrl")
N_PROJ_ATTACK = 180  # points attacked through the projection models


def _generative(kind: str, dataset: str, quick: bool):
    from advlab import data, generative
    from advlab.generative.train import default_config, fit_generative

    path = _out(quick) / f"{kind}-{dataset}"
    if (path / "model.safetensors").is_file():
        return generative.load_generative(path)
    train = data.load(dataset, "train")
    if quick:
        train = data.subset(train, 2000, seed=0)
    torch.manual_seed(0)
    model = generative.create(kind, dataset=dataset)  # MLP 784-150-32, Bernoulli decoder
    cfg = default_config(kind, "image", epochs=3 if quick else 10, device="cpu")
    fit_generative(model, train, cfg, progress=False)
    generative.save_generative(path, model.eval(), {"dataset": dataset})
    return model.eval()


def _image_head(head: str, dataset: str, quick: bool):
    from advlab import data, models
    from advlab.train import TrainConfig, fit
    from advlab.weights import load_model, save_model

    path = _out(quick) / f"{head}-{dataset}-pixels"
    if (path / "model.safetensors").is_file():
        return load_model(path)
    train = data.load(dataset, "train")
    if quick:
        train = data.subset(train, 2000, seed=0)
    torch.manual_seed(0)
    model = models.create(head, dataset=dataset)
    fit(model, train, TrainConfig(epochs=3 if quick else 10, device="cpu"), progress=False)
    save_model(path, model, {"dataset": dataset})
    return model.eval()


def _robustness(model, x, y, target) -> dict[str, Any]:
    """The report's robustness (``advlab.eval.perturbation_needed``): ‖x_adv − x‖₂/‖x‖₂ of the
    optim attack (95% confident targeted misclassification, λ = 0.1, 500 steps of 0.01),
    escalated to λ = 0.01 then 0 on the points a larger λ left short of the confidence."""
    from advlab.eval import perturbation_needed

    r = perturbation_needed(model, x, y, target)
    return {"robustness": r.mean_all, "reached": r.reached_fraction,
            "robustness_first": r.mean_first, "reached_first": r.reached_first_fraction,
            "adv": r.adv}


def _projection_codes(gm, kind: str, ds: str, x, steps: int, quick: bool, what: str):
    """Projection codes of ``x`` as the ``project`` latent classifiers compute them (batches
    of 500, seed 0), cached beside the generative model (``<what>_project_codes``)."""
    from safetensors.torch import load_file, save_file

    from advlab.defenses import LatentClassifier
    from advlab.defenses.latent import latent_codes

    path = _out(quick) / f"{kind}-{ds}" / f"{what}_project_codes_{steps}.safetensors"
    if path.is_file():
        codes = load_file(str(path))["codes"]
        if codes.shape == (len(x), gm.latent_dim):
            return codes
    t0 = time.perf_counter()
    codes = latent_codes(LatentClassifier(gm, torch.nn.Identity(), "project", steps=steps), x)
    log.info("latent %s %s: projected %d %s images in %.0f s", ds, kind, len(x), what,
             time.perf_counter() - t0)
    save_file({"codes": codes.contiguous()}, str(path))
    return codes


def _row_path(quick: bool, ds: str, name: str) -> Path:
    """The cached result of one latent-table row (``<kind>-<code>/<head>``), so the part can be
    measured dataset by dataset in parallel processes and resumed after an interruption."""
    return _out(quick) / "latent-rows" / ds / (name.replace("/", "--") + ".json")


def _seed(*parts: str) -> None:
    """Seed the head's initialization from the row's name: each row is reproducible alone."""
    torch.manual_seed(zlib.crc32("/".join(parts).encode()))


def part_latent(quick: bool, datasets: tuple[str, ...] | None = None) -> dict[str, Any]:
    from advlab import data
    from advlab.defenses import train_latent_classifier
    from advlab.train import TrainConfig

    datasets = datasets or (("mnist",) if quick else ("mnist", "fashion-mnist"))
    n_eval, n_attack, proj_steps = (200, 30, 50) if quick else (1000, 180, 500)
    n_proj_attack = 10 if quick else N_PROJ_ATTACK
    out: dict[str, Any] = {"n_eval": n_eval, "n_attack": n_attack, "proj_steps": proj_steps,
                           "n_proj_attack": n_proj_attack}
    config = TrainConfig(epochs=3 if quick else 10, device="cpu")
    n_cached = 0
    for ds in datasets:
        train = data.load(ds, "train")
        if quick:
            train = data.subset(train, 2000, seed=0)
        test = _test(ds, n_eval)
        xa, ya = test.x[:n_attack], test.y[:n_attack]
        target = (ya + 1) % 10
        rows: dict[str, Any] = {}
        image_adv = {}
        for head in HEADS:
            m = _image_head(head, ds, quick)
            rob = _robustness(m, xa, ya, target)
            image_adv[head] = rob.pop("adv")
            acc = (m(test.x).argmax(1) == test.y).float().mean().item()
            rows[f"image/{head}"] = {"clean": acc, **rob}
        for kind in ("ae", "vae"):
            names = [f"{kind}-{code}/{head}" for head in HEADS for code in ("encode", "project")]
            cached = {n: json.loads(_row_path(quick, ds, n).read_text())
                      for n in names if _row_path(quick, ds, n).is_file()}
            n_cached += len(cached)
            if len(cached) == len(names):
                rows.update((n, cached[n]) for n in names)
                continue
            gm = _generative(kind, ds, quick)
            train_codes = test_codes = None
            for head in HEADS:
                for code in ("encode", "project"):
                    name = f"{kind}-{code}/{head}"
                    if name in cached:
                        rows[name] = cached[name]
                        continue
                    if code == "project" and train_codes is None:
                        train_codes = _projection_codes(gm, kind, ds, train.x, proj_steps,
                                                        quick, "train")
                        test_codes = _projection_codes(gm, kind, ds, test.x, proj_steps,
                                                       quick, "test")
                    _seed(ds, kind, code, head)
                    # the projection heads learn on projection codes of the training set: the
                    # VAE's projection codes (no prior term) lie far from its posterior means
                    extra = ({"codes": train_codes, "steps": proj_steps}
                             if code == "project" else {})
                    model = train_latent_classifier(gm, train, head=head, code=code,
                                                    config=config, **extra)
                    with torch.no_grad():
                        logits = (model.head(test_codes) if code == "project"
                                  else model(test.x))
                        acc = (logits.argmax(1) == test.y).float().mean().item()
                        transfer = (model(image_adv[head]).argmax(1) == ya).float().mean().item()
                    # each BPDA forward of a projection model runs a full projection
                    k = n_proj_attack if code == "project" else n_attack
                    t0 = time.perf_counter()
                    rob = _robustness(model, xa[:k], ya[:k], target[:k])
                    rob.pop("adv")
                    rows[name] = {"clean": acc, **rob, "image_adv_acc": transfer,
                                  "n_robustness": k,
                                  "robustness_seconds": time.perf_counter() - t0}
                    path = _row_path(quick, ds, name)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps(rows[name], indent=1, default=float))
                    log.info("latent %s %s: %s", ds, name, rows[name])
        out[ds] = rows
    out["cached_rows"] = n_cached
    return out


def md_latent(r: dict[str, Any]) -> str:
    n_proj = r.get("n_proj_attack", N_PROJ_ATTACK)
    lines = ["### Classifiers on latent codes (\"Making Neural Nets Robust Again\")", "",
             f"AE and VAE: MLP 784-150-32, Bernoulli decoder, 10 epochs. Heads `linear-1l`, "
             f"`linear-2l`, `lrl`, 10 epochs of Adam, on pixels (image) or on codes: `encode` = "
             f"the encoder output (posterior mean for the VAE), `project` = the projection code "
             f"argmin_z ‖decode(z) − x‖₂ ({r['proj_steps']} Adam steps of 0.05, 1 random "
             f"start), the head trained on the projection codes of the whole training set "
             "(rows measured before 2026-12-01 drew each batch's random starts from one "
             "seeded stream; advlab now keys each input's start by its pixels, "
             "`start_codes`, so a re-run starts these 500-step projections elsewhere; the "
             "`project` rows were not re-measured since). "
             f"Clean accuracy on {r['n_eval']} test points. Robustness = mean ‖x_adv − x‖₂/‖x‖₂ "
             f"over the first {r['n_attack']} test points of the `optim` attack (targeted to "
             f"(y + 1) mod 10, stop at 95% confidence; `advlab.eval.perturbation_needed`): the "
             "report's λ = 0.1 first, then λ = 0.01 and λ = 0 on the points a larger λ left "
             "short of 95% (the ℓ2 penalty stalls the attack where the model's input gradients "
             "are small), so the mean is over all points; `reached` = share of points that "
             "reached 95% in the end (the others count with their last perturbation, so where "
             "`reached` < 1 the mean is a lower bound of the perturbation needed); "
             "`λ=0.1 only` = the mean over the points reached with λ = 0.1 alone, and their "
             "share. Image adv. acc.: accuracy on the `optim` "
             "adversarial examples of the image-space classifier with the same head "
             f"(transfer). Robustness of the projection models over the first {n_proj} "
             "attack points, the attack's gradient by BPDA (the encoder's), every forward a "
             "full projection. Each row's head is initialized from a seed derived from its "
             "name and its result cached in `bench/out/defenses/latent-rows/` (rows measured "
             "before 2026-11-30 16:00 UTC, with unseeded heads, are reused from that cache: "
             "the encode rows and the `lrl` projection rows).", ""]
    for ds in ("mnist", "fashion-mnist"):
        if ds not in r:
            continue
        lines += [f"**{ds}**", "", "| classifier | clean | robustness | reached | "
                  "λ=0.1 only (share) | image adv. acc. | attack s |",
                  "|---|---|---|---|---|---|---|"]
        for name, row in r[ds].items():
            first = (f"{_fmt(row.get('robustness_first'))} "
                     f"({_fmt(row.get('reached_first'), '.3f')})"
                     if "robustness_first" in row else "–")
            lines.append(f"| {name} | {row['clean']:.4f} | {_fmt(row.get('robustness'))} | "
                         f"{_fmt(row.get('reached'), '.3f')} | {first} | "
                         f"{_fmt(row.get('image_adv_acc'))} | "
                         f"{_fmt(row.get('robustness_seconds'), '.0f')} |")
        lines.append("")
    return "\n".join(lines)


# --- part 6: Defense-GAN, and the checks that catch its masked gradients ------------------

DGAN = {"n": 50, "steps": 200, "restarts": 10, "gan_epochs": 5, "eps": 0.3, "pgd_steps": 10}


def _dcgan_mnist(quick: bool):
    from advlab import data, generative
    from advlab.generative.train import default_config, fit_generative

    path = _out(quick) / "dcgan-mnist"
    if (path / "model.safetensors").is_file():
        return generative.load_generative(path)
    train = data.load("mnist", "train")
    if quick:
        train = data.subset(train, 2000, seed=0)
    torch.manual_seed(0)
    model = generative.create("dcgan", dataset="mnist")
    cfg = default_config("dcgan", "image", dataset="mnist", device="cpu", real_label=0.9,
                         ema=0.999, epochs=1 if quick else DGAN["gan_epochs"])
    fit_generative(model, train, cfg, progress=False)
    generative.save_generative(path, model.eval(), {"dataset": "mnist"})
    return model.eval()


def part_defense_gan(quick: bool) -> dict[str, Any]:
    """Defense-GAN (Samangouei et al. 2018) on MNIST: the classifier's own adversaries are
    filtered by the projection, white-box gradients through the projection vanish (the checks
    flag it), and BPDA (Athalye et al. 2018) breaks it."""
    from advlab import attacks
    from advlab.defenses import DefenseGAN
    from advlab.eval.checks import CheckResult, check_gradients, check_transfer
    from advlab.eval.robust import robust_accuracy
    from advlab.weights import load_model

    cfg = dict(DGAN, n=10, steps=20, restarts=2, pgd_steps=3) if quick else dict(DGAN)
    _, run_dir = train_run("lenet5-mnist", dict(dataset="mnist", model="lenet5"),
                           dict(epochs=5, batch_size=128, lr=1e-3), quick)
    clf = load_model(run_dir).eval()
    gan = _dcgan_mnist(quick)
    test = _test("mnist", cfg["n"])
    x, y = test.x, test.y
    bs = len(x)  # one batch: no batch-size measurement of a model this slow
    fgsm = attacks.create("fgsm", eps=cfg["eps"])
    pgd = attacks.create("pgd", eps=cfg["eps"], steps=cfg["pgd_steps"], restarts=1)
    out: dict[str, Any] = {**cfg, "classifier": str(run_dir.relative_to(ROOT))}
    with torch.no_grad():
        out["classifier_clean"] = (clf(x).argmax(1) == y).float().mean().item()
    out["classifier_fgsm"] = robust_accuracy(clf, x, y, fgsm, batch_size=bs).robust_accuracy
    out["classifier_pgd"] = robust_accuracy(clf, x, y, pgd, batch_size=bs).robust_accuracy
    for bpda in (False, True):
        t0 = time.perf_counter()
        model = DefenseGAN(gan, clf, steps=cfg["steps"], restarts=cfg["restarts"], bpda=bpda)
        row: dict[str, Any] = {}
        with torch.no_grad():
            proj = model.project(x)
            row["clean"] = (clf(proj.x_hat).argmax(1) == y).float().mean().item()
            row["reconstruction"] = ((proj.x_hat - x).flatten(1).norm(dim=1)
                                     / x.flatten(1).norm(dim=1)).mean().item()
        checks = [check_gradients(model, x, y, batch_size=bs)]
        # white-box FGSM / PGD on the defended model and the same attack crafted on the bare
        # classifier (the Defense-GAN paper's setting) in one call each
        for name, attack in (("fgsm", fgsm), ("pgd", pgd)):
            if name == "pgd" and not bpda:
                continue  # a zero gradient: PGD does not move beyond its random start
            c = check_transfer(model, x, y, surrogate=clf, attack=attack, batch_size=bs)
            checks.append(CheckResult(f"transfer/{name.upper()}", c.passed, c.message,
                                      c.values))
            row[f"{name}_white"] = c.values["white_box_accuracy"]
            row[f"{name}_transfer"] = c.values["transfer_accuracy"]
        row["checks"] = [c.to_dict() for c in checks]
        row["seconds"] = time.perf_counter() - t0
        out["bpda" if bpda else "plain"] = row
        log.info("defense-gan bpda=%s: %s", bpda, {k: v for k, v in row.items() if k != "checks"})
    return out


def md_defense_gan(r: dict[str, Any]) -> str:
    def cell(row: dict[str, Any], key: str) -> str:
        return _fmt(row.get(key))

    lines = ["### Defense-GAN on MNIST, and the checks that catch its gradients", "",
             f"Samangouei et al. 2018: classify G(z*), z* = argmin_z ‖G(z) − x‖₂ ({r['steps']} "
             f"Adam steps of 0.05 from {r['restarts']} random starts, the best kept; "
             "`advlab.defenses.DefenseGAN`). G: `dcgan` trained "
             f"{r['gan_epochs']} epochs (real label 0.9, EMA 0.999); classifier: `lenet5`, 5 "
             f"epochs (`{r['classifier']}`). {r['n']} test points, ℓ∞ ε = {r['eps']}: FGSM and "
             f"PGD-{r['pgd_steps']} (random start), white-box on the defended model or crafted "
             "on the bare classifier and passed through the projection (transfer, the Defense-GAN "
             "paper's setting). `plain`: autograd through the projection — z* is the result of "
             "an optimization, so no gradient reaches x; `BPDA`: the projection's gradient "
             "replaced by the identity (Athalye et al. 2018). Checks of `advlab.eval.checks`: "
             "`gradients` (input gradients finite and non-zero), `transfer` (white-box accuracy "
             "≤ transfer accuracy + 2%).", "",
             "| model | clean | ‖G(z*) − x‖/‖x‖ | FGSM white-box | FGSM transfer | "
             "PGD white-box | PGD transfer | checks | s |", "|---|---|---|---|---|---|---|---|---|",
             f"| `lenet5` alone | {r['classifier_clean']:.4f} | – | {r['classifier_fgsm']:.4f} "
             f"| – | {r['classifier_pgd']:.4f} | – | – | – |"]
    for key, label in (("plain", "Defense-GAN, plain gradients"), ("bpda", "Defense-GAN, BPDA")):
        row = r[key]
        checks = ", ".join(f"{c['name']} {'pass' if c['passed'] else '**FAIL**'}"
                           for c in row["checks"])
        lines.append(f"| {label} | {row['clean']:.4f} | {row['reconstruction']:.4f} | "
                     f"{cell(row, 'fgsm_white')} | {cell(row, 'fgsm_transfer')} | "
                     f"{cell(row, 'pgd_white')} | {cell(row, 'pgd_transfer')} | {checks} | "
                     f"{row['seconds']:.0f} |")
    failed = [c["message"] for c in r["plain"]["checks"] if not c["passed"]]
    lines += ["", "Plain-gradient result flagged unreliable: "
              + ("**yes** — " + "; ".join(failed) if failed else "**no**") + "."]
    bpda_failed = [c for c in r["bpda"]["checks"] if not c["passed"]]
    if bpda_failed:
        lines += ["", "BPDA result flagged too: " + "; ".join(
            f"{c['name']}: {c['message']}" for c in bpda_failed) + ". One FGSM step through "
            "the straight-through gradient is weaker here than the same step crafted on the "
            "bare classifier; PGD with BPDA passes the same check and is the number to quote "
            f"for the defended model ({r['bpda'].get('pgd_white', float('nan')):.4f} at this "
            "ε), not FGSM."
            if all(c["name"] == "transfer/FGSM" for c in bpda_failed) else
            "BPDA result flagged too: " + "; ".join(f"{c['name']}: {c['message']}"
                                                      for c in bpda_failed) + "."]
    return "\n".join(lines)


# --- figures (the report's Figures 4-7) ----------------------------------------------------

FIGURES = ROOT / "docs" / "figures"


def _bars(ax, groups: list[str], series: dict[str, list[float | None]], ylabel: str) -> None:
    import numpy as np

    width = 0.8 / max(1, len(series))
    pos = np.arange(len(groups))
    colors = {k: f"C{i}" for i, k in enumerate(("image", "ae-encode", "ae-project",
                                                "vae-encode", "vae-project"))}
    for i, (label, values) in enumerate(series.items()):
        ax.bar(pos + i * width, [v if v is not None else float("nan") for v in values], width,
               label=label, color=colors.get(label))
    ax.set_xticks(pos + width * (len(series) - 1) / 2, groups)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # room for the legend above the bars
    ax.legend(fontsize=7, ncol=3, loc="upper center")
    ax.grid(axis="y", alpha=0.3)


def fig_latent(r: dict[str, Any], quick: bool) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in ("mnist", "fashion-mnist"):
        if ds not in r:
            continue
        rows = r[ds]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        kinds = ["image", "ae-encode", "ae-project", "vae-encode", "vae-project"]
        _bars(axes[0], list(HEADS), {k: [rows.get(f"{k}/{h}", {}).get("clean") for h in HEADS]
                                     for k in kinds}, "clean accuracy")
        axes[0].set_title("accuracy of image and latent classifiers", fontsize=9)
        _bars(axes[1], list(HEADS), {k: [rows.get(f"{k}/{h}", {}).get("robustness")
                                         for h in HEADS]
                                     for k in kinds},
              "mean ‖x_adv − x‖₂ / ‖x‖₂")
        axes[1].set_title(f"robustness (targeted, 95% confident, {r['n_attack']} points)",
                          fontsize=9)
        _bars(axes[2], list(HEADS), {k: [rows.get(f"{k}/{h}", {}).get("image_adv_acc")
                                         for h in HEADS] for k in kinds[1:]},
              "accuracy on image-space adversaries")
        axes[2].set_title("image adversaries passed to latent classifiers", fontsize=9)
        fig.suptitle(f"{ds}: classifiers on latent codes", fontsize=10)
        fig.tight_layout()
        path = FIGURES / f"latent-{ds}{'-quick' if quick else ''}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def fig_svd(r: dict[str, Any], quick: bool) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds, d in r.get("datasets", {}).items():
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for mode, style in (("zero", "-"), ("scale", "--")):
            rows = d["rows"][mode]
            f = [row["fraction"] for row in rows]
            name = "zeroed" if mode == "zero" else "÷10"
            ax.plot(f, [row["clean_accuracy"] for row in rows], "o" + style,
                    label=f"test, {name}")
            ax.plot(f, [row["adversarial_accuracy"] for row in rows], "s" + style,
                    label=f"FGSM ε=0.1, {name}")
            ax.plot(f, [row["adversarial_accuracy"] for row in d["rows"][f"{mode}-original"]],
                    "^" + style, label=f"FGSM transfer, {name}")
        ax.set(xlabel="fraction of singular values changed", ylabel="accuracy", ylim=(0, 1),
               title=f"SVD defense, {ds} mlp-100")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = FIGURES / f"svd-{ds}{'-quick' if quick else ''}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


FIGURE_WRITERS = {"latent": fig_latent, "svd": fig_svd}


# --- assembly -------------------------------------------------------------------------------

RUNNERS = {"mnist": (part_mnist, md_mnist), "fashion": (part_fashion, md_fashion),
           "lipschitz": (part_lipschitz, md_lipschitz), "svd": (part_svd, md_svd),
           "latent": (part_latent, md_latent),
           "defense-gan": (part_defense_gan, md_defense_gan)}


def run_part(part: str, quick: bool) -> None:
    fn, _ = RUNNERS[part]
    t0 = time.perf_counter()
    result = fn(quick)
    result["seconds"] = time.perf_counter() - t0
    result["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if part in FIGURE_WRITERS:
        result["figures"] = [str(p.relative_to(ROOT)) for p in FIGURE_WRITERS[part](result, quick)]
    _out(quick).mkdir(parents=True, exist_ok=True)
    (_out(quick) / f"{part}.json").write_text(json.dumps(result, indent=1, default=float))


_MARK = "<!-- part: {} -->"


def _previous_sections(quick: bool) -> dict[str, str]:
    """The part sections of the fragment last written, by part name (each section starts with
    its ``_MARK``), so a part measured alone does not erase the others' results when their
    json is gone, and adding a part does not drop the sections kept so far."""
    path = FRAGMENTS / f"defenses{'-quick' if quick else ''}.md"
    if not path.is_file():
        return {}
    out, text = {}, path.read_text()
    for part in PARTS:
        mark = _MARK.format(part)
        if mark in text:
            section = text.split(mark, 1)[1]
            out[part] = section.split("<!-- part: ", 1)[0].strip()
    return out


def write_markdown(quick: bool) -> None:
    torch.set_num_threads(1)  # the parts are measured with one thread; the header says so
    sections, previous = [], _previous_sections(quick)
    for part in PARTS:
        p = _out(quick) / f"{part}.json"
        if p.is_file():
            r = json.loads(p.read_text())
            figs = "".join(f"\n\n![{part}]({Path(f).relative_to('docs')})"
                           for f in r.get("figures", []))
            how = (f"assembled in {r['seconds']:.0f} s, {r['cached_rows']} rows from the row "
                   "cache" if r.get("cached_rows") else f"measured in {r['seconds']:.0f} s")
            sections.append(RUNNERS[part][1](r) + figs + f"\n\n(part {how}"
                            + (f", {r['measured']})" if "measured" in r else ")"))
        elif part in previous:
            sections.append(previous[part])
        else:
            sections.append(f"### {part}\n\nnot measured yet (`python -m bench.defenses "
                            f"--part {part}`).")
    body = ("All runs trained by `advlab.train.fit` with the defense objectives of "
            "`advlab.defenses`, evaluated with `advlab.eval` (torch on one thread).\n\n"
            + "\n\n".join(f"{_MARK.format(part)}\n{section}"
                          for part, section in zip(PARTS, sections, strict=True)))
    suffix = "-quick" if quick else ""
    write_fragment("defenses" + suffix, "Defenses (issue 5)",
                   "python -m bench.run --only defenses" + (" --quick" if quick else ""), body)


def main(quick: bool = False, parts: tuple[str, ...] = PARTS) -> None:
    require_data()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    for part in parts:
        run_part(part, quick)
        write_markdown(quick)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--part", nargs="*", choices=PARTS, default=list(PARTS))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--latent-dataset", choices=("mnist", "fashion-mnist"),
                    help="only fill the latent part's row cache for this data set (one process "
                         "per data set in parallel; a later --part latent assembles the table)")
    args = ap.parse_args()
    if args.latent_dataset:
        require_data()
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        torch.set_num_threads(1)
        part_latent(args.quick, (args.latent_dataset,))
    else:
        main(quick=args.quick, parts=tuple(args.part))
