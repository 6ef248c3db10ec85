"""ReActNet ResNet architectures, as used by ReBNN (spec §4.3).

Each block has ONE binary 3×3 conv and its own real-valued shortcut:

    out = RPReLU( BN(BinConv3×3(RSign(x))) + down(x) ),     RPReLU(z) = PReLU_c(z + β1_c) + β2_c

RSign, sign(x + β_c) with the ApproxSign backward, is the binary conv's own input binarization: the ReBNN
recipes set ``act_transform="shift"`` (learnable per-channel ``act_shift``) and ``act_estimator="approx"``,
so ``prepare`` turns every inner conv into RSign + binary conv. ``down`` is the identity, or AvgPool2 +
1×1 FP conv + BN when the shape changes (kept float: ``float_layers``); the pool uses ``ceil_mode=True``
so odd sizes work (it equals ReActNet's pool on the even sizes of ImageNet).

- ``reactnet18``: layers [4, 4, 4, 4] → 16 binary 3×3 convs; ``reactnet34``: [6, 8, 12, 6] → 32.
  Stem 7×7/2 FP conv + BN + 3×3/2 max-pool (no activation); head AdaptiveAvgPool + FP ``fc``.
- ``reactnet_small`` (28×28 / 32×32 inputs): stem 3×3/1 FP conv + BN, no max-pool, layers [2, 2, 2, 2]
  of widths (16, 32, 64, 128) by default (``width``/``layers`` are builder options).

Init: PyTorch defaults for every ``init`` value (ReActNet's code uses no custom init). No data-dependent
control flow: the models trace with ``torch.fx`` (binary layers as leaves).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._registry import check_init, register_model, spatial_size


class RPReLU(nn.Module):
    """ReActNet's RPReLU: ``PReLU_c(x + bias1_c) + bias2_c`` (PReLU slopes init 0.25, shifts 0)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias1 = nn.Parameter(torch.zeros(channels))
        self.prelu = nn.PReLU(channels)
        self.bias2 = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(x + self.bias1.reshape(1, -1, 1, 1)) + self.bias2.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"channels={self.bias1.numel()}"


def _down(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    # ceil_mode: odd sizes (7×7 in reactnet_small on 28×28) match the strided conv; identical on even sizes
    pool: nn.Module = nn.AvgPool2d(2, stride=2, ceil_mode=True) if stride == 2 else nn.Identity()
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
    return nn.Sequential(pool, conv, nn.BatchNorm2d(out_channels))


class ReActBlock(nn.Module):
    """``act(bn(conv(x)) + down(x))``: one (to-be-binarized) 3×3 conv, BN, real shortcut, RPReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.down = _down(in_channels, out_channels, stride)
        self.act = RPReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)) + self.down(x))


class ReActNet(nn.Module):
    """Stem, four stages of ReActBlocks (stride 2 at the first block of stages 2–4), avg pool, ``fc``."""

    def __init__(self, layers: Sequence[int], widths: Sequence[int] = (64, 128, 256, 512),
                 num_classes: int = 1000, in_channels: int = 3, input_size: tuple[int, ...] | None = None,
                 small: bool = False) -> None:
        super().__init__()
        h, w = spatial_size(input_size, (32, 32) if small else (224, 224))
        self.input_size = (in_channels, h, w)
        self.float_layers = ["conv1", "fc", "layer*.*.down.*"]
        c = widths[0]
        if small:
            self.conv1 = nn.Conv2d(in_channels, c, 3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, c, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError("ReActNet needs four stages (layers and widths of length 4)")
        for i, (n, width) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(ReActBlock(c, width, 2 if (i > 0 and j == 0) else 1))
                c = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


def _build(layers, widths, num_classes, in_channels, init, input_size, small) -> ReActNet:
    check_init(init)  # all three inits coincide: ReActNet uses PyTorch's default init
    return ReActNet(layers, widths, num_classes, in_channels, input_size, small)


@register_model("reactnet18")
def reactnet18(num_classes: int = 10, in_channels: int = 3, init: str = "reference",
               input_size: tuple[int, ...] | None = None) -> ReActNet:
    """ReActNet/ReBNN ResNet-18: 16 binary 3×3 convs (pass ``num_classes=1000`` for ImageNet)."""
    return _build([4, 4, 4, 4], (64, 128, 256, 512), num_classes, in_channels, init, input_size, False)


@register_model("reactnet34")
def reactnet34(num_classes: int = 10, in_channels: int = 3, init: str = "reference",
               input_size: tuple[int, ...] | None = None) -> ReActNet:
    """ReActNet/ReBNN ResNet-34: 32 binary 3×3 convs."""
    return _build([6, 8, 12, 6], (64, 128, 256, 512), num_classes, in_channels, init, input_size, False)


@register_model("reactnet_small")
def reactnet_small(num_classes: int = 10, in_channels: int = 1, init: str = "reference",
                   input_size: tuple[int, ...] | None = None, width: int = 16,
                   layers: Sequence[int] = (2, 2, 2, 2)) -> ReActNet:
    """ReActNet for 28×28 / 32×32 inputs: 3×3 stem, no max-pool, stages of widths width·(1, 2, 4, 8)."""
    widths = tuple(width * m for m in (1, 2, 4, 8))
    return _build(list(layers), widths, num_classes, in_channels, init, input_size, True)
