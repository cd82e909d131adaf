"""HopSkipJump: a decision-based minimal-perturbation attack (predicted labels only)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from advlab.attacks.base import (
    Attack,
    Model,
    RunOutput,
    check_bool,
    check_int,
    check_positive,
    expand_as,
    is_adversarial,
)
from advlab.attacks.registry import register
from advlab.attacks.rng import SampleRNG
from advlab.attacks.threat import check_norm, clip_box, lp_norm

INIT_TRIES = 100  # uniform-noise draws per point to find an adversarial start
INIT_TOL = 1e-3  # tolerance of the first bisection between x and that noise (the paper's)
CHUNK = 64  # gradient-estimate evaluations per forward pass (the draw keys depend on it)
MAX_ELEMENTS = 2**23  # floats per noise block: the points of a chunk are split to stay below
MAX_HALVINGS = 30  # geometric step-size search: tries per iteration

Decide = Callable[[Tensor, Tensor], Tensor]  # (inputs (A, ...), labels (A,)) -> adversarial (A,)


@register("hopskipjump")
@dataclass(frozen=True, kw_only=True)
class HopSkipJump(Attack):
    r"""HopSkipJumpAttack in 'HopSkipJumpAttack: A Query-Efficient Decision-Based Attack'
    (Chen, Jordan & Wainwright) [https://arxiv.org/abs/1904.02144]

    Distance measure: L2 or Linf (``norm``). A minimal-perturbation attack that sees only the
    predicted label (the argmax of the model's output, never the scores nor a gradient).

    Start: one query on x (a point already misclassified is returned as is), then uniform noise
    drawn until it is adversarial (at most 100 draws; a point without one is returned
    unchanged, a failure), bisected toward x to the boundary. Iteration t = 0, 1, ...: estimate
    the boundary's normal at the current boundary point by Monte Carlo with
    n_t = min(init_evals · sqrt(t + 1), max_evals) label queries at distance δ_t (0.1, then
    (γ/d) · dist); step along it (its sign for ℓ∞) by dist / sqrt(t + 1), halved until
    adversarial (geometric search); bisect back to the boundary (to θ = γ / d^1.5 of the ℓ2
    blend, or θ·dist of the ℓ∞ radius with θ = γ / d²). Batched over points, each with its
    own budget: a point starts an iteration only if it has n_t + 1 queries left, and stops
    querying at ``max_queries`` (a cut search keeps the last adversarial point), so more
    queries never give a larger distance. The smallest-distance boundary point seen is
    returned. Noise is drawn per point, keyed by (seed, index, draw): the result of a point
    does not depend on its batch.

    ``iterations`` and ``info["queries"]`` are the label queries per point (<= max_queries);
    ``info["steps"]`` the iterations run, ``info["started"]`` whether an adversarial start was
    found.

    Arguments:
        norm (str): 'l2' or 'linf', the distance minimized. (Default: 'l2')
        max_queries (int): query budget per point. (Default: 5000)
        steps (int | None): at most this many iterations; None: until the budget. (Default: None)
        init_evals (int): gradient-estimate queries at t = 0. (Default: 100)
        max_evals (int): cap on the gradient-estimate queries. (Default: 10000)
        gamma (float): bisection threshold factor γ. (Default: 1.0)
        targeted (bool): reach ``target`` instead of leaving ``y`` (starts from noise
            classified as the target, so fewer points may start). (Default: False)
        seed (int): keys the noise. (Default: 0)

    Shape:
        - x: (B, C, H, W) or (B, D) in [0, 1]; y, target: (B,) int64; result.adv: like x.

    Examples::
        >>> result = HopSkipJump(max_queries=2000)(model, x, y)
        >>> result.l2[result.success].median(), result.info["queries"].max()
    """

    minimal = True
    gradient_free = True

    norm: str = "l2"
    max_queries: int = 5000
    steps: int | None = None
    init_evals: int = 100
    max_evals: int = 10000
    gamma: float = 1.0
    targeted: bool = False

    def check_params(self) -> None:
        check_norm(self.norm)
        check_int("max_queries", self.max_queries)
        if self.steps is not None:
            check_int("steps", self.steps)
        check_int("init_evals", self.init_evals)
        check_int("max_evals", self.max_evals)
        if self.max_evals < self.init_evals:
            raise ValueError(f"expected max_evals >= init_evals = {self.init_evals}, "
                             f"got {self.max_evals}")
        check_positive("gamma", self.gamma)
        check_bool("targeted", self.targeted)

    def run(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
            rng: SampleRNG) -> RunOutput:
        label = target if self.targeted else y
        b, d = x.shape[0], math.prod(x.shape[1:])
        budget = self.max_queries

        def decide(z: Tensor, lab: Tensor) -> Tensor:  # the only use of the model
            return is_adversarial(model(z), lab, self.targeted)

        with torch.no_grad():
            queries = torch.ones(b, dtype=torch.int64, device=x.device)
            clean = decide(x, label)  # misclassified already: distance 0
            adv, started = self._start(decide, x, label, rng, queries, clean)
            best = adv.clone()
            dist = lp_norm(adv - x, self.norm)
            best_dist = dist.clone()
            steps = torch.zeros(b, dtype=torch.int64, device=x.device)
            alive = started & ~clean
            t = 0
            while self.steps is None or t < self.steps:
                n = int(min(self.init_evals * math.sqrt(t + 1), self.max_evals))
                alive &= queries + n + 1 <= budget
                idx = alive.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                x_a, adv_a, lab = x[idx], adv[idx], label[idx]
                delta = (torch.full_like(dist[idx], 0.1) if t == 0
                         else self.gamma / d * dist[idx])
                grad = self._gradient(decide, adv_a, lab, delta, n, rng.take(idx), t)
                queries[idx] += n
                update = grad.sign() if self.norm == "linf" else grad
                moved, prop = self._step(decide, adv_a, lab, update,
                                         dist[idx] / math.sqrt(t + 1), queries, idx)
                moved = moved.nonzero().squeeze(1)  # indices: one host sync for the four uses
                rows = idx[moved]
                new, _ = self._bisect(decide, x_a[moved], prop[moved], lab[moved], self.norm,
                                      queries, rows)
                adv[rows] = new
                dist[rows] = lp_norm(new - x_a[moved], self.norm)
                closer = dist[rows] < best_dist[rows]  # a select, no host sync
                best[rows] = torch.where(expand_as(closer, new), new, best[rows])
                best_dist[rows] = torch.where(closer, dist[rows], best_dist[rows])
                steps[idx] += 1
                t += 1
        info = {"queries": queries.clone(), "steps": steps, "started": started | clean}
        return RunOutput(best, queries, info)

    def _theta(self, d: int, norm: str) -> float:
        return self.gamma / (d * math.sqrt(d)) if norm == "l2" else self.gamma / d ** 2

    def _start(self, decide: Decide, x: Tensor, label: Tensor, rng: SampleRNG,
               queries: Tensor, clean: Tensor) -> tuple[Tensor, Tensor]:
        """Uniform noise until adversarial, then bisected toward x twice: the blend to
        ``INIT_TOL``, then the norm's own bisection. Returns (start, found) (B, ...), (B,)."""
        start, found = x.clone(), clean.clone()
        for k in range(INIT_TRIES):
            idx = (~found & (queries < self.max_queries)).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            noise = rng.take(idx).rand(tuple(x[idx].shape), key=k, dtype=x.dtype)
            ok = decide(noise, label[idx])
            queries[idx] += 1
            # no host sync: a select (found[idx] is False, so it becomes ok)
            start[idx] = torch.where(expand_as(ok, noise), noise, start[idx])
            found[idx] = ok
        rows = (found & ~clean).nonzero().squeeze(1)
        for mode in ("blend", self.norm):
            start[rows], _ = self._bisect(decide, x[rows], start[rows], label[rows], mode,
                                          queries, rows)
        return start, found

    def _bisect(self, decide: Decide, x: Tensor, adv: Tensor, label: Tensor, mode: str,
                queries: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Bisect between x (not adversarial) and ``adv`` (adversarial), (A, ...), along the
        ℓ2 blend (1 − a)·x + a·adv ('l2', 'blend') or the ℓ∞ radius r of x + clip(adv − x, ±r)
        ('linf'), while the interval exceeds the threshold and the point (``rows`` of the
        batch's ``queries``, updated) has budget. Returns (the adversarial end, its a or r)."""
        if mode == "linf":
            hi = lp_norm(adv - x, "linf")
            thr = hi * self._theta(math.prod(x.shape[1:]), "linf")
        else:
            hi = x.new_ones(x.shape[0])
            thr = torch.full_like(hi, INIT_TOL if mode == "blend"
                                  else self._theta(math.prod(x.shape[1:]), "l2"))
        lo = torch.zeros_like(hi)

        def project(x_: Tensor, adv_: Tensor, v: Tensor) -> Tensor:
            if mode == "linf":
                r = expand_as(v, x_)
                return x_ + torch.minimum(torch.maximum(adv_ - x_, -r), r)
            return (1 - expand_as(v, x_)) * x_ + expand_as(v, x_) * adv_

        while True:
            go = ((hi - lo > thr) & (queries[rows] < self.max_queries)).nonzero().squeeze(1)
            if go.numel() == 0:
                break
            mid = (lo[go] + hi[go]) / 2
            ok = decide(project(x[go], adv[go], mid), label[go])
            queries[rows[go]] += 1
            hi[go] = torch.where(ok, mid, hi[go])
            lo[go] = torch.where(ok, lo[go], mid)
        return project(x, adv, hi), hi

    def _gradient(self, decide: Decide, adv: Tensor, label: Tensor, delta: Tensor, n: int,
                  rng: SampleRNG, t: int) -> Tensor:
        """Monte Carlo estimate (A, ...) of the boundary's unit normal at ``adv`` (A, ...) from
        ``n`` label queries at adv + δ·u, u uniform on the sphere (ℓ2) or a normalized uniform
        cube draw (ℓ∞), with the mean decision as baseline (the paper's variance reduction)."""
        a, feat = adv.shape[0], tuple(adv.shape[1:])
        s1, s0 = torch.zeros_like(adv), torch.zeros_like(adv)  # sums of ±u and of u
        hits = adv.new_zeros(a)
        keys_per_step = -(-self.max_evals // CHUNK)
        group = max(1, MAX_ELEMENTS // (CHUNK * max(math.prod(feat), 1)))
        for c0 in range(0, n, CHUNK):
            k = min(CHUNK, n - c0)
            key = INIT_TRIES + t * keys_per_step + c0 // CHUNK
            for g0 in range(0, a, group):
                g = slice(g0, g0 + group)
                r = rng.take(torch.arange(g0, min(g0 + group, a), device=adv.device))
                if self.norm == "l2":
                    u = r.randn((r.index.numel(), k, *feat), key, dtype=adv.dtype)
                else:
                    u = 2 * r.rand((r.index.numel(), k, *feat), key, dtype=adv.dtype) - 1
                ones = (1,) * len(feat)
                u = u / u.flatten(2).norm(dim=2).clamp_min(1e-12).view(*u.shape[:2], *ones)
                base = adv[g][:, None]
                pert = clip_box(base + expand_as(delta[g], base) * u)  # (G, k, ...)
                u = (pert - base) / (expand_as(delta[g], base) + 1e-8)
                ok = decide(pert.flatten(0, 1), label[g].repeat_interleave(k)).view(-1, k)
                sign = torch.where(ok, 1.0, -1.0)  # (G, k)
                s1[g] += (sign.view(*sign.shape, *ones) * u).sum(1)
                s0[g] += u.sum(1)
                hits[g] += sign.sum(1)
        mean = hits / n
        baseline = torch.where(mean.abs() == 1, 0.0, mean)
        grad = s1 / n - expand_as(baseline, s0) * s0 / n
        return grad / expand_as(lp_norm(grad, "l2") + 1e-12, grad)

    def _step(self, decide: Decide, adv: Tensor, label: Tensor, update: Tensor, size: Tensor,
              queries: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Geometric step-size search: adv + size·update, size halved until adversarial.
        Returns (found (A,), the adversarial proposals (A, ...))."""
        prop, found = adv.clone(), torch.zeros(adv.shape[0], dtype=torch.bool,
                                               device=adv.device)
        size = size.clone()
        for _ in range(MAX_HALVINGS):
            go = (~found & (queries[rows] < self.max_queries)).nonzero().squeeze(1)
            if go.numel() == 0:
                break
            cand = clip_box(adv[go] + expand_as(size[go], adv[go]) * update[go])
            ok = decide(cand, label[go])
            queries[rows[go]] += 1
            # selects, no host sync (found[go] is False, so it becomes ok)
            prop[go] = torch.where(expand_as(ok, cand), cand, prop[go])
            found[go] = ok
            size[go] = torch.where(ok, size[go], size[go] / 2)
        return found, prop
