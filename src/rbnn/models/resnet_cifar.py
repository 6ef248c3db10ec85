"""CIFAR ResNets of RBNN / IR-Net (spec §1.8, §2.3): ResNet-20 (normal and Bi-Real) and ResNet-18.

The stem conv and the final Linear stay float (``float_layers``); option-A shortcuts have no weights, and the
ResNet-18 1×1 downsample is binarized as in RBNN's code. Global average pooling is adaptive, so inputs other
than 32×32 work too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._init import kaiming_init
from ._registry import check_init, register_model, spatial_size
from .blocks import BasicBlock, BiRealBlock, conv3x3

# What `rbnn train model=resnet20*` uses unless an optim key is set: Adam at 2e-2. The global 2e-3 (tuned for
# smallnet's ~500 steps per epoch) leaves the binary ResNet-20's latent weights (Kaiming std 0.06-0.12) almost
# unflipped in a short run: xnor on 2,000 Fashion-MNIST images, 1 epoch (16 steps), reached 19.3 % test
# accuracy at 2e-3, 35.8 % at 5e-3, 40.9 % at 1e-2, 43.8 % at 2e-2 (fp 42.8 %, rbnn 35.6 % at 2e-2).
_SHORT_RUN_DEFAULTS = {"optim.name": "adam", "optim.lr": 0.02}
# The normal structure (one shortcut per two binary convs) does not learn from BatchNorm gamma = 1 in a few steps
# (every block then adds two binary convs' noise); RBNN's gamma = 1e-8 starts it as an identity, and Adam at
# 2e-2 grows gamma fast enough.
_NORMAL_DEFAULTS = {**_SHORT_RUN_DEFAULTS, "model_init": "reference"}


class CifarResNet(nn.Module):
    """conv1-bn1-act1 stem, stages ``layer1..layerN``, global avg pool, BatchNorm1d, Linear ``fc``."""

    def __init__(self, block: type[BasicBlock] | type[BiRealBlock], layers: Sequence[int],
                 widths: Sequence[int], shortcut: str = "A", stem_act: bool = True, num_classes: int = 10,
                 in_channels: int = 3, input_size: tuple[int, ...] | None = None) -> None:
        super().__init__()
        h, w = spatial_size(input_size, (32, 32))
        self.input_size = (in_channels, h, w)
        self.float_layers = ["conv1", "fc"]
        self.conv1 = conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = nn.Hardtanh() if stem_act else nn.Identity()
        c = widths[0]
        for i, (n, width) in enumerate(zip(layers, widths, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(block(c, width, stride if j == 0 else 1, shortcut=shortcut))
                c = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.bn_final = nn.BatchNorm1d(c)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.bn_final(self.flatten(self.avgpool(x))))


def _resnet20(block, num_classes: int, in_channels: int, init: str, input_size) -> CifarResNet:
    check_init(init)
    model = CifarResNet(block, [3, 3, 3], [16, 32, 64], shortcut="A", stem_act=True, num_classes=num_classes,
                        in_channels=in_channels, input_size=input_size)
    if init != "pytorch":  # RBNN's code: gamma = 1e-8; IR-Net's code ("standard"): BatchNorm untouched
        kaiming_init(model, bn2d_weight=1e-8 if init == "reference" else 1.0, linear=True)
    return model


@register_model("resnet20", defaults=_NORMAL_DEFAULTS)
def resnet20(num_classes: int = 10, in_channels: int = 3, init: str = "reference",
             input_size: tuple[int, ...] | None = None) -> CifarResNet:
    """CIFAR ResNet-20, normal structure (one shortcut per block), option-A shortcuts."""
    return _resnet20(BasicBlock, num_classes, in_channels, init, input_size)


@register_model("resnet20_bireal", defaults=_SHORT_RUN_DEFAULTS)
def resnet20_bireal(num_classes: int = 10, in_channels: int = 3, init: str = "reference",
                    input_size: tuple[int, ...] | None = None) -> CifarResNet:
    """CIFAR ResNet-20, Bi-Real structure (a shortcut around every conv): the IR-Net/RBNN 1w1a model."""
    return _resnet20(BiRealBlock, num_classes, in_channels, init, input_size)


@register_model("resnet18_cifar")
def resnet18_cifar(num_classes: int = 10, in_channels: int = 3, init: str = "reference",
                   input_size: tuple[int, ...] | None = None) -> CifarResNet:
    """RBNN's CIFAR ResNet-18: normal blocks, binary 1×1 downsample, stem without activation.

    Both init modes are PyTorch's defaults (the reference code sets none).
    """
    check_init(init)
    return CifarResNet(BasicBlock, [2, 2, 2, 2], [64, 128, 256, 512], shortcut="conv", stem_act=False,
                       num_classes=num_classes, in_channels=in_channels, input_size=input_size)
