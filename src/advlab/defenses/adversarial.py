r"""Adversarial training: ``fgsm-at``, ``pgd-at`` and ``fast-at``, one objective with three presets.

The objective crafts an adversary for the current weights inside the threat model (an ℓ∞ or ℓ2
ball of radius ε intersected with the pixel box [0, 1]) by ``steps`` projected signed-gradient
steps of size ``alpha`` on the cross-entropy, from ``x`` or from a uniform random point of the
ball, then minimizes

    J̃(θ) = clean_weight · J(θ, x, y) + (1 − clean_weight) · J(θ, x_adv, y)

with ``x_adv`` held constant (no gradient flows through the attack), as in every source below.

* ``fgsm-at`` — Goodfellow et al. 2015, 'Explaining and Harnessing Adversarial Examples'
  [https://arxiv.org/abs/1412.6572]: one step of size ε from x, ``clean_weight`` α = 0.5.
  ε = 0.25 on MNIST (the paper's value), 0.1 on Fashion-MNIST and digits, 8/255 on CIFAR-10.
* ``pgd-at`` — Madry et al. 2018, 'Towards Deep Learning Models Resistant to Adversarial Attacks'
  [https://arxiv.org/abs/1706.06083]: the loss at a PGD adversary only (clean_weight 0),
  random start; MNIST ε = 0.3 with 40 steps of 0.01; CIFAR-10 ε = 8/255 with 7 steps of 2/255;
  elsewhere ε = 0.1 and 40 steps of 2.5·ε/steps.
* ``fast-at`` — Wong, Rice and Kolter 2020, 'Fast is better than free'
  [https://arxiv.org/abs/2001.03994]: FGSM from a uniform random start in the ε-ball with step
  1.25·ε, projected back onto the ball and the box (MNIST ε = 0.3, step 0.375). As in the
  authors' code the gradient is taken at the *unclipped* random start x + δ₀ (``clip_start``
  False; only the final adversary is projected to the box). Clipping the start first
  (``clip_start=True``, what ``pgd-at`` does, as Madry et al.'s code) removes most of the start's
  randomness on MNIST, where 80% of the pixels are 0: half the draws land exactly on 0 and the
  step then gives the same adversary as FGSM without random start. Measured on madry-cnn at
  ε = 0.3 (Adam, one-cycle lr 2e-3): with the clipped start, PGD-20 accuracy on held-out
  training images was 8% after epoch 1 and 0% after epoch 2 while FGSM accuracy kept rising
  ("catastrophic overfitting"); with the unclipped start it rose 17%, 43%, 68%, 75% over
  epochs 1-4 (docs/BENCHMARKS.md has the full runs).

The adversary is crafted with the model in eval mode by default (``craft_mode="eval"``): batch
normalization then uses its running statistics and does not update them with the attack's
intermediate batches, dropout does not blur the adversary, and the adversary is the one the
evaluation uses. The update itself runs in the mode the loop chose (train), restored per module
after crafting. Madry et al. and Wong et al. craft in train mode; ``craft_mode="train"`` does
that (for batch-norm models the running statistics then also absorb the crafting batches). For
models without batch norm or dropout (the MNIST and Fashion-MNIST zoo models except
``fmnist-cnn``) the two modes give the same adversary.

Random starts come from a generator seeded by one draw of the global RNG, which the training loop
seeds and checkpoints: a different start per batch, the same sequence on a rerun or resume.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab.attacks.threat import NORMS, ThreatModel
from advlab.defenses.common import (
    CRAFT_MODES,
    check_bool,
    check_choice,
    check_dataset,
    check_fraction,
    check_int,
    check_number,
    mode,
    step_generator,
)
from advlab.defenses.registry import build, family, per_dataset, register
from advlab.train.objective import StepOutput


def _positive(name: str, value: object) -> None:
    check_number(name, value, positive=True)


# The check of every setting, by field name: run by ``__post_init__`` and, by the factories
# below, on the caller's values before any default is derived from them (alpha from eps).
# eps and alpha must be > 0: a zero radius or step size crafts no adversary at all.
CHECKS: dict[str, Callable[[str, object], None]] = {
    "eps": _positive,
    "alpha": _positive,
    "steps": check_int,
    "norm": lambda name, value: check_choice(name, value, NORMS),
    "random_start": check_bool,
    "clean_weight": check_fraction,
    "craft_mode": lambda name, value: check_choice(name, value, CRAFT_MODES),
    "clip_start": check_bool,
}


@dataclass(frozen=True)
class AdversarialTraining:
    """Cross-entropy at an adversary crafted by projected signed-gradient steps (see module)."""

    name: str = "adversarial-training"
    eps: float = 0.3  # radius of the threat ball
    alpha: float = 0.01  # step size of each crafting step
    steps: int = 40  # crafting steps (1: FGSM)
    norm: str = "linf"  # 'linf' or 'l2'
    random_start: bool = True  # start from a uniform point of the ball (else from x)
    clean_weight: float = 0.0  # weight of the clean loss (Goodfellow's α); 0 = adversary only
    craft_mode: str = "eval"  # mode of the model while crafting: 'eval' or 'train'
    clip_start: bool = True  # clip the (ℓ∞) random start to [0, 1] before the first gradient

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name in CHECKS:
                CHECKS[f.name](f.name, getattr(self, f.name))

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(self.norm, float(self.eps))

    def _start(self, x0: Tensor) -> Tensor:
        """A uniform point of the ball around ``x0``, clipped to the box unless ``clip_start``
        is False (ℓ∞ only; an ℓ2 start is always clipped)."""
        g = step_generator(x0.device)
        if self.clip_start or self.norm != "linf":
            return self.threat.random_start(x0, g)
        u = torch.rand(x0.shape, generator=g, device=x0.device, dtype=x0.dtype)
        return x0 + (2 * u - 1) * self.eps

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The adversary for ``x`` (B, ...) with labels ``y`` (B,), detached, inside the threat
        set. Parameter gradients are not touched; each module's mode is restored after."""
        threat = self.threat
        with mode(model, self.craft_mode == "train"), torch.enable_grad():
            x0 = x.detach()
            adv = self._start(x0) if self.random_start else x0
            for _ in range(self.steps):
                xa = adv.detach().requires_grad_(True)  # (B, ...)
                loss = F.cross_entropy(model(xa), y, reduction="sum")
                (grad,) = torch.autograd.grad(loss, xa)
                adv = threat.step(x0, xa.detach(), grad, float(self.alpha))
        return adv.detach()

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
        adv = self.perturb(model, x, y)
        adv_logits = model(adv)  # (B, K)
        adv_loss = F.cross_entropy(adv_logits, y)
        if self.clean_weight > 0:
            logits = model(x)  # (B, K)
            loss = (self.clean_weight * F.cross_entropy(logits, y)
                    + (1 - self.clean_weight) * adv_loss)
        else:
            loss = adv_loss
            with torch.no_grad():  # only for the loop's running clean accuracy
                logits = model(x)
        adv_acc = (adv_logits.detach().argmax(1) == y).float().mean()
        return StepOutput(loss=loss, logits=logits.detach(),
                          metrics={"adv_loss": adv_loss.detach(), "adv_acc": adv_acc})


FGSM_EPS = {"mnist": 0.25, "fashion-mnist": 0.1, "digits": 0.1, "cifar10": 8 / 255, "*": 0.1}
PGD_DEFAULTS = {
    "mnist": dict(eps=0.3, alpha=0.01, steps=40),
    "cifar10": dict(eps=8 / 255, alpha=2 / 255, steps=7),
    "*": dict(eps=0.1, steps=40),
}
FAST_EPS = {"mnist": 0.3, "fashion-mnist": 0.1, "digits": 0.1, "cifar10": 8 / 255, "*": 0.1}


# Parameter names used for the same setting elsewhere (papers' code, torchattacks); the
# registry's close-match hint would suggest 'steps' for 'step_size'.
ALIASES = {"step_size": ("the step size", "alpha"), "stepsize": ("the step size", "alpha")}


def _checked(name: str, dataset: str | None, params: Mapping[str, Any]) -> None:
    """Refuse an unknown data set and check the caller's values (``CHECKS``) before the
    factory derives defaults from them. Unknown parameter names are left to ``build``,
    except the aliases above, which get pointed at the right name."""
    check_dataset(dataset)
    for key in params:
        if key in ALIASES:
            what, field = ALIASES[key]
            valid = ", ".join(f.name for f in fields(AdversarialTraining) if f.name != "name")
            raise ValueError(f"unknown parameter {key!r} for defense {name!r}: {what} is "
                             f"{field!r}. Valid parameters: {valid}")
    for key, value in params.items():
        if key in CHECKS:
            CHECKS[key](key, value)


def _eps(table: dict[str, float], dataset: str | None) -> float:
    return table.get(family(dataset), table["*"])


@register("fgsm-at")
def fgsm_at(dataset: str | None = None, **params) -> AdversarialTraining:
    """Goodfellow et al.: α·J(x) + (1 − α)·J(x + ε·sign(∇ₓJ)), α = ``clean_weight`` = 0.5 (the
    mix weight; ``alpha`` is the step size, ε unless given)."""
    _checked("fgsm-at", dataset, params)
    eps = params.get("eps", _eps(FGSM_EPS, dataset))
    defaults = dict(eps=eps, alpha=eps, steps=1, random_start=False, clean_weight=0.5)
    return build(AdversarialTraining, "fgsm-at", params, defaults)


@register("pgd-at")
def pgd_at(dataset: str | None = None, **params) -> AdversarialTraining:
    """Madry et al.: the loss at a PGD adversary with a random start (step 2.5·ε/steps unless
    the data set has the paper's value)."""
    _checked("pgd-at", dataset, params)
    defaults = per_dataset(PGD_DEFAULTS, dataset)
    defaults.update({k: params[k] for k in ("eps", "steps") if k in params})
    if "alpha" not in defaults or "eps" in params or "steps" in params:
        defaults["alpha"] = 2.5 * defaults["eps"] / defaults["steps"]
    defaults.update(random_start=True, clean_weight=0.0)
    return build(AdversarialTraining, "pgd-at", params, defaults)


@register("fast-at")
def fast_at(dataset: str | None = None, **params) -> AdversarialTraining:
    """Wong et al.: FGSM from a uniform random start, step 1.25·ε, projected to ball and box."""
    _checked("fast-at", dataset, params)
    eps = params.get("eps", _eps(FAST_EPS, dataset))
    defaults = dict(eps=eps, alpha=1.25 * eps, steps=1, random_start=True, clean_weight=0.0,
                    clip_start=False)
    return build(AdversarialTraining, "fast-at", params, defaults)
