"""2-D Gaussian mixtures for mode-collapse experiments: ``ring8`` and ``grid25``.

The settings are those of the VEEGAN experiments (Srivastava et al., NeurIPS 2017, section 5.1,
"2D Ring" and "2D Grid"), as set in PacGAN's reproduction of them (Lin et al. 2018, configs
of ``synthetic_data_experiments``) and in the ring sampler of the VEEGAN code:

- ``ring8``: 8 isotropic Gaussians with means on a circle of radius 1,
  ``(cos(2 pi k / 8), sin(2 pi k / 8))`` for k = 0..7, standard deviation 0.01;
- ``grid25``: 25 isotropic Gaussians with means on the grid ``{-4, -2, 0, 2, 4}^2`` (spacing 2),
  standard deviation 0.05; mode ``5 i + j`` has mean ``(-4 + 2 i, -4 + 2 j)``.

The mixture weights are uniform. Unrolled GAN (Metz et al. 2017) used the same ring with radius
2 and standard deviation 0.02 (the same shape, scaled by 2). Several public copies of these
samplers space the angles with ``linspace(0, 2 pi, 8)``, which puts modes 0 and 7 on the same
point; here the 8 angles are distinct. VEEGAN scores a sample as "high quality" if it lies
within 3 standard deviations of its nearest mean.

Points are generated deterministically: the train split with seed 0, the test split with seed
1 (so the splits are independent draws), 100,000 train and 10,000 test points by default (the
size of the training sets in PacGAN's configs).
"""

from __future__ import annotations

import math

import torch

from advlab.data.base import TensorSet, info

RING_MODES, RING_RADIUS, RING_SIGMA = 8, 1.0, 0.01
GRID_SIDE, GRID_SPACING, GRID_SIGMA = 5, 2.0, 0.05
SEEDS = {"train": 0, "test": 1}
DEFAULT_SIZES = {"train": 100_000, "test": 10_000}
# The most points a generated set may have (x float32 + y int64: 160 MB); a larger n is a typo.
MAX_POINTS = 10**7
TOY_NAMES = ("ring8", "grid25")


def toy_modes(name: str) -> tuple[torch.Tensor, float]:
    """The mixture's means (K, 2) float32 (index = label) and its standard deviation."""
    if name == "ring8":
        angle = torch.arange(RING_MODES, dtype=torch.float64) * (2 * math.pi / RING_MODES)
        centers = RING_RADIUS * torch.stack([angle.cos(), angle.sin()], dim=1)
        return centers.float(), RING_SIGMA
    if name == "grid25":
        axis = (torch.arange(GRID_SIDE, dtype=torch.float64) - (GRID_SIDE - 1) / 2) * GRID_SPACING
        gi, gj = torch.meshgrid(axis, axis, indexing="ij")  # mode 5 i + j = (axis[i], axis[j])
        return torch.stack([gi.reshape(-1), gj.reshape(-1)], dim=1).float(), GRID_SIGMA
    info(name)  # unknown name: ValueError listing the valid ones
    raise ValueError(f"expected a 2-D mixture ({', '.join(TOY_NAMES)}), got {name!r}")


def sample_toy(name: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points of the mixture: x (n, 2) float32 and the mode index y (n,) int64.

    ``n`` is an int in 1..``MAX_POINTS``.
    """
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_POINTS:
        raise ValueError(f"expected n as a positive number of points (an int) of at most "
                         f"{MAX_POINTS:,}, the cap on generated data sets; got {n!r}")
    centers, sigma = toy_modes(name)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(len(centers), (n,), generator=g)
    noise = torch.randn(n, 2, generator=g)
    return centers[y] + sigma * noise, y  # (n, 2), (n,)


def load_toy(name: str, split: str, n: int | None = None) -> TensorSet:
    """The ``split`` of a 2-D mixture as a ``TensorSet`` (``n`` points, default per split)."""
    if split not in SEEDS:
        raise ValueError(f"expected split 'train' or 'test', got {split!r}")
    x, y = sample_toy(name, DEFAULT_SIZES[split] if n is None else n, SEEDS[split])
    return TensorSet(x, y, info(name), split)
