"""Fully connected models: any input shape, flattened inside the model.

``mlp`` (ReLU between layers) with the presets ``mlp-100`` (784-100-10) and ``fc500-150``
(784-500-150-10); ``linear-1l`` (one linear layer), ``linear-2l`` (two stacked linear layers,
no nonlinearity) and ``lrl`` (linear-ReLU-linear), the small models of the "Making Neural Nets
Robust Again" report.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from advlab.models.base import MODELS
from advlab.models.layers import check_positive_int


def _widths(widths: Sequence[int] | int, what: str) -> tuple[int, ...]:
    """Hidden widths as a tuple: a list or tuple of positive ints, or one int (one layer).

    A string is refused (``"500,150"`` is not split), and so are bools and floats.
    """
    if isinstance(widths, str | bytes):
        raise ValueError(f"expected {what} as a list of positive ints (e.g. [500, 150]), "
                         f"not a string; got {widths!r}")
    if isinstance(widths, int) and not isinstance(widths, bool):
        widths = (widths,)
    if not isinstance(widths, list | tuple) or not all(
        isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths
    ):
        raise ValueError(f"expected {what} as a list of positive ints or one positive int, "
                         f"got {widths!r}")
    return tuple(widths)


def fully_connected(
    in_shape: tuple[int, ...], num_classes: int, widths: Sequence[int], relu: bool = True
) -> nn.Sequential:
    """Flatten, then ``Linear`` layers through ``widths`` to ``num_classes`` logits.

    (B, *in_shape) -> (B, num_classes); a ``ReLU`` between layers when ``relu``.
    """
    in_features = 1
    for s in in_shape:
        in_features *= s
    layers: list[nn.Module] = [nn.Flatten(start_dim=1)]
    for width in widths:
        layers.append(nn.Linear(in_features, width))
        if relu:
            layers.append(nn.ReLU())
        in_features = width
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


@MODELS.register("mlp")
def mlp(
    in_shape: tuple[int, ...], num_classes: int, *, widths: Sequence[int] | int = (100,)
) -> nn.Module:
    """Multilayer perceptron with ReLU; ``widths`` are the hidden layer widths.

    ``widths``: a list of positive ints, one per hidden layer (``[]``: no hidden layer), or a
    single int for one hidden layer (``widths=5`` is ``widths=[5]``; the spec keeps the value
    as given). Strings such as ``"500,150"`` are refused.
    """
    return fully_connected(in_shape, num_classes, _widths(widths, "widths"))


@MODELS.register("mlp-100")
def mlp_100(in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """One hidden layer of 100 ReLU units (784-100-10 on MNIST)."""
    return fully_connected(in_shape, num_classes, (100,))


@MODELS.register("fc500-150")
def fc500_150(in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Hidden layers of 500 and 150 ReLU units (784-500-150-10 on MNIST)."""
    return fully_connected(in_shape, num_classes, (500, 150))


@MODELS.register("linear-1l")
def linear_1l(in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """One linear layer, inputs to logits (multinomial logistic regression)."""
    return fully_connected(in_shape, num_classes, ())


@MODELS.register("linear-2l")
def linear_2l(in_shape: tuple[int, ...], num_classes: int, *, hidden: int = 100) -> nn.Module:
    """Two stacked linear layers without nonlinearity (a factored linear map of rank <= hidden)."""
    hidden = check_positive_int(hidden, "hidden")
    return fully_connected(in_shape, num_classes, (hidden,), relu=False)


@MODELS.register("lrl")
def lrl(in_shape: tuple[int, ...], num_classes: int, *, hidden: int = 100) -> nn.Module:
    """Linear - ReLU - linear."""
    return fully_connected(in_shape, num_classes, (check_positive_int(hidden, "hidden"),))
