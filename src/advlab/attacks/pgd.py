"""PGD: projected gradient ascent on the cross-entropy (or the logit margin), in an ℓ∞ or ℓ2 ball
(FGSM reuses it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from advlab.attacks.base import (
    Attack,
    Model,
    RunOutput,
    check_bool,
    check_int,
    check_nonneg,
    cross_entropy,
    expand_as,
    input_grad,
    is_adversarial,
    margin,
)
from advlab.attacks.registry import register
from advlab.attacks.rng import SampleRNG
from advlab.attacks.threat import ThreatModel, check_norm

DEFAULT_EPS = {"linf": 8 / 255, "l2": 1.0}
LOSSES = ("ce", "margin")


def attack_loss(logits: Tensor, label: Tensor, targeted: bool, loss: str = "ce") -> Tensor:
    """(B,) the loss PGD ascends: CE(label), or −CE(target) when targeted; with ``loss="margin"``
    the CW margin max_{j≠y} z_j − z_y (resp. z_t − max_{j≠t} z_j), which does not saturate
    when the softmax does (a very confident point has a CE gradient that underflows to 0)."""
    if loss == "margin":
        return -margin(logits, label, targeted)
    ce = cross_entropy(logits, label)
    return -ce if targeted else ce


def pgd_loop(model: Model, x: Tensor, label: Tensor, targeted: bool, threat: ThreatModel,
             alpha: float, steps: int, start: Tensor, early_stop: bool,
             loss: str = "ce") -> tuple[Tensor, Tensor]:
    """``steps`` projected ascent steps from ``start`` (B, ...); returns (adv, iterations (B,)).

    The loss ascended is ``attack_loss`` (CE or margin, see there). With ``early_stop``
    a sample stops at the first iterate found adversarial (read from the logits of the gradient
    step itself: no extra forward) and later steps run only on the samples still standing.
    """
    adv = start.detach().clone()
    iters = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    active: Tensor | None = None  # indices of samples still updated; None means all of them
    for _ in range(steps):
        xa = (adv if active is None else adv[active]).detach().requires_grad_(True)  # (A, ...)
        x0, lab = (x, label) if active is None else (x[active], label[active])
        logits = model(xa)  # (A, K)
        grad = input_grad(attack_loss(logits, lab, targeted, loss).sum(), xa)
        new = threat.step(x0, xa.detach(), grad, alpha)
        if not early_stop:
            adv, iters = new, iters + 1
            continue
        done = is_adversarial(logits.detach(), lab, targeted)  # (A,)
        new = torch.where(expand_as(done, new), xa.detach(), new)
        idx = torch.arange(x.shape[0], device=x.device) if active is None else active
        adv = adv.index_copy(0, idx, new)
        iters = iters.index_add(0, idx, (~done).long())
        active = idx[~done]
        if active.numel() == 0:
            break
    return adv, iters


@register("pgd")
@dataclass(frozen=True, kw_only=True)
class PGD(Attack):
    r"""PGD in 'Towards Deep Learning Models Resistant to Adversarial Attacks' (Madry et al.)
    [https://arxiv.org/abs/1706.06083]

    Distance measure: Linf or L2 (``norm``).

    Arguments:
        eps (float): radius of the ball. (Default: 8/255 for linf, 1.0 for l2)
        alpha (float): step size. (Default: 2.5 * eps / steps, as in Madry et al.)
        steps (int): number of gradient steps per restart. (Default: 40)
        norm (str): 'linf' or 'l2'. (Default: 'linf')
        random_start (bool): start from a uniform point of the ball. (Default: True)
        restarts (int): independent runs; per sample the strongest is kept: a success if any,
            else the highest loss. Samples already fooled are not restarted. (Default: 1)
        targeted (bool): minimize CE to ``target`` instead of maximizing CE to ``y``.
            (Default: False)
        early_stop (bool): stop updating a sample once it is adversarial; evaluations use True,
            False reproduces the peers exactly. (Default: False)
        loss (str): 'ce' (cross-entropy) or 'margin' (the CW logit margin, which does not
            saturate on very confident points; run both in an evaluation). (Default: 'ce')
        seed (int): seed of the random start. (Default: 0)

    Shape:
        - x: (B, C, H, W) or (B, D) in [0, 1]; y, target: (B,) int64; result.adv: like x.

    Examples::
        >>> attack = PGD(eps=0.3, alpha=0.01, steps=40)
        >>> result = attack(model, x, y)  # result.adv, result.success, result.linf
    """

    eps: float | None = None
    alpha: float | None = None
    steps: int = 40
    norm: str = "linf"
    random_start: bool = True
    restarts: int = 1
    targeted: bool = False
    early_stop: bool = False
    loss: str = "ce"

    def check_params(self) -> None:
        check_norm(self.norm)
        if self.loss not in LOSSES:
            raise ValueError(f"expected loss in {', '.join(map(repr, LOSSES))}, "
                             f"got {self.loss!r}")
        if self.eps is None:
            object.__setattr__(self, "eps", DEFAULT_EPS[self.norm])
        check_nonneg("eps", self.eps)
        check_int("steps", self.steps)
        check_int("restarts", self.restarts)
        if self.alpha is None:
            object.__setattr__(self, "alpha", 2.5 * self.eps / self.steps)
        check_nonneg("alpha", self.alpha)
        if self.alpha == 0 and self.eps > 0:
            raise ValueError(f"expected alpha > 0 with eps={self.eps:g} > 0 (a step size of 0 "
                             f"never moves from the start), got 0")
        for flag in ("random_start", "targeted", "early_stop"):
            check_bool(flag, getattr(self, flag))

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(self.norm, float(self.eps))

    def run(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
            rng: SampleRNG) -> RunOutput:
        label = target if self.targeted else y
        threat = self.threat

        def attempt(rows: Tensor | None, restart: int) -> tuple[Tensor, Tensor]:
            x0, lab = (x, label) if rows is None else (x[rows], label[rows])
            start = x0
            if self.random_start:  # restart r's start of a point: keyed by (seed, index, r)
                start = threat.random_start(x0, rng if rows is None else rng.take(rows),
                                            key=restart)
            return pgd_loop(model, x0, lab, self.targeted, threat, float(self.alpha),
                            self.steps, start, self.early_stop, self.loss)

        if self.restarts == 1:
            adv, iters = attempt(None, 0)
            return RunOutput(adv, iters)
        adv, iters = x.clone(), torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        best_loss = torch.full((x.shape[0],), -torch.inf, device=x.device)
        todo = torch.arange(x.shape[0], device=x.device)  # samples not fooled yet
        for restart in range(self.restarts):
            cand, used = attempt(todo, restart)
            with torch.no_grad():
                logits = model(cand)  # (T, K)
            loss = attack_loss(logits, label[todo], self.targeted, self.loss)
            fooled = is_adversarial(logits, label[todo], self.targeted)
            better = fooled | (loss > best_loss[todo])  # todo holds only unfooled samples
            keep = todo[better]
            adv[keep] = cand[better]
            best_loss[keep] = loss[better]
            iters[todo] += used
            todo = todo[~fooled]
            if todo.numel() == 0:
                break
        return RunOutput(adv, iters)
