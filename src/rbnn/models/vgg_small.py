"""VGG-small (LQ-Nets layout) as used by RBNN and IR-Net (spec §1.8): float conv0 and fc, five binary convs.

The flatten size follows ``input_size`` (512·4·4 for 32×32), so the Linear is built for the given input.
"""

from __future__ import annotations

import torch
from torch import nn

from ._init import vgg_init
from ._registry import check_init, register_model, spatial_size
from .blocks import conv3x3


class VGGSmall(nn.Module):
    """conv0-bn0-act0, then conv_i[-pool_i]-bn_i-act_i for i = 1..5 (pool after 1, 3, 5), flatten, ``fc``."""

    widths = (128, 128, 256, 256, 512, 512)
    pooled = (1, 3, 5)

    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 input_size: tuple[int, ...] | None = None) -> None:
        super().__init__()
        h, w = spatial_size(input_size, (32, 32))
        self.input_size = (in_channels, h, w)
        self.float_layers = ["conv0", "fc"]
        c = in_channels
        for i, width in enumerate(self.widths):
            self.add_module(f"conv{i}", conv3x3(c, width))
            if i in self.pooled:
                self.add_module(f"pool{i}", nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            self.add_module(f"bn{i}", nn.BatchNorm2d(width))
            self.add_module(f"act{i}", nn.Hardtanh())
            c = width
        if h < 1 or w < 1:
            raise ValueError(f"input_size {input_size!r} is too small for VGG-small's three 2×2 pools")
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(c * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(len(self.widths)):
            x = getattr(self, f"conv{i}")(x)
            if i in self.pooled:
                x = getattr(self, f"pool{i}")(x)
            x = getattr(self, f"act{i}")(getattr(self, f"bn{i}")(x))
        return self.fc(self.flatten(x))


@register_model("vgg_small")
def vgg_small(num_classes: int = 10, in_channels: int = 3, init: str = "reference",
              input_size: tuple[int, ...] | None = None) -> VGGSmall:
    """VGG-small (RBNN/IR-Net CIFAR-10 model)."""
    check_init(init)
    model = VGGSmall(num_classes, in_channels, input_size)
    if init != "pytorch":  # the reference init already has BatchNorm gamma = 1: "standard" is the same
        vgg_init(model)
    return model
