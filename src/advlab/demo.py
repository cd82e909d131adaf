"""``advlab demo``: the main job end to end on scikit-learn's digits (no download needed).

Each part writes into a sub-directory of one run directory and adds its numbers to the demo's
``metrics.json``; the console gets a short summary of each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from advlab.attacks_demo import demo_attacks
from advlab.device import resolve_device
from advlab.generative.demo import demo_generative
from advlab.runs import new_run_dir
from advlab.train.classifier import ClassifierJob, train_classifier
from advlab.train.config import TrainConfig

console = Console()


def demo_classifier(out: Path, device: str, quick: bool) -> dict[str, Any]:
    job = ClassifierJob(dataset="digits", model="lenet5",
                        train=TrainConfig(epochs=5 if quick else 30, batch_size=64, lr=2e-3,
                                          seed=0, device=device))
    run, metrics = train_classifier(job, out / "classifier", progress=not quick)
    console.print(f"[bold]classifier[/] lenet5 on digits: test accuracy "
                  f"{metrics['test_acc']:.4f} ({metrics['epochs_completed']} epochs, "
                  f"{metrics['mean_epoch_seconds']:.2f} s/epoch) -> {run.path}")
    return {"test_acc": metrics["test_acc"], "run": str(run.path)}


PARTS = ("classifier", "attacks", "generative")


def run_demo(out: str | Path | None = None, device: str = "auto", quick: bool = False) -> Path:
    """Train the digits classifier, attack it (FGSM, PGD, DeepFool), then train a small VAE and
    GAN; every part's numbers land in the run's ``metrics.json`` as soon as the part ends."""
    resolve_device(device)  # an unknown or unavailable device fails before anything is written
    run = new_run_dir("demo", out)
    run.write_config({"command": "demo", "device": device, "quick": quick})
    results: dict[str, Any] = {}
    results["classifier"] = demo_classifier(run.path, device, quick)
    run.write_metrics(results)
    results["attacks"] = demo_attacks(run.path / "attacks", Path(results["classifier"]["run"]),
                                      device, quick)
    run.write_metrics(results)
    results["generative"] = demo_generative(run.path, device, quick)
    run.write_metrics(results)
    return run.path
