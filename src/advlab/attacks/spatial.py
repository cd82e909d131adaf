"""Spatial attack: the worst rotation and translation of each image, by grid or random search."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
    is_adversarial,
)
from advlab.attacks.registry import register
from advlab.attacks.rng import SampleRNG


def rotate_translate(x: Tensor, angle: Tensor, shift: Tensor) -> Tensor:
    """Rotate each image about its centre by ``angle`` degrees, then translate it by ``shift``.

    ``x`` (N, C, H, W); ``angle`` (N,) degrees, positive = counterclockwise on screen; ``shift``
    (N, 2) pixels (dx to the right, dy downwards). Bilinear sampling, zeros outside the image
    (black borders). Pixel centres are at integer offsets from the image centre, so rotations
    by multiples of 90° (square images) and integer shifts move pixels exactly. -> (N, C, H, W).
    """
    n, _, h, w = x.shape
    rad = angle.to(x.dtype) * (math.pi / 180)
    cos, sin = rad.cos(), rad.sin()
    # Output pixel p (pixel units about the centre, y down) takes input R⁻¹(p − t), where R maps
    # (u, v) to (u cos + v sin, −u sin + v cos): counterclockwise on screen since y points down.
    inv = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (N,2,2)
    offset = -(inv @ shift.to(x.dtype)[:, :, None])  # (N, 2, 1)
    # affine_grid works in normalized coordinates (align_corners=False): u_norm = u * 2 / W.
    scale = torch.tensor([2 / w, 2 / h], dtype=x.dtype, device=x.device)
    a = inv * scale[:, None] / scale[None, :]  # S A S⁻¹
    b = offset * scale[:, None]
    theta = torch.cat([a, b], dim=2)  # (N, 2, 3)
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    identity = (angle == 0) & (shift == 0).all(dim=1)  # exact, not resampled
    return torch.where(expand_as(identity, x), x, out)


@register("spatial")
@dataclass(frozen=True, kw_only=True)
class Spatial(Attack):
    r"""Grid (or random) search in 'Exploring the Landscape of Spatial Robustness'
    (Engstrom et al.) [https://arxiv.org/abs/1712.02779]

    Distance measure: none (the perturbation is not norm-bounded; l2/linf are reported as usual).

    Each image is rotated about its centre and translated (bilinear sampling, black borders, see
    ``rotate_translate``). Candidates: the grid of ``n_angles`` angles in [−max_angle, max_angle]
    times ``n_shifts`` × ``n_shifts`` shifts in [−max_shift, max_shift] pixels, or with
    ``random_samples = k`` k transformations drawn uniformly from those ranges per sample (the
    paper's worst-of-k). The identity is always the first candidate, then the grid in order of
    growing size ((angle / max_angle)² + (shift / max_shift)²). Per sample the first candidate
    that fools the model is kept (so the smallest on the grid) and the sample stops; a sample
    never fooled keeps the candidate of highest loss (CE to y, or −CE to the target). (The
    paper's worst-of-k keeps the highest loss among all k; keeping the first success instead
    gives the same success rate for fewer queries.)
    Batched: one forward per chunk of candidates × samples still standing, at most
    ``max_batch`` images at a time (the chunk of candidates grows as samples drop out).
    ``info["angle"]`` (B,) degrees and ``info["shift"]`` (B, 2) pixels (dx, dy) hold the chosen
    transformation; ``iterations`` counts the candidates tried per sample.

    Arguments:
        max_angle (float): largest rotation, degrees. (Default: 30)
        n_angles (int): angles on the grid (1: only 0°). (Default: 31)
        max_shift (float): largest translation per axis, pixels. (Default: 3)
        n_shifts (int): shifts per axis on the grid (1: only 0). (Default: 7)
        random_samples (int | None): draw this many random transformations per sample instead
            of the grid. (Default: None: the grid)
        targeted (bool): look for the target class instead of any wrong class. (Default: False)
        max_batch (int): images per forward pass, at most (or the batch size, if larger).
            (Default: 1024)
        seed (int): seed of the random transformations. (Default: 0)

    Shape:
        - x: (B, C, H, W) in [0, 1]; y, target: (B,) int64; result.adv: like x.

    Examples::
        >>> result = Spatial(max_angle=30, max_shift=3)(model, x, y)
        >>> result.info["angle"][result.success], result.info["shift"][result.success]
    """

    max_angle: float = 30.0
    n_angles: int = 31
    max_shift: float = 3.0
    n_shifts: int = 7
    random_samples: int | None = None
    targeted: bool = False
    max_batch: int = 1024

    def check_params(self) -> None:
        check_nonneg("max_angle", self.max_angle)
        check_nonneg("max_shift", self.max_shift)
        check_int("n_angles", self.n_angles)
        check_int("n_shifts", self.n_shifts)
        if self.random_samples is not None:
            check_int("random_samples", self.random_samples)
        check_bool("targeted", self.targeted)
        check_int("max_batch", self.max_batch)

    def candidates(self, batch: int, device: torch.device,
                   rng: SampleRNG) -> tuple[Tensor, Tensor]:
        """(angle (B, G), shift (B, G, 2)): the G transformations tried for each sample."""
        if self.random_samples is None:
            def values(top: float, n: int) -> Tensor:  # distinct values, sorted
                grid = (torch.linspace(-top, top, n, dtype=torch.float64) if n > 1
                        else torch.zeros(1, dtype=torch.float64))  # exact integers in float32
                return grid.float().unique().to(device)

            a = values(self.max_angle, self.n_angles)
            s = values(self.max_shift, self.n_shifts)
            angle, dx, dy = torch.meshgrid(a, s, s, indexing="ij")
            angle, shift = angle.reshape(-1), torch.stack([dx, dy], -1).reshape(-1, 2)
            size = ((angle / max(self.max_angle, 1e-12)) ** 2
                    + (shift / max(self.max_shift, 1e-12)).pow(2).sum(1))
            order = torch.sort(size, stable=True).indices
            order = order[size[order] > 0]  # the identity is added below, once
            angle = angle[order][None].expand(batch, -1)  # (B, G)
            shift = shift[order][None].expand(batch, -1, -1)  # (B, G, 2)
        else:
            k = self.random_samples
            u = rng.rand((batch, k, 3)).to(device) * 2 - 1  # keyed per point
            angle, shift = u[..., 0] * self.max_angle, u[..., 1:] * self.max_shift
        zero = torch.zeros(batch, 1, device=device)
        angle = torch.cat([zero, angle], dim=1)  # the identity first
        shift = torch.cat([zero[..., None].expand(-1, -1, 2), shift], dim=1)
        return angle, shift

    def run(self, model: Model, x: Tensor, y: Tensor, target: Tensor | None,
            rng: SampleRNG) -> RunOutput:
        if x.dim() != 4:
            raise ValueError(f"expected images x of shape (B, C, H, W) for the spatial attack, "
                             f"got {tuple(x.shape)}")
        label = target if self.targeted else y
        batch, dev = x.shape[0], x.device
        angles, shifts = self.candidates(batch, dev, rng)  # (B, G), (B, G, 2)
        n_cand = angles.shape[1]
        best = torch.zeros(batch, dtype=torch.int64, device=dev)  # chosen candidate per sample
        best_loss = torch.full((batch,), -torch.inf, device=dev)
        iters = torch.zeros(batch, dtype=torch.int64, device=dev)
        active = torch.arange(batch, device=dev)  # samples not fooled yet
        start = 0
        with torch.no_grad():
            while start < n_cand and active.numel():
                g = max(1, min(n_cand - start, self.max_batch // active.numel()))
                cols = torch.arange(start, start + g, device=dev)
                ang = angles[active][:, cols]  # (A, g)
                sh = shifts[active][:, cols]  # (A, g, 2)
                xa = x[active]  # (A, C, H, W)
                imgs = rotate_translate(xa.repeat_interleave(g, dim=0), ang.reshape(-1),
                                        sh.reshape(-1, 2))  # (A*g, C, H, W), sample-major
                logits = model(imgs)  # (A*g, K)
                lab = label[active].repeat_interleave(g)
                loss = cross_entropy(logits, lab).view(-1, g)  # (A, g)
                loss = -loss if self.targeted else loss
                fooled = is_adversarial(logits, lab, self.targeted).view(-1, g)  # (A, g)
                hit = fooled.any(dim=1)  # (A,)
                first = fooled.float().argmax(dim=1)  # first fooling column (0 if none)
                top_loss, top = loss.max(dim=1)
                better = hit | (top_loss > best_loss[active])
                pick = torch.where(hit, first, top)
                best[active] = torch.where(better, cols[pick], best[active])
                best_loss[active] = torch.where(better, loss.gather(1, pick[:, None])[:, 0],
                                                best_loss[active])
                used = torch.where(hit, first + 1, torch.full_like(first, g))
                iters[active] += used
                active = active[~hit]
                start += g
        rows = torch.arange(batch, device=dev)
        angle, shift = angles[rows, best], shifts[rows, best]  # (B,), (B, 2)
        adv = rotate_translate(x, angle, shift)
        return RunOutput(adv, iters, {"angle": angle, "shift": shift})
