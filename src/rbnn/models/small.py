"""Small, fast CNNs for 28×28 grayscale images (Fashion-MNIST / MNIST), the default CPU job.

A stride-2 float stem conv (→14×14), then three binary 3×3 convs, the middle one stride 2 and widening
(→7×7), each with a Bi-Real real-valued shortcut (identity, or option A where the shape changes) so real
information flows past every sign; flatten, BatchNorm1d, float ``fc``. Strided convs replace max-pools:
on CPU a 2×2 max-pool of the 28×28 map cost more than a binary conv, and this net is sized to train at
>1000 img/s on two cores.
"""

from __future__ import annotations

import torch
from torch import nn

from ._init import kaiming_init
from ._registry import check_init, register_model, spatial_size
from .blocks import ShortcutA, conv3x3


def _down(n: int) -> int:
    return (n - 1) // 2 + 1  # output size of a 3×3, stride-2, pad-1 conv


class SmallNet(nn.Module):
    """conv1(s2)-bn1-act1; conv2 (+x); conv3(s2, widen) (+shortcut3(x)); conv4 (+x); flatten-bn_final-fc."""

    def __init__(self, width: int = 32, num_classes: int = 10, in_channels: int = 1,
                 input_size: tuple[int, ...] | None = None) -> None:
        super().__init__()
        h, w = spatial_size(input_size, (28, 28))
        self.input_size = (in_channels, h, w)
        self.float_layers = ["conv1", "fc"]
        c1, c2 = width, 2 * width
        self.conv1 = conv3x3(in_channels, c1, stride=2)
        self.bn1 = nn.BatchNorm2d(c1)
        self.act1 = nn.Hardtanh()
        self.conv2 = conv3x3(c1, c1)
        self.bn2 = nn.BatchNorm2d(c1)
        self.act2 = nn.Hardtanh()
        self.conv3 = conv3x3(c1, c2, stride=2)
        self.bn3 = nn.BatchNorm2d(c2)
        self.shortcut3 = ShortcutA(2, c2, c1)
        self.act3 = nn.Hardtanh()
        self.conv4 = conv3x3(c2, c2)
        self.bn4 = nn.BatchNorm2d(c2)
        self.act4 = nn.Hardtanh()
        features = c2 * _down(_down(h)) * _down(_down(w))
        self.flatten = nn.Flatten(1)
        self.bn_final = nn.BatchNorm1d(features)
        self.fc = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)) + x)
        x = self.act3(self.bn3(self.conv3(x)) + self.shortcut3(x))
        x = self.act4(self.bn4(self.conv4(x)) + x)
        return self.fc(self.bn_final(self.flatten(x)))


def _build(width: int, num_classes: int, in_channels: int, init: str, input_size) -> SmallNet:
    check_init(init)
    model = SmallNet(width, num_classes, in_channels, input_size)
    if init != "pytorch":
        # No paper recipe exists for this net: Kaiming-normal convs, BN weights left at 1 ("standard" = "reference").
        kaiming_init(model, bn2d_weight=1.0, linear=False)
    return model


@register_model("smallnet")
def smallnet(num_classes: int = 10, in_channels: int = 1, init: str = "reference",
             input_size: tuple[int, ...] | None = None) -> SmallNet:
    """Fast binary CNN for 28×28 grayscale (widths 32/64)."""
    return _build(32, num_classes, in_channels, init, input_size)


@register_model("smallnet_wide")
def smallnet_wide(num_classes: int = 10, in_channels: int = 1, init: str = "reference",
                  input_size: tuple[int, ...] | None = None) -> SmallNet:
    """Wider variant (widths 64/128): more capacity for about 4× the compute of ``smallnet``."""
    return _build(64, num_classes, in_channels, init, input_size)
