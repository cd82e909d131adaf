"""APGD and APGD-T: Auto-PGD, AutoAttack's PGD without a step size to tune (Croce & Hein 2020).

One run (``apgd_run``) is Algorithm 1 of the paper, batched with per-point schedules held as
tensors: step size 2ε, momentum 0.75 from the second step, and at each checkpoint of the
schedule the points that stalled halve their step and restart from their best point. The
attacks run it several times (restarts, target classes), each time on the points not fooled yet.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

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
    cross_entropy,
    expand_as,
    input_grad,
    is_adversarial,
    top_other_classes,
)
from advlab.attacks.pgd import DEFAULT_EPS
from advlab.attacks.registry import register
from advlab.attacks.rng import SampleRNG
from advlab.attacks.threat import (
    BOX,
    ThreatModel,
    check_norm,
    clip_box,
    lp_norm,
    normalize_grad,
)

LOSSES = ("ce", "dlr")
MOMENTUM = 0.75  # α of the paper: weight of the new step against the previous move


def checkpoints(steps: int) -> list[int]:
    """The step counts w_j after which APGD checks its step size, for a run of ``steps``.

    The paper's p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), in the
    integer steps of the reference code (the gaps shrink by ⌊0.03 N⌋ down to ⌊0.06 N⌋, each at
    least 1): ⌈p_j N⌉ for N = 100, i.e. 22, 41, 57, 70, 80, 87, 93, 99.
    """
    gap, shrink, least = (max(int(f * steps), 1) for f in (0.22, 0.03, 0.06))
    marks, w = [], gap
    while w <= steps:
        marks.append(w)
        gap = max(gap - shrink, least)
        w += gap
    return marks


def dlr_loss(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """(B,) the Difference of Logits Ratio, with z sorted as z_π1 >= z_π2 >= ...:

    untargeted −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3), targeted −(z_y − z_t) / (z_π1 −
    (z_π3 + z_π4) / 2), each denominator + 1e-12. Invariant to shifting and scaling the logits.
    With fewer classes a missing rank takes the lowest logit; with 2 classes, where that
    denominator would be the margin itself, it is 1 (the loss is the logit margin).
    """
    k = logits.shape[1]
    top, idx = logits.topk(min(k, 4), dim=1)  # (B, m) descending

    def z(rank: int) -> Tensor:
        return top[:, min(rank, top.shape[1]) - 1]

    own = logits.gather(1, y[:, None]).squeeze(1)
    if target is None:
        num = own - torch.where(idx[:, 0] == y, top[:, 1], top[:, 0])
        den = z(1) - z(3)
    else:
        num = own - logits.gather(1, target[:, None]).squeeze(1)
        den = z(1) - (z(3) + z(4)) / 2
    if k == 2:
        den = torch.ones_like(den)
    return -num / (den + 1e-12)


def apgd_loss(logits: Tensor, y: Tensor, target: Tensor | None, loss: str) -> Tensor:
    """(B,) the loss APGD ascends: CE(y) or DLR; with a target −CE(target) or targeted DLR."""
    if loss == "dlr":
        return dlr_loss(logits, y, target)
    return cross_entropy(logits, y) if target is None else -cross_entropy(logits, target)


def apgd_start(x: Tensor, threat: ThreatModel, rng: SampleRNG, key: int) -> Tensor:
    """AutoAttack's random start, drawn per point: ℓ∞ x + ε·t/‖t‖∞ with t uniform in
    [−1, 1]^D, ℓ2 x + ε·g/‖g‖₂ with g normal (on the sphere); clipped to the box."""
    if threat.norm == "linf":
        t = 2 * rng.rand(tuple(x.shape), key, dtype=x.dtype) - 1
        delta = t / expand_as(lp_norm(t, "linf").clamp_min(1e-12), t)
    else:
        delta = normalize_grad(rng.randn(tuple(x.shape), key, dtype=x.dtype), "l2")
    return clip_box(x + threat.eps * delta)


@dataclass
class _State:
    """One run's per-point state over the A points still standing ((A, ...) or (A,))."""

    rows: Tensor  # positions in the run's batch
    x0: Tensor
    y: Tensor
    target: Tensor | None
    lo: Tensor | None  # ℓ∞: the box ∩ ball as per-pixel bounds
    hi: Tensor | None
    x: Tensor  # the current iterate x_k
    prev: Tensor  # x_{k−1}
    dir: Tensor  # the steepest-ascent direction at x_k: sign(∇), or ∇ (ℓ2, scaled by dscale)
    x_best: Tensor  # the highest-loss point so far, its direction and loss
    dir_best: Tensor
    loss_best: Tensor
    loss_prev: Tensor  # loss at x_k
    loss_check: Tensor  # best loss at the last checkpoint
    eta: Tensor  # step size
    ups: Tensor  # increases of the loss since the last checkpoint
    cut: Tensor  # the step was halved at the last checkpoint
    dscale: Tensor | None = None  # ℓ2: 1/‖∇‖₂ per point, applied in the step (no pass over ∇)
    dscale_best: Tensor | None = None

    def take(self, keep: Tensor) -> _State:
        return replace(self, **{f.name: getattr(self, f.name).index_select(0, keep)
                                for f in fields(self) if getattr(self, f.name) is not None})


def _evaluate(model: Model, x: Tensor, s: _State, loss: str, norm: str,
              eot_iter: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """(logits, loss, ascent direction, its per-point scale) at ``x``: one forward and backward
    pass, or with ``eot_iter`` > 1 the means over that many (AutoAttack's EOT for randomized
    models). ℓ∞: sign(∇) and None; ℓ2: ∇ itself and 1/‖∇‖₂ (A,), which the step applies, so the
    gradient is not rescaled in a pass of its own."""
    logits = value = grad = None
    for _ in range(eot_iter):
        xg = x.detach().requires_grad_(True)
        out = model(xg)
        val = apgd_loss(out, s.y, s.target, loss)
        g = input_grad(val.sum(), xg)
        if grad is None:
            logits, value, grad = out.detach(), val.detach(), g
        else:  # sums: the direction does not depend on the scale of the gradient
            logits, value, grad = logits + out.detach(), value + val.detach(), grad.add_(g)
    if eot_iter > 1:
        logits, value = logits / eot_iter, value / eot_iter
    if norm == "linf":
        return logits, value, grad.sign_(), None
    return logits, value, grad, lp_norm(grad, "l2").clamp_min_(1e-12).reciprocal_()


def _project_(z: Tensor, s: _State, threat: ThreatModel) -> Tensor:
    """``z`` projected in place onto the ball around ``s.x0`` intersected with the box."""
    if threat.norm == "linf":
        return z.clamp_(s.lo, s.hi)
    z = z.sub_(s.x0)
    scale = (threat.eps / lp_norm(z, "l2").clamp_min(1e-12)).clamp_(max=1.0)
    return torch.addcmul(s.x0, z, expand_as(scale, z), out=z).clamp_(*BOX)


def apgd_run(model: Model, x0: Tensor, y: Tensor, target: Tensor | None, start: Tensor, *,
             threat: ThreatModel, loss: str, steps: int, rho: float, eot_iter: int,
             hit_target: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One APGD run from ``start`` (N, ...): (adv, fooled (N,), loss (N,), steps used (N,)).

    ``adv`` is the first adversarial iterate of a point (success: prediction ``target`` with
    ``hit_target``, else not ``y``), else its highest-loss iterate. A point stops at its first
    success and the batch shrinks. Per step: one forward and backward pass (``eot_iter`` with
    EOT), in-place updates of preallocated buffers (ℓ∞: six passes over the batch for the
    sign, the step, the momentum and two projections; ℓ2: the gradient's norm, the step with
    η/‖∇‖₂, the momentum and two projections of four passes each) and one host sync (two (A,)
    masks: the points fooled, the points whose best loss rose); the checkpoints need no sync.
    """
    n, norm = x0.shape[0], threat.norm
    adv, best = start.clone(), x0.new_full((n,), -torch.inf)
    fooled = torch.zeros(n, dtype=torch.bool, device=x0.device)
    used = torch.full((n,), steps, dtype=torch.int64, device=x0.device)
    lo = clip_box(x0 - threat.eps) if norm == "linf" else None
    hi = clip_box(x0 + threat.eps) if norm == "linf" else None
    s = _State(rows=torch.arange(n, device=x0.device), x0=x0, y=y, target=target, lo=lo, hi=hi,
               x=start.clone(), prev=torch.empty_like(start), dir=start, x_best=start.clone(),
               dir_best=start, loss_best=best, loss_prev=best, loss_check=best,
               eta=x0.new_full((n,), 2 * threat.eps), ups=torch.zeros_like(used),
               cut=torch.ones_like(fooled))  # no "unchanged step" test at the first checkpoint
    logits, value, s.dir, s.dscale = _evaluate(model, s.x, s, loss, norm, eot_iter)
    s.dir_best, s.loss_best, s.loss_prev, s.loss_check = s.dir.clone(), value, value, value
    s.dscale_best = None if s.dscale is None else s.dscale.clone()

    def retire(s: _State, ok: Tensor, value: Tensor, step: int) -> _State:
        """Record the points fooled at ``s.x`` (``ok``: a host bool mask) and drop them."""
        if not ok.any():
            return s
        hit = ok.nonzero().squeeze(1).to(s.rows.device)
        rows = s.rows.index_select(0, hit)
        adv[rows], best[rows] = s.x.index_select(0, hit), value.index_select(0, hit)
        fooled[rows], used[rows] = True, step
        return s.take((~ok).nonzero().squeeze(1).to(s.rows.device))

    def success(logits: Tensor) -> Tensor:
        return is_adversarial(logits, s.target if hit_target else s.y, hit_target)

    s = retire(s, success(logits).cpu(), value, 0)
    buf = torch.empty_like(s.x)  # the third of the rotating iterate buffers
    marks, last = set(checkpoints(steps)), 0
    for i in range(steps):
        if s.rows.numel() == 0:
            break
        if buf.shape != s.x.shape:  # the batch shrank
            buf = torch.empty_like(s.x)
        rate = s.eta if s.dscale is None else s.eta * s.dscale  # (A,): ℓ2 η/‖∇‖₂
        z = _project_(torch.addcmul(s.x, expand_as(rate, s.x), s.dir, out=buf), s, threat)
        if i > 0:  # x_k + α(z − x_k) + (1 − α)(x_k − x_{k−1}) = lerp(2x_k − x_{k−1}, z, α)
            z, buf = _project_(s.prev.lerp_(s.x, 2.0).lerp_(z, MOMENTUM), s, threat), z
        else:
            buf = s.prev
        s.prev, s.x = s.x, z
        logits, value, s.dir, s.dscale = _evaluate(model, s.x, s, loss, norm, eot_iter)
        s.ups += value > s.loss_prev
        s.loss_prev = value
        better = value > s.loss_best
        s.loss_best = torch.where(better, value, s.loss_best)
        # the step's one host sync: which points are fooled, which improved (3-13% of them
        # per step in practice: their rows alone are copied to the best point)
        ok, better = torch.stack((success(logits), better)).cpu()
        if better.any():
            up = better.nonzero().squeeze(1).to(s.x.device)
            s.x_best.index_copy_(0, up, s.x.index_select(0, up))
            s.dir_best.index_copy_(0, up, s.dir.index_select(0, up))
            if s.dscale is not None:
                s.dscale_best.index_copy_(0, up, s.dscale.index_select(0, up))
        s = retire(s, ok, value, i + 1)
        if i + 1 in marks:  # halve a stalled step and go back to the best point
            k, last = i + 1 - last, i + 1
            cut = (s.ups <= rho * k) | (~s.cut & (s.loss_check >= s.loss_best))
            s.eta = torch.where(cut, s.eta / 2, s.eta)
            w = expand_as(cut.to(s.x.dtype), s.x)
            s.x.lerp_(s.x_best, w)  # a 0/1 weight: an exact select in one pass, no sync
            s.dir.lerp_(s.dir_best, w)
            if s.dscale is not None:
                s.dscale = torch.where(cut, s.dscale_best, s.dscale)
            s.cut, s.loss_check, s.ups = cut, s.loss_best, torch.zeros_like(s.ups)
    adv[s.rows], best[s.rows] = s.x_best, s.loss_best
    return adv, fooled, best, used


@dataclass(frozen=True, kw_only=True)
class _APGDBase(Attack):
    """The settings and the restart loop shared by APGD and APGD-T."""

    eps: float | None = None
    norm: str = "linf"
    steps: int = 100
    restarts: int = 1
    rho: float = 0.75
    eot_iter: int = 1

    def check_params(self) -> None:
        check_norm(self.norm)
        if self.eps is None:
            object.__setattr__(self, "eps", DEFAULT_EPS[self.norm])
        check_nonneg("eps", self.eps)
        check_int("steps", self.steps)
        check_int("restarts", self.restarts)
        check_int("eot_iter", self.eot_iter)
        check_nonneg("rho", self.rho)
        if self.rho > 1:
            raise ValueError(f"expected rho in [0, 1] (a fraction of steps), got {self.rho!r}")

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(self.norm, float(self.eps))

    def _runs(self, model: Model, x: Tensor, y: Tensor, done: Tensor,
              runs: list[tuple[int, Tensor | None]], loss: str, hit_target: bool,
              rng: SampleRNG) -> RunOutput:
        """Run APGD once per (key, target) of ``runs`` on the points not fooled yet (``done``:
        fooled at x, returned unchanged). A point keeps its first success, else its
        highest-loss point over the runs."""
        adv, best = x.clone(), x.new_full((x.shape[0],), -torch.inf)
        steps = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        passes = torch.zeros_like(steps)
        for key, target in runs:
            todo = (~done).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            x0 = x[todo]
            start = apgd_start(x0, self.threat, rng.take(todo), key)
            cand, ok, value, used = apgd_run(
                model, x0, y[todo], None if target is None else target[todo], start,
                threat=self.threat, loss=loss, steps=self.steps, rho=float(self.rho),
                eot_iter=self.eot_iter, hit_target=hit_target)
            better = ok | (value > best[todo])
            adv[todo[better]], best[todo[better]] = cand[better], value[better]
            done[todo[ok]] = True
            steps[todo] += used
            passes[todo] += (used + 1) * self.eot_iter
        return RunOutput(adv, steps, info={"gradients": passes})


def _clean_logits(model: Model, x: Tensor) -> Tensor:
    """The logits at x (B, K), checking that they depend differentiably on x (the check runs
    even when every point is already fooled and no gradient is taken)."""
    logits = model(x.detach().requires_grad_(True))
    check_differentiable(logits)
    return logits.detach()


@register("apgd")
@dataclass(frozen=True, kw_only=True)
class APGD(_APGDBase):
    r"""APGD in 'Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks' (Croce & Hein) [https://arxiv.org/abs/2003.01690]

    Distance measure: Linf or L2 (``norm``).

    PGD whose step size adapts per point: 2ε at first, halved at the checkpoints (``checkpoints``)
    where the loss rose in at most a fraction ``rho`` of the steps since the last one, or where
    neither the step nor the best loss changed since the last one; the point then restarts from
    its highest-loss iterate. Momentum 0.75 from the second step. A point returns its first
    adversarial iterate, else its highest-loss one; restarts run on the points not fooled yet.
    Points already adversarial at x are returned unchanged. Each run costs ``steps`` + 1
    forward-backward passes (x ``eot_iter``; ``result.info['gradients']`` counts them per point).

    As AutoAttack's code (and torchattacks'), where the paper's text differs: "at most" a
    fraction ``rho`` (the paper: fewer than), integer checkpoints, and no "unchanged" test at
    the first checkpoint. Unlike it: the first step's increase is counted against the start's
    loss (the paper's f(x^(0)); the code compares with 0), a point stops at its first success
    (the code iterates on and returns its last adversarial iterate: the same robust accuracy),
    a point never fooled returns its highest-loss point (the code: x), and EOT averages the
    loss and logits too (the code keeps the last pass's).

    Arguments:
        eps (float): radius of the ball. (Default: 8/255 for linf, 1.0 for l2)
        norm (str): 'linf' or 'l2'. (Default: 'linf')
        steps (int): gradient steps per run. (Default: 100)
        restarts (int): runs from new random starts (keyed by the restart). (Default: 1)
        loss (str): 'ce' (cross-entropy) or 'dlr' (Difference of Logits Ratio, ``dlr_loss``);
            targeted: −CE(target) or the targeted DLR. (Default: 'ce')
        rho (float): fraction of loss increases below which a checkpoint halves the step.
            (Default: 0.75)
        targeted (bool): reach ``target`` instead of leaving ``y``. (Default: False)
        eot_iter (int): gradients averaged per step, for randomized models. (Default: 1)
        seed (int): seed of the random starts. (Default: 0)

    Shape:
        - x: (B, C, H, W) or (B, D) in [0, 1]; y, target: (B,) int64; result.adv: like x.

    Examples::
        >>> result = APGD(eps=8 / 255, loss="dlr")(model, x, y)
        >>> robust_accuracy = 1 - result.success.float().mean()
    """

    loss: str = "ce"
    targeted: bool = False

    def check_params(self) -> None:
        super().check_params()
        if self.loss not in LOSSES:
            raise ValueError(f"expected loss in {', '.join(map(repr, LOSSES))}, "
                             f"got {self.loss!r}")
        check_bool("targeted", self.targeted)

    def run(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
            rng: SampleRNG) -> RunOutput:
        label = target if self.targeted else y
        done = is_adversarial(_clean_logits(model, x), label, self.targeted)
        runs = [(r, target) for r in range(self.restarts)]
        return self._runs(model, x, y, done, runs, self.loss, self.targeted, rng)


@register("apgd-t")
@dataclass(frozen=True, kw_only=True)
class APGDT(_APGDBase):
    r"""APGD-T of AutoAttack, in 'Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks' (Croce & Hein) [https://arxiv.org/abs/2003.01690]

    Distance measure: Linf or L2 (``norm``). Untargeted: success is any wrong prediction.

    APGD on the targeted DLR loss against each of the ``n_target_classes`` classes other than
    y with the highest clean logits (at most K − 1), in turn from the most likely, each time
    (and each restart) on the points not fooled yet; a point keeps its first success.

    Arguments:
        eps (float): radius of the ball. (Default: 8/255 for linf, 1.0 for l2)
        norm (str): 'linf' or 'l2'. (Default: 'linf')
        steps (int): gradient steps per run. (Default: 100)
        restarts (int): runs per target class. (Default: 1)
        n_target_classes (int): target classes tried. (Default: 9)
        rho (float): see ``APGD``. (Default: 0.75)
        eot_iter (int): gradients averaged per step. (Default: 1)
        seed (int): seed of the random starts. (Default: 0)

    Shape:
        - x: (B, C, H, W) or (B, D) in [0, 1]; y: (B,) int64; result.adv: like x.

    Examples::
        >>> result = APGDT(eps=8 / 255, n_target_classes=9)(model, x, y)
    """

    n_target_classes: int = 9

    def check_params(self) -> None:
        super().check_params()
        check_int("n_target_classes", self.n_target_classes)

    def run(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
            rng: SampleRNG) -> RunOutput:
        clean = _clean_logits(model, x)  # (B, K)
        targets = top_other_classes(clean, y, self.n_target_classes)  # (B, k)
        k = targets.shape[1]
        runs = [(j * self.restarts + r, targets[:, j]) for j in range(k)
                for r in range(self.restarts)]
        return self._runs(model, x, y, clean.argmax(dim=1) != y, runs, "dlr", False, rng)
