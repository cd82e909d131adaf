"""Input checks shared by the attacks, the evaluations and the generative models.

Each raises ``ValueError`` naming what is wrong and what is valid ("expected ..., got ...").
Pixels are floating point, finite and inside [0, 1] (before any normalization); labels and
indices are integer vectors of the batch's length.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_int_vector(name: str, t: object, batch: int, meaning: str) -> Tensor:
    """``t`` checked to be a (batch,) integer tensor of values >= 0 (``meaning`` says what they
    are, for the messages)."""
    if not isinstance(t, Tensor):
        raise ValueError(f"expected {name} to be a torch.Tensor of {meaning}, "
                         f"got {type(t).__name__}")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"expected {name} to be an integer tensor, got dtype {t.dtype}")
    if t.shape != (batch,):
        raise ValueError(f"expected {name} of shape ({batch},) to match the batch of x, "
                         f"got {tuple(t.shape)}")
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"expected {name} >= 0 ({meaning}), got {int(t.min())}")
    return t


def check_labels(name: str, lab: object, batch: int, device: torch.device) -> Tensor:
    if isinstance(lab, Tensor) and lab.device != device:
        raise ValueError(f"expected {name} on x's device {device}, got {lab.device}")
    return check_int_vector(name, lab, batch, "class indices").long()


def check_index(index: object, batch: int, device: torch.device,
                 x: Tensor | None = None) -> Tensor:
    """The points' keys (B,) int64 on ``device``: their positions in the data set, or when None
    a hash of each input's pixels (``content_keys``), so that two calls on different batches
    (a user's training loop) never reuse the same random starts, while a point gets the same
    draws in any batch. Without ``x``, ``arange(B)``."""
    if index is None:
        if x is None:
            return torch.arange(batch, device=device)
        from advlab.attacks.rng import content_keys

        return content_keys(x).to(device)
    index = check_int_vector("index", index, batch, "positions in the data set")
    return index.to(device=device, dtype=torch.int64)


# --- input checks, shared with the generative models (``GenerativeModel.check_data``) -------

def check_floating(x: Tensor, what: str = "x", *, box: bool = True,
                   uint8_hint: bool = False) -> None:
    """Raise ``ValueError`` unless ``x`` has a floating-point dtype. ``box``: say that the
    values belong in [0, 1]; ``uint8_hint``: for uint8 input, suggest dividing by 255."""
    if not x.is_floating_point():
        hint = (" (8-bit pixels: divide by 255, e.g. x.float() / 255)"
                if uint8_hint and x.dtype == torch.uint8 else "")
        raise ValueError(f"expected {what} to be a floating-point tensor"
                         f"{' in [0, 1]' if box else ''}, got {x.dtype}{hint}")


def check_values(x: Tensor, what: str = "x", *, box: bool = True) -> None:
    """Raise ``ValueError`` unless every value of ``x`` is finite and, with ``box``, inside
    [0, 1] (the message gives the observed range). One pass over ``x``."""
    if not x.numel():
        return
    lo, hi = (v.item() for v in torch.aminmax(x.detach()))  # NaN and inf show up here
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"expected finite {what}, got {bad} NaN or inf values")
    if box and (lo < 0 or hi > 1):
        raise ValueError(f"expected {what} inside [0, 1] (pixels, before any normalization), "
                         f"got values in [{lo:.4g}, {hi:.4g}]")


def check_inputs(x: object) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"expected x to be a torch.Tensor, got {type(x).__name__}")
    check_floating(x)
    if x.dtype in (torch.float16, torch.bfloat16):
        raise ValueError(f"expected x in float32 or float64, got {x.dtype}: rounding the result "
                         f"to half precision would move it off the eps-ball and the reported "
                         f"predictions; pass x.float()")
    if x.dim() < 2:
        raise ValueError(f"expected x of shape (B, ...) with a batch dimension, "
                         f"got {tuple(x.shape)}")
    check_values(x)
