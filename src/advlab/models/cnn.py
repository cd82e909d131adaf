"""Plain convolutional classifiers: ``lenet5``, ``madry-cnn``, ``wong-cnn``, ``fmnist-cnn``,
``cifar-cnn``.

Each takes images (B, C, H, W) of any size its layers allow; the flatten size is computed from
the input shape, and a too-small input raises ``UnsupportedInput`` naming the minimum size.
"""

from __future__ import annotations

from torch import nn

from advlab.models.base import MODELS
from advlab.models.layers import check_image, check_spatial, conv_out


def _dropout(p: float, what: str) -> float:
    if not isinstance(p, int | float) or isinstance(p, bool) or not 0.0 <= p < 1.0:
        raise ValueError(f"expected {what} in [0, 1), got {p!r}")
    return float(p)


def _pool(size: int) -> int:
    return conv_out(size, kernel=2, stride=2)


@MODELS.register("lenet5")
def lenet5(in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """LeNet-5 with ReLU and max pooling: conv6-5x5 (pad 2), pool, conv16-5x5, pool, 120, 84.

    The first convolution is padded so 28x28 inputs see the original 32x32 geometry
    (16x5x5 features, 61,706 parameters on MNIST). Inputs smaller than 12x12 (e.g. 8x8
    digits) would leave nothing after the second convolution, so it is padded by 2 as well.
    """
    c, _, _ = check_image(in_shape, "lenet5")

    def out_size(side: int, pad2: int) -> int:
        return _pool(conv_out(_pool(conv_out(side, 5, padding=2)), 5, padding=pad2))

    _, h, w = in_shape
    pad2 = 0 if min(out_size(h, 0), out_size(w, 0)) >= 1 else 2
    out_h, out_w = check_spatial(in_shape, lambda s: out_size(s, pad2), "lenet5")
    return nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # (B, 6, H/2, W/2)
        nn.Conv2d(6, 16, 5, padding=pad2), nn.ReLU(), nn.MaxPool2d(2),  # (B, 16, H', W')
        nn.Flatten(start_dim=1),
        nn.Linear(16 * out_h * out_w, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )


@MODELS.register("madry-cnn")
def madry_cnn(in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The MNIST challenge network of Madry et al. (2018): conv32-5x5, pool, conv64-5x5, pool,
    fc1024 (3,274,634 parameters on MNIST)."""
    c, _, _ = check_image(in_shape, "madry-cnn")
    out_h, out_w = check_spatial(in_shape, lambda s: _pool(_pool(s)), "madry-cnn")
    return nn.Sequential(
        nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, H/2, W/2)
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, H/4, W/4)
        nn.Flatten(start_dim=1),
        nn.Linear(64 * out_h * out_w, 1024), nn.ReLU(),
        nn.Linear(1024, num_classes),
    )


@MODELS.register("wong-cnn")
def wong_cnn(in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The small MNIST network of Wong, Rice and Kolter (2020, "Fast is better than free"):
    conv16-4x4 stride 2 pad 1, conv32-4x4 stride 2 pad 1, fc100 (166,406 parameters on MNIST),
    about 23x fewer multiply-adds per MNIST example than ``madry-cnn`` (0.61M vs 13.9M):
    adversarial training fits a CPU."""
    c, _, _ = check_image(in_shape, "wong-cnn")

    def down(s: int) -> int:
        return conv_out(s, kernel=4, stride=2, padding=1)

    out_h, out_w = check_spatial(in_shape, lambda s: down(down(s)), "wong-cnn")
    return nn.Sequential(
        nn.Conv2d(c, 16, 4, stride=2, padding=1), nn.ReLU(),  # (B, 16, H/2, W/2)
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),  # (B, 32, H/4, W/4)
        nn.Flatten(start_dim=1),
        nn.Linear(32 * out_h * out_w, 100), nn.ReLU(),
        nn.Linear(100, num_classes),
    )


@MODELS.register("fmnist-cnn")
def fmnist_cnn(
    in_shape: tuple[int, ...], num_classes: int, *, dropout: float = 0.3,
    head_dropout: float = 0.5,
) -> nn.Module:
    """The Keras Fashion-MNIST example network: conv64-2x2, pool, dropout, conv128-2x2, pool,
    dropout, dense 256, dropout, logits. Convolutions are unpadded ("valid")."""
    c, _, _ = check_image(in_shape, "fmnist-cnn")
    out_h, out_w = check_spatial(
        in_shape, lambda s: _pool(conv_out(_pool(conv_out(s, 2)), 2)), "fmnist-cnn"
    )
    p, p_head = _dropout(dropout, "dropout"), _dropout(head_dropout, "head_dropout")
    return nn.Sequential(
        nn.Conv2d(c, 64, 2), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(p),
        nn.Conv2d(64, 128, 2), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(p),
        nn.Flatten(start_dim=1),
        nn.Linear(128 * out_h * out_w, 256), nn.ReLU(), nn.Dropout(p_head),
        nn.Linear(256, num_classes),
    )


@MODELS.register("cifar-cnn")
def cifar_cnn(
    in_shape: tuple[int, ...], num_classes: int, *, dropout: float = 0.5
) -> nn.Module:
    """Three unpadded 2x2 convolutions (32, 64, 128 filters) each followed by max pooling,
    dense 256, dropout, logits. Needs inputs of at least 15x15."""
    c, _, _ = check_image(in_shape, "cifar-cnn")

    def stage(s: int) -> int:
        return _pool(conv_out(s, 2))

    out_h, out_w = check_spatial(in_shape, lambda s: stage(stage(stage(s))), "cifar-cnn")
    return nn.Sequential(
        nn.Conv2d(c, 32, 2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(start_dim=1),
        nn.Linear(128 * out_h * out_w, 256), nn.ReLU(), nn.Dropout(_dropout(dropout, "dropout")),
        nn.Linear(256, num_classes),
    )
