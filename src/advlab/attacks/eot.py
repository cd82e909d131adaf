"""Expectation over Transformation (Athalye, Carlini and Wagner 2018, "Obfuscated Gradients Give
a False Sense of Security", [https://arxiv.org/abs/1802.00420]).

A randomized model (random resizing, noise, sampled latent codes, ...) gives a different output
and gradient at every call; one sample of the gradient is a poor direction and an attack on it
under-reports what an adversary can do. ``EOT(model, samples=k)`` is a model whose logits are the
mean of ``k`` forward passes of ``model``, so its input gradient is the average of the ``k``
sampled gradients: give it to any attack in place of ``model``. The passes run as one batch
of ``k·B`` points when ``batched=True`` (the default; randomness must then be drawn per point,
as it is in ordinary layers such as dropout), else as ``k`` calls.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class EOT(nn.Module):
    """``model`` averaged over ``samples`` stochastic forward passes (logits, (B, K))."""

    def __init__(self, model: nn.Module, samples: int = 10, batched: bool = True) -> None:
        super().__init__()
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"expected samples to be an integer >= 1, got {samples!r}")
        self.model, self.samples, self.batched = model, samples, batched

    def forward(self, x: Tensor) -> Tensor:
        if self.samples == 1:
            return self.model(x)
        if self.batched:
            out = self.model(x.repeat(self.samples, *([1] * (x.dim() - 1))))  # (k·B, K)
            return out.view(self.samples, x.shape[0], *out.shape[1:]).mean(dim=0)
        return torch.stack([self.model(x) for _ in range(self.samples)]).mean(dim=0)

    def extra_repr(self) -> str:
        return f"samples={self.samples}, batched={self.batched}"
