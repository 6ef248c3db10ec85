"""ImageNet ResNet-18/34 with the Bi-Real structure, as in RBNN and IR-Net (spec §1.8, §2.3).

Float: the 7×7 stem conv, the 1×1 stride-2 downsample convs (as Bi-Real/IR-Net/RBNN keep them) and ``fc``.
Pooling is adaptive, so small inputs (e.g. 64×64 in tests) work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._init import kaiming_init
from ._registry import check_init, register_model, spatial_size
from .blocks import BiRealBlock


class ImageNetResNet(nn.Module):
    """conv1(7×7/2)-bn1-act1-maxpool stem, four Bi-Real stages, avg pool, BatchNorm1d(512), ``fc``."""

    def __init__(self, layers: Sequence[int], num_classes: int = 1000, in_channels: int = 3,
                 input_size: tuple[int, ...] | None = None) -> None:
        super().__init__()
        h, w = spatial_size(input_size, (224, 224))
        self.input_size = (in_channels, h, w)
        self.float_layers = ["conv1", "fc", "layer*.*.shortcut.0"]
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.Hardtanh()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c = 64
        widths = (64, 128, 256, 512)
        for i, (n, width) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BiRealBlock(c, width, stride, shortcut="conv"))
                c = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.bn_final = nn.BatchNorm1d(c)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.bn_final(self.flatten(self.avgpool(x))))


def _build(layers: Sequence[int], num_classes: int, in_channels: int, init: str,
           input_size) -> ImageNetResNet:
    check_init(init)
    model = ImageNetResNet(layers, num_classes, in_channels, input_size)
    if init != "pytorch":  # RBNN's code: gamma = 1e-8; "standard": gamma = 1
        kaiming_init(model, bn2d_weight=1e-8 if init == "reference" else 1.0, linear=False)
    return model


@register_model("resnet18")
def resnet18(num_classes: int = 10, in_channels: int = 3, init: str = "reference",
             input_size: tuple[int, ...] | None = None) -> ImageNetResNet:
    """Bi-Real ResNet-18 for ImageNet (pass ``num_classes=1000`` for the paper setting)."""
    return _build([2, 2, 2, 2], num_classes, in_channels, init, input_size)


@register_model("resnet34")
def resnet34(num_classes: int = 10, in_channels: int = 3, init: str = "reference",
             input_size: tuple[int, ...] | None = None) -> ImageNetResNet:
    """Bi-Real ResNet-34 for ImageNet (pass ``num_classes=1000`` for the paper setting)."""
    return _build([3, 4, 6, 3], num_classes, in_channels, init, input_size)
