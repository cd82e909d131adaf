"""Network bodies shared by the generative models: MLPs and DCGAN-style conv stacks.

Convolutional bodies halve (encoder, discriminator) or double (decoder, generator) the image side
at each stage with 4x4 kernels, stride 2, padding 1: two stages for sides divisible by 4 (8x8
digits: 2 -> 4 -> 8; 28x28: 7 -> 14 -> 28), three for sides of 32 or more divisible by 8
(32x32: 4 -> 8 -> 16 -> 32). Channels double at every stage going down from the image.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

NORMS = ("batch", "none")


def mlp(in_features: int, widths: Sequence[int], out_features: int,
        activation: str = "relu") -> nn.Sequential:
    """Linear layers through ``widths`` to ``out_features``, an activation between layers.

    (B, in_features) -> (B, out_features); ``activation`` is "relu" or "leaky" (slope 0.2).
    """
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Linear(in_features, w), _activation(activation)]
        in_features = w
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "leaky":
        return nn.LeakyReLU(0.2)
    raise ValueError(f"expected activation 'relu' or 'leaky', got {name!r}")


def conv_stages(data_shape: tuple[int, ...], what: str) -> int:
    """Number of stride-2 stages for an image shape; ``ValueError`` if the side does not fit."""
    if len(data_shape) != 3:
        raise ValueError(f"{what}: a conv architecture needs images (C, H, W), got {data_shape}")
    _, h, w = data_shape
    if h % 4 or w % 4:
        raise ValueError(f"{what}: a conv architecture needs image sides divisible by 4, got "
                         f"{h}x{w}; use arch='mlp'")
    return 3 if min(h, w) >= 32 and h % 8 == 0 and w % 8 == 0 else 2


def _norm2d(norm: str, channels: int) -> nn.Module:
    if norm not in NORMS:
        raise ValueError(f"expected norm in {NORMS}, got {norm!r}")
    return nn.BatchNorm2d(channels) if norm == "batch" else nn.Identity()


def _check_depth(depth: int, what: str) -> None:
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"{what}: expected depth (conv layers per resolution) as an int >= 1, "
                         f"got {depth!r}")


def conv_encoder(data_shape: tuple[int, ...], width: int, out_features: int,
                 norm: str = "none", what: str = "conv encoder", depth: int = 1
                 ) -> nn.Sequential:
    """Strided convolutions (LeakyReLU 0.2), then a Linear layer. (B, C, H, W) -> (B, out).

    ``depth`` > 1 follows each strided convolution with ``depth - 1`` 3x3 stride-1 ones at the
    same resolution and width (normalized like the stage)."""
    _check_depth(depth, what)
    stages = conv_stages(data_shape, what)
    c, h, w = data_shape
    layers: list[nn.Module] = []
    ch_in, ch = c, width
    for i in range(stages):
        layers.append(nn.Conv2d(ch_in, ch, 4, stride=2, padding=1))
        if i > 0:  # DCGAN: no normalization on the first layer
            layers.append(_norm2d(norm, ch))
        layers.append(nn.LeakyReLU(0.2))
        for _ in range(depth - 1):
            layers += [nn.Conv2d(ch, ch, 3, padding=1), _norm2d(norm, ch), nn.LeakyReLU(0.2)]
        ch_in, ch = ch, ch * 2
    f = 2 ** stages
    layers += [nn.Flatten(start_dim=1), nn.Linear(ch_in * (h // f) * (w // f), out_features)]
    return nn.Sequential(*layers)


def conv_decoder(latent_dim: int, data_shape: tuple[int, ...], width: int,
                 norm: str = "batch", what: str = "conv decoder", depth: int = 1
                 ) -> nn.Sequential:
    """A Linear layer to a (width * 2^(stages-1), H / 2^stages, W / 2^stages) map, then
    transposed convolutions (ReLU) up to (C, H, W) pre-activation outputs (no final
    nonlinearity). (B, latent_dim) -> (B, C, H, W).

    ``depth`` > 1 puts ``depth - 1`` 3x3 stride-1 convolutions (normalized, ReLU) before each
    transposed convolution, at the resolution and width it starts from."""
    _check_depth(depth, what)
    stages = conv_stages(data_shape, what)
    c, h, w = data_shape
    f = 2 ** stages
    ch = width * 2 ** (stages - 1)
    layers: list[nn.Module] = [nn.Linear(latent_dim, ch * (h // f) * (w // f))]
    layers += [nn.BatchNorm1d(ch * (h // f) * (w // f)) if norm == "batch" else nn.Identity(),
               nn.ReLU(), nn.Unflatten(1, (ch, h // f, w // f))]
    for i in range(stages):
        for _ in range(depth - 1):
            layers += [nn.Conv2d(ch, ch, 3, padding=1), _norm2d(norm, ch), nn.ReLU()]
        if i == stages - 1:  # the output layer: no normalization, no nonlinearity
            layers.append(nn.ConvTranspose2d(ch, c, 4, stride=2, padding=1))
        else:
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, stride=2, padding=1),
                       _norm2d(norm, ch // 2), nn.ReLU()]
            ch //= 2
    return nn.Sequential(*layers)
