"""Square Attack: score-based random search with square-shaped updates (no gradient)."""

from __future__ import annotations

import functools
import math
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
    check_positive,
    cross_entropy,
    expand_as,
    is_adversarial,
    margin,
)
from advlab.attacks.pgd import DEFAULT_EPS, LOSSES
from advlab.attacks.registry import register
from advlab.attacks.rng import SampleRNG
from advlab.attacks.threat import ThreatModel, check_norm, clip_box, lp_norm

# AutoAttack's p_selection: (last iteration of a phase out of 10,000, divisor of p_init)
P_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
              (6000, 128), (8000, 256))


_CHUNK = 64  # iterations whose random draws are made in one call


def p_selection(p_init: float, it: int, queries: int) -> float:
    """The fraction of pixels a square covers at iteration ``it`` of ``queries`` (the paper's
    piecewise-constant schedule, defined for 10,000 queries and rescaled to ``queries``)."""
    it = int(it / queries * 10000)
    return p_init / next((div for last, div in P_SCHEDULE if it <= last), 512)


@functools.cache
def eta(s: int) -> Tensor:
    """The paper's ℓ2 square (s, s): nested centred rectangles weighted 1/(k+1)², + on the top
    half and − on the bottom half, unit ℓ2 norm (cached: never modify it in place)."""
    def rectangles(a: int, b: int) -> Tensor:  # sum_{k >= max(|i-a//2|, |j-b//2|)} 1/(k+1)²
        n = max(a // 2, b // 2) + 1
        tail = (1.0 / torch.arange(1, n + 1, dtype=torch.float32) ** 2).flip(0).cumsum(0).flip(0)
        di = (torch.arange(a) - a // 2).abs()[:, None]
        dj = (torch.arange(b) - b // 2).abs()[None, :]
        return tail[torch.maximum(di, dj)]

    e = torch.cat([rectangles(s // 2, s), -rectangles(s - s // 2, s)])
    return e / e.norm()


def window(pos: Tensor, s: int, n: int) -> Tensor:
    """(A, n) bool: the s positions from ``pos`` (A,) on an axis of length n."""
    r = torch.arange(n, device=pos.device)
    return (r >= pos[:, None]) & (r < pos[:, None] + s)


def corner(u: Tensor, s: int, n: int) -> Tensor:
    """(A,) int64 uniform in [0, n − s] from uniforms ``u`` (A,) in (0, 1)."""
    return (u * (n - s + 1)).long().clamp(max=n - s)


def place(pattern: Tensor, flip: Tensor, top: Tensor, left: Tensor, h: int, w: int) -> Tensor:
    """(A, h, w): the (s, s) ``pattern`` (transposed where ``flip``) with its corner at
    (top, left), zero outside the square."""
    s = pattern.shape[0]
    pats = torch.stack([pattern, pattern.T])[flip.long()]  # (A, s, s)
    wh, ww = window(top, s, h), window(left, s, w)  # (A, h), (A, w)
    li = (torch.arange(h, device=top.device) - top[:, None]).clamp(0, s - 1)  # (A, h)
    lj = (torch.arange(w, device=top.device) - left[:, None]).clamp(0, s - 1)  # (A, w)
    a = torch.arange(pats.shape[0], device=top.device)[:, None, None]
    full = pats[a, li[:, :, None], lj[:, None, :]]  # (A, h, w)
    return full * (wh[:, :, None] & ww[:, None, :])


@register("square")
@dataclass(frozen=True, kw_only=True)
class Square(Attack):
    r"""Square Attack in 'Square Attack: a query-efficient black-box adversarial attack via
    random search' (Andriushchenko et al.) [https://arxiv.org/abs/1912.00049]

    Distance measure: Linf or L2 (``norm``). Score-based black box: uses only the logits, every
    forward runs under ``torch.no_grad()`` and no gradient is ever taken, so it works on models
    whose gradients are masked or absent (a useful check of a defense).

    Random search as in AutoAttack's version. ℓ∞: start from vertical stripes x ± ε (one sign
    per channel and column); each iteration sets one random square of side
    s = round(sqrt(p · H · W)) to x ± ε (one sign per channel; a square that would change
    nothing gets the opposite signs, where AutoAttack redraws it). ℓ2: start from a grid of the
    paper's weighted squares scaled to ‖δ‖₂ = ε; each iteration moves the perturbation's mass
    of a second random window into the first, plus a new weighted square, back on the sphere.
    The candidate is projected onto the ball ∩ [0, 1] and kept if the loss decreases (margin
    z_y − max_{j≠y} z_j, targeted max_{j≠t} z_j − z_t; or −CE / CE). p follows the paper's
    schedule from ``p_init`` (``p_selection``). Squares and signs are drawn per point, keyed
    by (seed, index, restart, iteration): a point's search does not depend on its batch.

    Queries are counted per point: the start is 1, each iteration 1 per point still standing;
    a fooled point stops. A run spends at most ``queries`` per point (the start + queries − 1
    iterations); ``iterations`` and ``info["queries"]`` give the total over restarts.

    Arguments:
        eps (float): radius of the ball. (Default: 8/255 for linf, 1.0 for l2)
        norm (str): 'linf' or 'l2'. (Default: 'linf')
        queries (int): query budget per point and restart. (Default: 5000)
        p_init (float): initial fraction of pixels in a square, in (0, 1]. (Default: 0.8)
        restarts (int): runs; each restart runs only the points not fooled yet, with new
            draws; per point the lowest loss is kept. (Default: 1)
        loss (str): 'margin' or 'ce'. (Default: 'margin')
        targeted (bool): reach ``target`` instead of leaving ``y``. (Default: False)
        seed (int): keys the random squares. (Default: 0)

    Shape:
        - x: (B, C, H, W) in [0, 1]; (B, D) is searched as (B, 1, 1, D), whose squares are
          single coordinates; y, target: (B,) int64; result.adv: like x.

    Examples::
        >>> result = Square(eps=0.1, queries=1000)(model, x, y)
        >>> result.info["queries"][result.success].median()  # queries per fooled point
    """

    gradient_free = True

    eps: float | None = None
    norm: str = "linf"
    queries: int = 5000
    p_init: float = 0.8
    restarts: int = 1
    loss: str = "margin"
    targeted: bool = False

    def check_params(self) -> None:
        check_norm(self.norm)
        if self.loss not in LOSSES:
            raise ValueError(f"expected loss in {', '.join(map(repr, LOSSES))}, "
                             f"got {self.loss!r}")
        if self.eps is None:
            object.__setattr__(self, "eps", DEFAULT_EPS[self.norm])
        check_nonneg("eps", self.eps)
        check_int("queries", self.queries)
        check_int("restarts", self.restarts)
        check_positive("p_init", self.p_init)
        if self.p_init > 1:
            raise ValueError(f"expected p_init in (0, 1], got {self.p_init!r}")
        check_bool("targeted", self.targeted)

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(self.norm, float(self.eps))

    def run(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
            rng: SampleRNG) -> RunOutput:
        if x.dim() not in (2, 4):
            raise ValueError(f"expected x of shape (B, C, H, W) or (B, D) for the square "
                             f"attack, got {tuple(x.shape)}")
        shape = x.shape
        x4 = x if x.dim() == 4 else x[:, None, None, :]  # (B, C, H, W)
        label = target if self.targeted else y
        queries = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        if self.eps == 0:
            return RunOutput(x.clone(), queries, {"queries": queries})

        def forward(z: Tensor) -> Tensor:
            return model(z.reshape(z.shape[0], *shape[1:]))

        adv = x4.clone()
        best_loss = x.new_full((x.shape[0],), torch.inf)
        todo = torch.arange(x.shape[0], device=x.device)  # points not fooled yet
        with torch.no_grad():
            for restart in range(self.restarts):
                cand, loss, fooled, used = self._search(forward, x4[todo], label[todo],
                                                        rng.take(todo), restart)
                better = fooled | (loss < best_loss[todo])  # todo holds unfooled points only
                adv[todo[better]] = cand[better]
                best_loss[todo[better]] = loss[better]
                queries[todo] += used
                todo = todo[~fooled]
                if todo.numel() == 0:
                    break
        return RunOutput(adv.reshape(shape), queries, {"queries": queries.clone()})

    def _scores(self, logits: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        """(loss to decrease (B,), fooled (B,)) of the logits."""
        if self.loss == "margin":
            loss = margin(logits, label, self.targeted)
        else:
            ce = cross_entropy(logits, label)
            loss = ce if self.targeted else -ce
        return loss, is_adversarial(logits, label, self.targeted)

    def _search(self, forward: Model, x: Tensor, label: Tensor, rng: SampleRNG,
                restart: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One run on (B, C, H, W) ``x``: (adv, loss, fooled, queries), each point stopping
        once fooled. Draw keys: restart · queries + i, i = 0 for the start."""
        key0 = restart * self.queries
        best = self._start(x, rng, key0)
        loss, fooled = self._scores(forward(best), label)
        used = torch.ones(x.shape[0], dtype=torch.int64, device=x.device)
        # The points still searching, kept compacted (their rows of x, best, loss, label, draws
        # and ℓ∞ box) and written back only when some are fooled: an iteration then costs the
        # forward and a few elementwise passes, no gather or scatter.
        idx = (~fooled).nonzero().squeeze(1)
        x_a, best_a, loss_a, label_a, rng_a = x[idx], best[idx], loss[idx], label[idx], \
            rng.take(idx)
        box = self._box(x_a)
        per_draw = (2 if self.norm == "linf" else 5) + x.shape[1]
        draws = x.new_empty(0)
        for i in range(1, self.queries):
            if idx.numel() == 0:
                break
            j, t = divmod(i - 1, _CHUNK)
            if t == 0:  # one hash call for the next _CHUNK iterations of every point
                draws = rng_a.rand((idx.numel(), _CHUNK, per_draw), key0 + 1 + j)
            p = p_selection(self.p_init, i - 1, self.queries)
            cand = self._candidate(x_a, best_a, p, draws[:, t], box)
            loss_c, fooled_c = self._scores(forward(cand), label_a)
            accept = fooled_c | (loss_c < loss_a)
            rows = accept.nonzero().squeeze(1)  # few after the first iterations: copy those
            best_a.index_copy_(0, rows, cand.index_select(0, rows))
            loss_a = torch.where(accept, loss_c, loss_a)
            if fooled_c.any():  # write the fooled points back, drop them from the search
                gone = idx[fooled_c]
                best[gone], loss[gone], fooled[gone], used[gone] = \
                    best_a[fooled_c], loss_a[fooled_c], True, i + 1
                keep = ~fooled_c
                idx, x_a, best_a, loss_a, label_a, draws = (
                    idx[keep], x_a[keep], best_a[keep], loss_a[keep], label_a[keep],
                    draws[keep])
                box, rng_a = tuple(b[keep] for b in box), rng_a.take(keep)
        best[idx], loss[idx], used[idx] = best_a, loss_a, max(self.queries, 1)
        return best, loss, fooled, used

    def _box(self, x: Tensor) -> tuple[Tensor, ...]:
        """ℓ∞: (x − ε, x + ε) clipped to [0, 1], the two values a square's pixels take;
        ℓ2: ()."""
        if self.norm != "linf":
            return ()
        eps = float(self.eps)
        return clip_box(x - eps), clip_box(x + eps)

    def _start(self, x: Tensor, rng: SampleRNG, key: int) -> Tensor:
        b, c, h, w = x.shape
        eps = float(self.eps)
        if self.norm == "linf":  # vertical stripes: one sign per channel and column
            u = rng.rand((b, c, 1, w), key)
            return clip_box(x + eps * torch.where(u < 0.5, -1.0, 1.0))
        s = max(min(h, w) // 5, 1)  # a centred grid of weighted squares of side s
        nh, nw = h // s, w // s
        u = rng.rand((b, nh * nw * (c + 1)), key)
        sign = torch.where(u[:, : nh * nw * c] < 0.5, -1.0, 1.0).view(b, c, nh, nw, 1, 1)
        flip = (u[:, nh * nw * c:] < 0.5).view(b, nh, nw)
        tiles = torch.stack([eta(s), eta(s).T]).to(x.device)[flip.long()]  # (B, nh, nw, s, s)
        grid = (tiles[:, None] * sign).permute(0, 1, 2, 4, 3, 5).reshape(b, c, nh * s, nw * s)
        delta = torch.zeros_like(x)
        top, left = (h - nh * s) // 2, (w - nw * s) // 2
        delta[:, :, top:top + nh * s, left:left + nw * s] = grid
        return clip_box(x + delta * expand_as(eps / lp_norm(delta, "l2").clamp_min(1e-12), x))

    def _candidate(self, x: Tensor, best: Tensor, p: float, u: Tensor,
                   box: tuple[Tensor, ...]) -> Tensor:
        """The next candidate of each point from its uniforms ``u`` (A, 2 + C) for linf,
        (A, 5 + C) for l2 (drawn per point and iteration: ``_search``); ``box``: ``_box(x)``."""
        a, c, h, w = x.shape
        eps = float(self.eps)
        u = u.to(x.dtype)
        if self.norm == "linf":  # best with one s × s square set to x ± ε (clipped)
            s = min(max(round(math.sqrt(p * h * w)), 1), h, w)
            up = (u[:, 2:] >= 0.5)[:, :, None]  # (A, C, 1): the square's sign per channel
            top, left = corner(u[:, 0], s, h), corner(u[:, 1], s, w)
            r = torch.arange(s, device=x.device)
            pix = ((top[:, None, None] + r[:, None]) * w + left[:, None, None] + r)  # (A, s, s)
            pix = pix.reshape(a, 1, s * s).expand(a, c, s * s)  # flat pixels of the square
            lo, hi = (b.reshape(a, c, h * w).gather(2, pix) for b in box)  # (A, C, s²)
            flat = best.reshape(a, c, h * w)
            val = torch.where(up, hi, lo)
            # a square that would change nothing (already at those values: frequent once the
            # squares are a pixel wide) is redrawn, as in AutoAttack: its signs flipped
            same = (val == flat.gather(2, pix)).flatten(1).all(dim=1)[:, None, None]
            val = torch.where(same, torch.where(up, lo, hi), val)
            # a copy and a scatter of the square: no pass over the image but the copy
            return flat.clone().scatter_(2, pix, val).view_as(best)
        s = max(round(math.sqrt(p * h * w)), 3)
        s = min(s + 1 if s % 2 == 0 else s, h, w)
        sign = torch.where(u[:, 5:] < 0.5, -1.0, 1.0)[:, :, None, None]  # (A, C, 1, 1)
        top, left = corner(u[:, 0], s, h), corner(u[:, 1], s, w)
        win1 = (window(top, s, h)[:, :, None] & window(left, s, w)[:, None, :])[:, None]
        win2 = (window(corner(u[:, 2], s, h), s, h)[:, :, None]
                & window(corner(u[:, 3], s, w), s, w)[:, None, :])[:, None]  # (A, 1, H, W)
        delta = best - x
        norm_win1 = (delta * win1).square().sum(dim=(2, 3), keepdim=True).sqrt()  # (A, C, 1, 1)
        norm_all = expand_as(lp_norm(delta, "l2"), x)
        norm_union = expand_as(lp_norm(delta * (win1 | win2), "l2"), x)
        shape_ = place(eta(s).to(x.device), u[:, 4] < 0.5, top, left, h, w)[:, None]
        new = shape_ * sign + delta * win1 / (norm_win1 + 1e-12)
        new_norm = new.square().sum(dim=(2, 3), keepdim=True).sqrt()
        size = ((eps ** 2 - norm_all ** 2).clamp_min(0) / c + norm_union ** 2).sqrt()
        new = new / (new_norm + 1e-12) * size
        delta = torch.where(win1, new, torch.where(win2, 0.0, delta))
        return clip_box(x + delta * expand_as(eps / lp_norm(delta, "l2").clamp_min(1e-12), x))
