"""``resnet-small``: the CIFAR-10 ResNet of He et al. (2016, section 4.2), depth 6n+2.

A 3x3 stem convolution, three stages of n basic blocks (widths w, 2w, 4w; the last two stages
halve the resolution), batch normalization, global average pooling and a linear head. Shortcuts
that change shape are 1x1 convolutions with batch normalization (option B). Global pooling makes
any image size work.
"""

from __future__ import annotations

import torch
from torch import nn

from advlab.models.base import MODELS
from advlab.models.layers import check_image, check_positive_int


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU.

    (B, c_in, H, W) -> (B, c_out, ceil(H / stride), ceil(W / stride))
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


@MODELS.register("resnet-small")
def resnet_small(
    in_shape: tuple[int, ...], num_classes: int, *, depth: int = 8, width: int = 16
) -> nn.Module:
    """ResNet-``depth`` for small images; ``depth`` = 6n+2 (8, 14, 20, 32, ...), base ``width``.

    ResNet-8 (the default, 78,042 parameters on CIFAR-10) keeps CPU training cheap;
    ``depth=20`` is the classic ResNet-20.
    """
    c, _, _ = check_image(in_shape, "resnet-small")
    if (not isinstance(depth, int) or isinstance(depth, bool) or depth < 8
            or (depth - 2) % 6 != 0):
        raise ValueError(f"expected depth = 6n+2 with n >= 1 (8, 14, 20, ...), got {depth!r}")
    check_positive_int(width, "width")
    n = (depth - 2) // 6
    layers: list[nn.Module] = [
        nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
    ]
    c_in = width
    for stage, c_out in enumerate((width, 2 * width, 4 * width)):
        for block in range(n):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(BasicBlock(c_in, c_out, stride))
            c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(start_dim=1), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)
