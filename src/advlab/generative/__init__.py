"""Generative models by name: ``create(name, dataset)``, ``from_spec(model.spec)``, ``available()``.

>>> from advlab import generative
>>> vae = generative.create("vae", dataset="mnist")          # MLP 784-150-32, Bernoulli
>>> x = vae.sample(16)                                        # (16, 1, 28, 28) in [0, 1]
>>> z, x_hat = vae.project(x, steps=100)                      # argmin_z ||decode(z) - x||

Names: ``ae``, ``vae`` (``autoencoder``), ``gan``, ``dcgan``, ``wgan-gp`` (``adversarial``).
Training: ``advlab.generative.train`` (loop, checkpoints) and ``advlab.generative.job`` (run
directories, figures, metrics); scores: ``advlab.eval.generative``.
"""

from advlab.generative import adversarial, autoencoder  # noqa: F401  (register the models)
from advlab.generative.adversarial import AdversarialModel
from advlab.generative.autoencoder import AE, VAE, Autoencoder
from advlab.generative.base import GENERATIVE, GenerativeModel, available, create, from_spec
from advlab.generative.losses import (
                                      critic_loss,
                                      discriminator_loss,
                                      generator_loss,
                                      gradient_penalty,
)
from advlab.generative.projection import Projection, distance, project
from advlab.generative.weights import load_generative, save_generative

__all__ = [
    "AE",
    "VAE",
    "GENERATIVE",
    "AdversarialModel",
    "Autoencoder",
    "GenerativeModel",
    "Projection",
    "available",
    "create",
    "critic_loss",
    "discriminator_loss",
    "distance",
    "from_spec",
    "generator_loss",
    "gradient_penalty",
    "load_generative",
    "project",
    "save_generative",
]
