"""The generative part of ``advlab demo``: a small VAE and GAN trained on the digits.

Each model trains into ``<out>/generative/<vae|gan>/`` (a normal run directory: weights,
metrics, figures, among them ``figures/samples.png``). (The fully connected ``gan`` collapsed to
a single digit in trials on these 1,438 8x8 images; the convolutional DCGAN does not.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from advlab.generative.job import GenerativeJob, train_generative
from advlab.generative.train import default_config

console = Console()


def demo_generative(out: Path, device: str = "auto", quick: bool = False) -> dict[str, Any]:
    """Train a VAE (MLP 64-150-32, Bernoulli) and a GAN (a small DCGAN: latent 32, 32 channels,
    non-saturating loss) on ``digits``; returns their headline numbers and run directories."""
    out = Path(out) / "generative"
    results: dict[str, Any] = {}
    vae_job = GenerativeJob(
        dataset="digits", model="vae",
        train=default_config("vae", "image", epochs=5 if quick else 30, batch_size=64,
                             device=device))
    run, m = train_generative(vae_job, out / "vae", progress=not quick)
    results["vae"] = {"test_negative_elbo": m["test_negative_elbo"],
                      "test_iw_nll": m["test_iw_nll"], "run": str(run.path),
                      "samples": str(run.figures / "samples.png")}
    console.print(f"[bold]vae[/] on digits: test negative ELBO {m['test_negative_elbo']:.2f} "
                  f"nats, IW bound (k=100) {m['test_iw_nll']:.2f} nats "
                  f"({m['epochs_completed']} epochs) -> {run.figures / 'samples.png'}")
    gan_job = GenerativeJob(
        dataset="digits", model="dcgan", model_kwargs={"latent_dim": 32, "width": 32},
        train=default_config("dcgan", "image", epochs=2 if quick else 6,
                             steps_per_epoch=50 if quick else 100, device=device))
    run, m = train_generative(gan_job, out / "gan", progress=not quick)
    final = m["final"]
    results["gan"] = {"model": "dcgan", "loss_d": final["loss_d"], "loss_g": final["loss_g"],
                      "run": str(run.path), "samples": str(run.figures / "samples.png")}
    console.print(f"[bold]dcgan[/] on digits: {m['epochs_completed']} epochs of "
                  f"{final['steps']} generator steps ({m['mean_epoch_seconds']:.2f} s/epoch), "
                  f"final D loss {final['loss_d']:.3f}, G loss {final['loss_g']:.3f} -> "
                  f"{run.figures / 'samples.png'}")
    return results
