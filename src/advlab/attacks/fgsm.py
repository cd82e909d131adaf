"""FGSM: one full signed-gradient step of size ε (PGD's loop with one step, no random start)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from advlab.attacks.base import Attack, Model, RunOutput, check_bool, check_nonneg
from advlab.attacks.pgd import pgd_loop
from advlab.attacks.registry import register
from advlab.attacks.rng import SampleRNG
from advlab.attacks.threat import ThreatModel


@register("fgsm")
@dataclass(frozen=True, kw_only=True)
class FGSM(Attack):
    r"""FGSM in 'Explaining and Harnessing Adversarial Examples' (Goodfellow et al.)
    [https://arxiv.org/abs/1412.6572]

    Distance measure: Linf.

    ``adv = clip(x + eps * sign(grad_x CE(f(x), y)), 0, 1)``; targeted:
    ``adv = clip(x - eps * sign(grad_x CE(f(x), target)), 0, 1)`` (a step toward the target).

    Arguments:
        eps (float): size of the step, the Linf budget. (Default: 8/255)
        targeted (bool): step toward ``target`` instead of away from ``y``. (Default: False)
        seed (int): unused (FGSM is deterministic); kept for a uniform interface. (Default: 0)

    Shape:
        - x: (B, C, H, W) or (B, D) in [0, 1]; y, target: (B,) int64; result.adv: like x.

    Examples::
        >>> attack = FGSM(eps=0.1)
        >>> result = attack(model, x, y)
        >>> robust_accuracy = 1 - result.success.float().mean()
    """

    eps: float = 8 / 255
    targeted: bool = False

    def check_params(self) -> None:
        check_nonneg("eps", self.eps)
        check_bool("targeted", self.targeted)

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel("linf", float(self.eps))

    def run(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
            rng: SampleRNG) -> RunOutput:
        label = target if self.targeted else y
        adv, iters = pgd_loop(model, x, label, self.targeted, self.threat, alpha=float(self.eps),
                              steps=1, start=x, early_stop=False)
        return RunOutput(adv, iters)
