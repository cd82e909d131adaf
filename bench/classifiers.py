"""Issue 2 accuracy targets: the zoo trained by advlab's loop on real data.

    ADVLAB_DATA=../shared/data python -m bench.run --only classifiers

Runs are written to bench/out/<name>/ and reused by later benchmarks (attacks, defenses).
"""

from __future__ import annotations

import json
import statistics

from bench.common import ROOT, require_data, write_fragment

OUT = ROOT / "bench" / "out"

# (run name, dataset, model, training options, target test accuracy, source of the target)
RECIPES = [  # madry-cnn first: the attack and defense benchmarks need it
    ("madrycnn-mnist-cos", "mnist", "madry-cnn",
     dict(epochs=8, batch_size=128, lr=1e-3, schedule="cosine"), 0.990, "issue target 99.0%"),
    ("mlp100-fmnist", "fashion-mnist", "mlp-100",
     dict(epochs=10, batch_size=64, lr=1e-3), 0.874, "Deep Defense report 87.38%"),
    # 15 epochs (constant or cosine lr) gave 0.9224 / 0.9223 with training accuracy (dropout
    # on) still below test accuracy: the dropout-heavy network underfits, so it trains longer
    ("fmnistcnn-fmnist-cos30", "fashion-mnist", "fmnist-cnn",
     dict(epochs=30, batch_size=128, lr=1e-3, schedule="cosine"), 0.924, "source report 92.36%"),
]
SEEDS = {"mlp100-fmnist": (0, 1, 2)}  # cheap enough for a median over seeds


def train_recipe(name: str, dataset: str, model: str, opts: dict, seed: int, quick: bool):
    from advlab.train.classifier import ClassifierJob, train_classifier
    from advlab.train.config import TrainConfig

    run_dir = OUT / (f"{name}-s{seed}" if seed else name)
    if (run_dir / "metrics.json").is_file() and not quick:
        return json.loads((run_dir / "metrics.json").read_text()), run_dir
    opts = dict(opts)
    n_train = None
    if quick:
        opts["epochs"], n_train = 1, 2000
        run_dir = OUT / "quick" / run_dir.name
    job = ClassifierJob(dataset=dataset, model=model, n_train=n_train,
                        train=TrainConfig(seed=seed, device="cpu", **opts))
    run, metrics = train_classifier(job, run_dir, resume=run_dir.is_dir(), progress=False)
    return metrics, run.path


def main(quick: bool = False) -> None:
    require_data()
    rows = []
    for name, dataset, model, opts, target, source in RECIPES:
        accs, secs, runs = [], [], []
        for seed in SEEDS.get(name, (0,)):
            metrics, path = train_recipe(name, dataset, model, opts, seed, quick)
            accs.append(metrics["test_acc"])
            secs.append(metrics["mean_epoch_seconds"])
            runs.append(path.relative_to(ROOT))
        acc = statistics.median(accs)
        recipe = (f"Adam {opts['lr']:g}, batch {opts['batch_size']}, "
                  f"{opts.get('schedule', 'constant')} lr")
        rows.append(f"| {dataset} | `{model}` | {opts['epochs']} | {recipe} | "
                    f"{', '.join(f'{a:.4f}' for a in accs)} | **{acc:.4f}** | "
                    f"{target:.3f} ({source}) | {'yes' if acc >= target else 'NO'} | "
                    f"{statistics.median(secs):.1f} |")
        print(rows[-1])
    body = (
        "Cross-entropy, the full training set, test accuracy on the full test set "
        "(Fashion-MNIST here is the shared copy whose split differs from the official one, see "
        "`../shared/data/README.md`). Median over the seeds listed.\n\n"
        "| data set | model | epochs | recipe | test accuracy per seed | median | target | met | "
        "s / epoch |\n|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "Training command for one row, e.g.: `advlab train classifier --dataset fashion-mnist "
        "--model fmnist-cnn --epochs 30 --batch-size 128 --schedule cosine`.\n"
    )
    write_fragment("classifiers" + ("-quick" if quick else ""), "Classifier zoo on real data",
                   "python -m bench.run --only classifiers" + (" --quick" if quick else ""), body)
