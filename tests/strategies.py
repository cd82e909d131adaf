"""Shared Hypothesis strategies (attrs' habit: one module, imported by every property test)."""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import nn

# --- images and small random classifiers (attack tests) -----------------------------------


@st.composite
def image_batches(draw, max_batch: int = 6, max_side: int = 6) -> torch.Tensor:
    """A float32 batch (B, C, H, W) in [0, 1] where many pixels are exactly 0 or 1 (as MNIST)."""
    b = draw(st.integers(1, max_batch))
    c = draw(st.integers(1, 2))
    h = draw(st.integers(2, max_side))
    w = draw(st.integers(2, max_side))
    seed = draw(st.integers(0, 2**31 - 1))
    frac_boundary = draw(st.sampled_from([0.0, 0.5, 0.9]))
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h, w, generator=gen)
    boundary = torch.rand(b, c, h, w, generator=gen) < frac_boundary
    return torch.where(boundary, (x > 0.5).float(), x)


@st.composite
def classifiers(draw, d_in: int) -> nn.Module:
    """A seeded random MLP (flatten -> hidden -> K logits) in eval mode, K in 2..6."""
    seed = draw(st.integers(0, 2**31 - 1))
    hidden = draw(st.integers(1, 16))
    classes = draw(st.integers(2, 6))
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d_in, hidden), nn.Tanh(),
                          nn.Linear(hidden, classes))
    with torch.no_grad():  # spread the logits so that predictions differ between points
        model[3].weight.mul_(4.0)
    return model.eval()


epsilons = st.sampled_from([0.0, 1e-3, 0.05, 0.3, 1.0])
