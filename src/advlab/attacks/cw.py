"""Carlini–Wagner L2: minimize ‖δ‖₂² + c·f(x + δ) with Adam in a box-free variable w."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from advlab.attacks.base import (
    Attack,
    Model,
    RunOutput,
    check_bool,
    check_differentiable,
    check_int,
    check_nonneg,
    check_positive,
    input_grad,
    is_adversarial,
    margin,
)
from advlab.attacks.registry import register
from advlab.attacks.rng import SampleRNG


def shrink_along_ray(model: Model, x: Tensor, adv: Tensor, label: Tensor, targeted: bool,
                     kappa: float, steps: int = 10) -> Tensor:
    """Bisect the scale t in [0, 1] of each perturbation adv − x, keeping x + t·(adv − x)
    adversarial (with margin kappa): ``steps`` forward passes, no gradient. Adam's first steps
    can jump well past a boundary that lies very close to x."""
    r = adv - x
    lo, hi = x.new_zeros(x.shape[0]), x.new_ones(x.shape[0])
    view = (-1,) + (1,) * (x.dim() - 1)
    with torch.no_grad():
        for _ in range(steps):
            mid = (lo + hi) / 2
            logits = model(x + mid.view(view) * r)
            ok = is_adversarial(logits, label, targeted) & (margin(logits, label, targeted)
                                                            <= -kappa)
            hi, lo = torch.where(ok, mid, hi), torch.where(ok, lo, mid)
    return torch.where((hi < 1).view(view), x + hi.view(view) * r, adv)


@register("cw")
@dataclass(frozen=True, kw_only=True)
class CW(Attack):
    r"""CW-L2 in 'Towards Evaluating the Robustness of Neural Networks' (Carlini & Wagner)
    [https://arxiv.org/abs/1608.04644]

    Distance measure: L2. A minimal-perturbation attack: returns, per sample, the smallest
    successful perturbation seen over all steps and search steps; a sample never fooled is
    returned unchanged (adv = x, success False), never as a blank image.

    minimize ‖adv − x‖₂² + c · max(margin(adv), −kappa) over w, with Adam, where margin is
    z_y − max_{j≠y} z_j (targeted: max_{j≠t} z_j − z_t).

    Change of variables (why not the paper's adv = (tanh(w) + 1) / 2): there a pixel at exactly
    0 or 1 (83% of MNIST) sits at w = ±inf, where d adv / d w = 0, so it never moves (peers clamp
    to atanh(±0.999999): ~16% success at c = 1 on MNIST). Here the tanh is centred on the clean
    image, per pixel: adv = x + (1 − x)·tanh(w) for w >= 0 and adv = x + x·tanh(w) for w < 0.
    So w = 0 gives adv = x exactly, adv stays inside [0, 1] for every w, and a pixel at 0 or 1
    has slope 1 inward. Its w is kept on the inward half-line (w >= 0 at 0, w <= 0 at 1) after
    each Adam step, so it never enters the flat side and can always move back in.

    At the end of each search step, its smallest success is shrunk along its own direction by a
    10-step bisection (10 forward passes) before it is compared with the other steps' (so more
    search steps never give a larger perturbation): Adam's first steps can jump well past a
    boundary very close to x, and the smallest perturbation is the point of this attack.

    Arguments:
        c (float): weight of the classification term (the initial c with a search). (Default: 1)
        kappa (float): confidence margin required. (Default: 0)
        steps (int): Adam steps per search step. (Default: 100)
        lr (float): Adam learning rate. (Default: 0.01)
        binary_search_steps (int): 1 keeps c fixed; more bisect c per sample as in the paper
            (c /2-ish after a success, x10 before the first success). (Default: 1)
        targeted (bool): reach ``target`` instead of leaving ``y``. (Default: False)

    Shape:
        - x: (B, C, H, W) or (B, D) in [0, 1]; y, target: (B,) int64; result.adv: like x.

    Examples::
        >>> result = CW(c=1.0, steps=100, binary_search_steps=5)(model, x, y)
        >>> result.l2[result.success].median()
    """

    minimal = True

    c: float = 1.0
    kappa: float = 0.0
    steps: int = 100
    lr: float = 0.01
    binary_search_steps: int = 1
    targeted: bool = False

    def check_params(self) -> None:
        check_positive("c", self.c)
        check_nonneg("kappa", self.kappa)
        check_int("steps", self.steps)
        check_positive("lr", self.lr)
        check_int("binary_search_steps", self.binary_search_steps)
        check_bool("targeted", self.targeted)

    def run(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
            rng: SampleRNG) -> RunOutput:
        label = target if self.targeted else y
        batch, dev = x.shape[0], x.device
        c = torch.full((batch,), float(self.c), device=dev)
        lower, upper = torch.zeros_like(c), torch.full_like(c, torch.inf)
        best_l2, best_adv = torch.full_like(c, torch.inf), x.clone()
        best_c = torch.full_like(c, torch.nan)  # the c of each sample's best (NaN: never fooled)
        # slope of adv(w) on each side of w = 0; a pixel at 1 only ever goes down (w <= 0), so
        # its "up" slope is replaced by 1 to make the slope at w = 0 nonzero there too
        up, down = torch.where(x == 1, 1.0, 1 - x), x
        w_min = torch.where(x == 0, 0.0, -torch.inf)  # boundary pixels: inward half-line only
        w_max = torch.where(x == 1, 0.0, torch.inf)
        b1, b2 = 0.9, 0.999
        view = (-1,) + (1,) * (x.dim() - 1)
        for _ in range(self.binary_search_steps):
            w = torch.zeros_like(x, requires_grad=True)
            m, v = torch.zeros_like(x), torch.zeros_like(x)  # Adam moments, elementwise
            fooled = torch.zeros(batch, dtype=torch.bool, device=dev)
            step_l2, step_adv = torch.full_like(c, torch.inf), x.clone()  # this c's smallest
            for t in range(1, self.steps + 1):
                delta = torch.where(w >= 0, up, down) * torch.tanh(w)  # adv inside [0, 1]
                adv = x + delta  # (B, ...)
                logits = model(adv)  # (B, K)
                check_differentiable(logits)  # the l2 term alone would hide a detached model
                l2sq = delta.flatten(1).pow(2).sum(dim=1)
                gap = margin(logits, label, self.targeted)
                loss = l2sq + c * gap.clamp(min=-self.kappa)
                grad = input_grad(loss.sum(), w)
                with torch.no_grad():  # track the smallest success (at the pre-step iterate)
                    ok = is_adversarial(logits, label, self.targeted) & (gap <= -self.kappa)
                    l2 = l2sq.sqrt()
                    better = ok & (l2 < step_l2)
                    step_l2 = torch.where(better, l2, step_l2)
                    step_adv = torch.where(better.view(view), adv, step_adv)
                    fooled |= ok
                    m.mul_(b1).add_(grad, alpha=1 - b1)
                    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                    denom = (v / (1 - b2**t)).sqrt_().add_(1e-8)
                    w.addcdiv_(m, denom, value=-self.lr / (1 - b1**t))
                    w.clamp_(w_min, w_max)
            # this c's best, shrunk along its ray, then compared with the other c's (shrunk
            # too): comparing before the shrink could keep a candidate that shrinks less
            shrunk = shrink_along_ray(model, x, step_adv, label, self.targeted, self.kappa)
            l2 = (shrunk - x).flatten(1).norm(dim=1)
            better = fooled & (l2 < best_l2)
            best_l2 = torch.where(better, l2, best_l2)
            best_adv = torch.where(better.view(view), shrunk, best_adv)
            best_c = torch.where(better, c, best_c)
            # per-sample bisection of c (Carlini & Wagner): lower after a success, else raise
            upper = torch.where(fooled, upper.minimum(c), upper)
            lower = torch.where(fooled, lower, lower.maximum(c))
            c = torch.where(upper.isfinite(), (lower + upper) / 2, c * 10)
        iterations = self.steps * self.binary_search_steps
        return RunOutput(best_adv, iterations, info={"c": best_c})
