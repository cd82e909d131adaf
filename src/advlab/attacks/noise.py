"""Uniform noise in [−ε, ε]: the control that shows an attack does better than chance."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from advlab.attacks.base import Attack, Model, RunOutput, check_nonneg
from advlab.attacks.registry import register
from advlab.attacks.rng import SampleRNG
from advlab.attacks.threat import ThreatModel


@register("noise")
@dataclass(frozen=True, kw_only=True)
class Noise(Attack):
    r"""Uniform random noise, the control of 'Explaining and Harnessing Adversarial Examples'
    (Goodfellow et al.) [https://arxiv.org/abs/1412.6572]

    Distance measure: Linf.

    ``adv = clip(x + u, 0, 1)`` with ``u ~ U[-eps, eps]`` i.i.d. per pixel, drawn from the
    attack's seed and each point's index (the same noise for a point in
    any batch). The model is not queried except to report the result.

    Arguments:
        eps (float): half-width of the noise, the Linf budget. (Default: 8/255)
        seed (int): seed of the noise. (Default: 0)

    Shape:
        - x: (B, C, H, W) or (B, D) in [0, 1]; y: (B,) int64; result.adv: like x.

    Examples::
        >>> control = Noise(eps=0.3, seed=1)
        >>> result = control(model, x, y)
        >>> result.success.float().mean()  # compare with FGSM at the same eps
    """

    eps: float = 8 / 255

    def check_params(self) -> None:
        check_nonneg("eps", self.eps)

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel("linf", float(self.eps))

    def run(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
            rng: SampleRNG) -> RunOutput:
        return RunOutput(self.threat.random_start(x, rng), iterations=0)
