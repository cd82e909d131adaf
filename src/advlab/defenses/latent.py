r"""Classifiers on the latent codes of a generative model, and Defense-GAN.

* ``LatentClassifier`` — the "Making Neural Nets Robust Again" report's classifiers on codes:
  pixels -> code of a frozen AE or VAE -> a small classifier (``linear-1l``, ``linear-2l``,
  ``lrl``) on the code. The code is the encoder's output (``code="encode"``, the posterior mean
  for a VAE) or the projection onto the decoder's range, ``argmin_z ‖decode(z) − x‖₂`` by
  gradient descent (``code="project"``, 500 Adam steps by default).
* ``DefenseGAN`` — Samangouei, Kabkab and Chellappa 2018 [https://arxiv.org/abs/1805.06605]:
  project the input onto a generator's range (several random restarts) and classify G(z*) with
  an image classifier.

Projection is an inner optimization, not a differentiable function of the input. Both modules
therefore expose BPDA gradients (Athalye, Carlini and Wagner 2018,
[https://arxiv.org/abs/1802.00420]) by default (``bpda=True``): the forward value is the
projection's, the backward pass is that of a differentiable surrogate — the encoder for codes
(z ≈ encode(x)), the identity for Defense-GAN (G(z*) ≈ x). Attacks with plain gradients then
see a useful gradient instead of none; without ``bpda`` the input gradient of a projected model
is zero and any gradient attack would report a false robustness. The projection's random
restarts are keyed by ``seed`` and a hash of each input's pixels (``attacks.rng``), so the model
is a deterministic function of each input: a point gets the same projection alone or in any
batch (the clean pass and an attack's final pass agree).

Both are ordinary ``advlab`` models: built as a transform of the head (resp. image classifier)
recorded in ``spec["transforms"]`` with the generative model's spec, and saved with all weights
(generative model included) by ``advlab.weights.save_model``; ``load_model`` rebuilds them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advlab import generative as gen
from advlab import models
from advlab.attacks.rng import SampleRNG, content_keys
from advlab.data.base import TensorSet
from advlab.defenses.common import check_bool, check_choice, check_int, check_number
from advlab.models import TRANSFORMS
from advlab.train import TrainConfig, fit

CODES = ("encode", "project")
HEADS = ("linear-1l", "linear-2l", "lrl")


def _frozen(model: gen.GenerativeModel) -> gen.GenerativeModel:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class _Projecting(nn.Module):
    """Shared settings and the seeded projection of the two projection defenses."""

    def __init__(self, generative: gen.GenerativeModel, steps: int, lr: float, restarts: int,
                 bpda: bool, seed: int) -> None:
        super().__init__()
        check_int("steps", steps, low=0)
        check_number("lr", lr, positive=True)
        check_int("restarts", restarts)
        check_bool("bpda", bpda)
        check_int("seed", seed, low=0)
        self.generative = _frozen(generative)
        self.steps, self.lr, self.restarts, self.bpda, self.seed = steps, lr, restarts, bpda, seed
        self.input_shape = tuple(generative.data_shape)
        self.spec: dict[str, Any] = {}

    def train(self, mode: bool = True) -> _Projecting:
        super().train(mode)
        self.generative.eval()  # frozen: batch norm keeps its running statistics
        return self

    def start_codes(self, x: Tensor) -> Tensor:
        """The projection's random starts for ``x`` (B, ...): (restarts, B, latent_dim) prior
        codes keyed by (seed, a hash of each input's pixels), so a point's starts, projection
        and prediction do not depend on the batch it comes in."""
        self.generative.check_data(x)
        b, d, r = x.shape[0], self.generative.latent_dim, self.restarts
        eps = SampleRNG(self.seed, content_keys(x)).randn((b, r * d))
        eps = eps.reshape(b, r, d).transpose(0, 1).reshape(r * b, d)
        with torch.no_grad():
            return self.generative.prior_from_normal(eps.to(x.device)).reshape(r, b, d)

    def project(self, x: Tensor) -> gen.Projection:
        z_init = self.start_codes(x)
        # enable_grad: the projection differentiates w.r.t. z even when the caller does not
        # (generative.projection sums its objective outside its own enable_grad block).
        with torch.enable_grad():
            out = self.generative.project(x.detach(), steps=self.steps, lr=self.lr,
                                          restarts=self.restarts, z_init=z_init)
        return gen.Projection(out.z.detach(), out.x_hat.detach())

    def _entry(self, name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "params": {"generative": self.generative.spec, "steps": self.steps,
                                         "lr": self.lr, "restarts": self.restarts,
                                         "bpda": self.bpda, "seed": self.seed, **extra}}


class LatentClassifier(_Projecting):
    """Pixels (B, *data_shape) -> code (B, latent_dim) of a frozen AE/VAE -> ``head`` logits."""

    def __init__(self, generative: gen.GenerativeModel, head: nn.Module, code: str = "encode",
                 *, steps: int = 500, lr: float = 0.05, restarts: int = 1, bpda: bool = True,
                 seed: int = 0) -> None:
        super().__init__(generative, steps, lr, restarts, bpda, seed)
        check_choice("code", code, CODES)
        if not hasattr(generative, "encode") and (code == "encode" or bpda):
            raise ValueError(f"expected an autoencoder (with encode) for code={code!r}"
                             f"{' and bpda' if bpda else ''}, got {type(generative).__name__}")
        self.head = head
        self.code = code
        self.num_classes = int(getattr(head, "num_classes", 0))
        spec = getattr(head, "spec", None)
        if spec:
            self.spec = {**spec, "transforms": [*spec.get("transforms", []),
                                                self._entry("latent", code=code)]}

    def codes(self, x: Tensor) -> Tensor:
        """The codes of ``x`` (B, latent_dim), differentiable (exactly or by BPDA)."""
        if self.code == "encode":
            return self.generative.encode(x)
        z = self.project(x).z
        if not self.bpda:
            return z
        enc = self.generative.encode(x)
        return enc + (z - enc).detach()  # value: projection; gradient: the encoder's

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.codes(x))


class DefenseGAN(_Projecting):
    """Pixels -> G(z*), z* = argmin_z ‖G(z) − x‖₂ over ``restarts`` starts -> ``classifier``."""

    def __init__(self, generative: gen.GenerativeModel, classifier: nn.Module, *,
                 steps: int = 500, lr: float = 0.05, restarts: int = 10, bpda: bool = True,
                 seed: int = 0) -> None:
        super().__init__(generative, steps, lr, restarts, bpda, seed)
        self.classifier = classifier
        self.num_classes = int(getattr(classifier, "num_classes", 0))
        spec = getattr(classifier, "spec", None)
        if spec:
            self.spec = {**spec, "transforms": [*spec.get("transforms", []),
                                                self._entry("defense-gan")]}

    def purify(self, x: Tensor) -> Tensor:
        x_hat = self.project(x).x_hat
        return x + (x_hat - x).detach() if self.bpda else x_hat

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.purify(x))


def _make_latent(head: nn.Module, generative: dict[str, Any], code: str = "encode",
                 **params: Any) -> LatentClassifier:
    return LatentClassifier(gen.from_spec(generative), head, code, **params)


def _make_defense_gan(classifier: nn.Module, generative: dict[str, Any],
                      **params: Any) -> DefenseGAN:
    return DefenseGAN(gen.from_spec(generative), classifier, **params)


TRANSFORMS.add("latent", _make_latent)
TRANSFORMS.add("defense-gan", _make_defense_gan)


@torch.no_grad()
def latent_codes(model: LatentClassifier, x: Tensor, batch_size: int = 500) -> Tensor:
    """The codes of ``x`` (N, latent_dim) as the model computes them, in batches."""
    return torch.cat([model.codes(xb).detach() for xb in x.split(batch_size)])


def train_latent_classifier(generative: gen.GenerativeModel, train: TensorSet, *,
                            head: str = "linear-1l", code: str = "encode",
                            config: TrainConfig | None = None, progress: bool = False,
                            codes: torch.Tensor | None = None,
                            checkpoint: str | Path | None = None, resume: bool = False,
                            **params: Any) -> LatentClassifier:
    """Fit a ``head`` (``linear-1l`` | ``linear-2l`` | ``lrl``) on the codes of ``train``.

    The codes are computed once with the frozen generative model (a copy is kept inside the
    returned model), then the head alone trains on them in the ordinary loop. ``params`` go to
    ``LatentClassifier`` (steps, lr, restarts, bpda, seed of the projection). ``codes``
    (N, latent_dim): the codes of ``train.x`` computed before (``latent_codes`` of a model with
    the same generative model and code), to share one projection of the training set between
    several heads. ``checkpoint`` / ``resume``: the head's training checkpoint (``fit``).
    """
    check_choice("head", head, HEADS)
    gmodel = _frozen(copy.deepcopy(generative))
    dataset = train.info.name
    head_model = models.create(head, dataset=dataset, in_features=gmodel.latent_dim,
                               num_classes=train.info.num_classes, normalize=False)
    model = LatentClassifier(gmodel, head_model, code, **params)
    if codes is None:
        codes = latent_codes(model, train.x)
    elif not isinstance(codes, torch.Tensor) or codes.shape != (len(train), gmodel.latent_dim):
        shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ValueError(f"expected codes of shape ({len(train)}, {gmodel.latent_dim}) (one "
                         f"per training example), got {shape}")
    fit(head_model, TensorSet(codes, train.y, train.info, train.split),
        config or TrainConfig(device="cpu"), progress=progress, checkpoint=checkpoint,
        resume=resume)
    return model.eval()
