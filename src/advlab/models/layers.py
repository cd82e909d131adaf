"""Small building blocks shared by the model files: input normalization and shape arithmetic."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


class UnsupportedInput(ValueError):
    """A model cannot take inputs of a given shape (too small, or not an image)."""


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel (images) or per feature (points), as the first layer.

    Keeping normalization inside the model lets attacks work in pixel space ([0, 1]).
    ``mean`` and ``std`` are persistent buffers of shape (C,), saved with the state dict; a
    single value applies to every channel.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        # checked as Python numbers, so a model can be built on the meta device (weights
        # files compare shapes that way before allocating anything)
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32, device="cpu")
        std_t = torch.as_tensor(list(std), dtype=torch.float32, device="cpu")
        if mean_t.dim() != 1 or mean_t.shape != std_t.shape or mean_t.numel() == 0:
            raise ValueError(
                f"expected mean and std as equal-length non-empty sequences, got "
                f"{list(mean)} and {list(std)}"
            )
        if not bool(torch.isfinite(mean_t).all()):
            raise ValueError(f"expected finite mean, got {list(mean)}")
        if not bool((torch.isfinite(std_t) & (std_t > 0)).all()):
            raise ValueError(f"expected finite std > 0, got {list(std)}")
        self.register_buffer("mean", mean_t)  # (C,)
        self.register_buffer("std", std_t)  # (C,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W) or (B, D); the buffers broadcast along dim 1.
        view = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(view)) / self.std.view(view)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


def check_positive_int(value: object, what: str) -> int:
    """``value`` if it is an int >= 1; bools (``True`` is an int in Python) and floats are
    refused with a ``ValueError`` naming ``what``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"expected {what} as a positive int, got {value!r}")
    return value


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution or pooling along one spatial dimension (0 if empty)."""
    return max(0, (size + 2 * padding - kernel) // stride + 1)


def check_image(in_shape: tuple[int, ...], what: str) -> tuple[int, int, int]:
    """``in_shape`` as (C, H, W); raise ``UnsupportedInput`` if it is not an image shape."""
    if len(in_shape) != 3:
        raise UnsupportedInput(
            f"{what} expects image inputs of shape (C, H, W), got shape {tuple(in_shape)}"
        )
    c, h, w = in_shape
    return c, h, w


def min_size(out_size: Callable[[int], int], limit: int = 4096) -> int:
    """The smallest input side for which ``out_size(side) >= 1`` (out_size is monotone)."""
    for side in range(1, limit + 1):
        if out_size(side) >= 1:
            return side
    raise ValueError(f"no input side up to {limit} gives a non-empty output")


def check_spatial(
    in_shape: tuple[int, int, int], out_size: Callable[[int], int], what: str
) -> tuple[int, int]:
    """Feature-map (H', W') after the model's convolutions; raise if either is empty."""
    _, h, w = in_shape
    out_h, out_w = out_size(h), out_size(w)
    if out_h < 1 or out_w < 1:
        m = min_size(out_size)
        raise UnsupportedInput(
            f"{what} needs inputs of at least {m}x{m} pixels, got {h}x{w}"
        )
    return out_h, out_w
