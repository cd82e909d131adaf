"""Issue 3 reproduction targets: published attack figures, side by side with advlab's.

    ADVLAB_DATA=../shared/data python -m bench.run --only reproductions

1. The DeepFool table (Moosavi-Dezfooli et al. 2016, Table 1): ρ_adv on MNIST for LeNet (2.0e-1)
   and FC500-150-10 (1.1e-1), ρ_adv = mean over the test set of ‖r(x)‖₂ / ‖x‖₂.
2. The vanilla row of the Deep Defense report's table on Fashion-MNIST `mlp-100` (clean 87.38%,
   ρ₂ 3.92e-2 with DeepFool of at most 5 steps and overshoot 0.02) and its FGSM
   accuracy-vs-ε curve (figure in docs/figures/).

Models come from the classifiers benchmark where it trained them (bench/out/), else are trained
here with the recipes below.
"""

from __future__ import annotations

import json
import time

import torch

from bench.classifiers import OUT, train_recipe
from bench.common import ROOT, require_data, write_fragment

FIGURES = ROOT / "docs" / "figures"

# (run name, dataset, model, training options, the source's ρ_adv, source)
DEEPFOOL_TABLE = [
    ("lenet5-mnist", "mnist", "lenet5", dict(epochs=10, batch_size=128, lr=1e-3), 2.0e-1,
     "LeNet"),
    ("fc500-mnist", "mnist", "fc500-150", dict(epochs=10, batch_size=128, lr=1e-3), 1.1e-1,
     "FC500-150-10"),
]
VANILLA = ("mlp100-fmnist", "fashion-mnist", "mlp-100", dict(epochs=10, batch_size=64, lr=1e-3))
FGSM_EPS = [0.0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.15, 0.2]


def _load(name: str, dataset: str, model: str, opts: dict, quick: bool):
    from advlab.weights import load_model

    metrics, run_dir = train_recipe(name, dataset, model, opts, 0, quick)
    return load_model(run_dir, "cpu").eval(), metrics, run_dir


def _test(dataset: str, n: int | None):
    from advlab import data

    ds = data.load(dataset, "test")
    return (ds.x, ds.y) if n is None else (ds.x[:n], ds.y[:n])


def deepfool_table(quick: bool) -> list[dict]:
    from advlab.defenses.deepdefense import deepfool_ratios
    from advlab.eval import clean_accuracy, rho2

    rows = []
    for name, dataset, model_name, opts, source_rho, source_name in DEEPFOOL_TABLE:
        model, metrics, run_dir = _load(name, dataset, model_name, opts, quick)
        x, y = _test(dataset, 500 if quick else None)
        t0 = time.perf_counter()
        ours = rho2(model, x, y, steps=50, overshoot=0.02)
        seconds = time.perf_counter() - t0
        unclipped = deepfool_ratios(model, x, y, steps=50, overshoot=0.02).mean().item()
        rows.append({"model": model_name, "source_name": source_name, "source": source_rho,
                     "clean": clean_accuracy(model, x, y), "rho2": ours.value,
                     "n_used": ours.n_used, "n_failed": ours.n_failed,
                     "rho2_unclipped": unclipped, "seconds": seconds, "n": int(x.shape[0]),
                     "epochs": len(metrics.get("history", [])) or opts["epochs"],
                     "run": str(run_dir.relative_to(ROOT))})
        print(f"[reproductions] {rows[-1]}", flush=True)
    return rows


def vanilla_row(quick: bool) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from advlab.defenses.deepdefense import deepfool_ratios
    from advlab.eval import (
        clean_accuracy,
        eps_ref,
        per_class_roc,
        robust_accuracy_curve,
        softmax_scores,
    )

    name, dataset, model_name, opts = VANILLA
    model, metrics, run_dir = _load(name, dataset, model_name, opts, quick)
    x, y = _test(dataset, 1000 if quick else None)
    rho = deepfool_ratios(model, x, None, steps=5, overshoot=0.02).mean().item()
    ref = eps_ref(model, x, y)
    curve = robust_accuracy_curve(model, x, y, "fgsm", FGSM_EPS, cumulative=False)
    at_ref = robust_accuracy_curve(model, x, y, "fgsm", [f * ref.eps for f in (0.2, 0.5, 1.0)],
                                   cumulative=False)
    roc = per_class_roc(softmax_scores(model, x), y)
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(curve.eps, curve.accuracy, "o-", label="FGSM (each ε afresh)")
    ax.axvline(ref.eps, ls="--", c="grey", label=f"ε_ref = {ref.eps:.4f}")
    ax.set(xlabel="ε (ℓ∞)", ylabel="accuracy", ylim=(0, 1),
           title="Fashion-MNIST mlp-100 (vanilla), FGSM")
    ax.legend()
    fig.tight_layout()
    fig_path = FIGURES / ("dd-vanilla-fgsm" + ("-quick" if quick else "") + ".png")
    fig.savefig(fig_path, dpi=120)
    plt.close(fig)
    return {"clean": clean_accuracy(model, x, y), "rho2": rho, "eps_ref": ref.eps,
            "at_ref": dict(zip(("0.2", "0.5", "1.0"), at_ref.accuracy, strict=True)),
            "curve": {"eps": curve.eps, "accuracy": curve.accuracy},
            "auc_macro": roc.macro_auc, "n": int(x.shape[0]),
            "figure": str(fig_path.relative_to(ROOT)), "run": str(run_dir.relative_to(ROOT))}


def main(quick: bool = False) -> None:
    require_data()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    table = deepfool_table(quick)
    van = vanilla_row(quick)
    seconds = time.perf_counter() - t0
    (OUT / "reproductions.json").write_text(json.dumps({"deepfool": table, "vanilla": van},
                                                       indent=1, default=float))
    lines = [
        "### DeepFool table (Moosavi-Dezfooli et al. 2016, Table 1), MNIST",
        "",
        "ρ_adv = mean ‖r‖₂/‖x‖₂ over the test points; advlab's `deepfool` (ℓ2, 50 steps, "
        "overshoot 0.02, 10 candidate classes, every iterate clipped to [0, 1]) through "
        "`advlab.eval.rho2` (mean over the correctly classified points it fooled), and, as the "
        "paper computed it without a pixel box, the same DeepFool unclipped "
        "(`defenses.deepfool_ratios`, all points). Models trained by advlab (Adam 1e-3, "
        "batch 128).",
        "",
        "| model | epochs | test points | clean | ρ_adv advlab (clipped) | fooled / failed | "
        "ρ_adv unclipped | paper | seconds (clipped run) | run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(f"| `{r['model']}` ({r['source_name']}) | {r['epochs']} | {r['n']} | "
                     f"{r['clean']:.4f} | **{r['rho2']:.3f}** | {r['n_used']} / "
                     f"{r['n_failed']} | {r['rho2_unclipped']:.3f} | {r['source']:.2f} | "
                     f"{r['seconds']:.1f} | `{r['run']}` |")
    acc = van["at_ref"]
    lines += [
        "",
        "### Deep Defense report, vanilla row: Fashion-MNIST `mlp-100`",
        "",
        f"10 epochs of Adam 1e-3, batch 64; {van['n']} test points. ρ₂ with the report's "
        "DeepFool (≤ 5 steps, overshoot 0.02, unclipped, away from the prediction, mean over "
        "all points). ε_ref = smallest FGSM ε with accuracy ≤ 50% (bisection, "
        "`advlab.eval.eps_ref`) of this model (the report takes it from its Deep Defense "
        "model; the defenses section does that).",
        "",
        "| | clean | ρ₂ | ε_ref | FGSM 0.2 ε_ref | 0.5 ε_ref | 1.0 ε_ref | AUC macro |",
        "|---|---|---|---|---|---|---|---|",
        f"| advlab | {van['clean']:.4f} | **{van['rho2']:.3e}** | {van['eps_ref']:.4f} | "
        f"{acc['0.2']:.4f} | {acc['0.5']:.4f} | {acc['1.0']:.4f} | {van['auc_macro']:.4f} |",
        "| report | 0.8738 | 3.92e-02 | | | | | |",
        "",
        "FGSM accuracy against ε (each ε attacks every correctly classified point afresh): "
        + ", ".join(f"{e:g}: {a:.3f}" for e, a in zip(van["curve"]["eps"],
                                                      van["curve"]["accuracy"], strict=True))
        + f". Figure: `{van['figure']}`.",
        "",
        f"(measured in {seconds:.0f} s)",
    ]
    write_fragment("reproductions" + ("-quick" if quick else ""),
                   "Attack reproductions (issue 3)",
                   "python -m bench.run --only reproductions" + (" --quick" if quick else ""),
                   "\n".join(lines))


if __name__ == "__main__":
    import sys

    main(quick="--quick" in sys.argv)
