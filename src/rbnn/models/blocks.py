"""Residual building blocks shared by the ResNets.

Every op is an ``nn.Module`` or a plain torch call with no data-dependent control flow, so
``torch.fx.symbolic_trace`` sees the whole graph (the exporter relies on it). Attribute names are fixed:
``conv1, bn1, act1, conv2, bn2, act2, shortcut``. Activations are Hardtanh, as in every reference code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv_bn_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """1×1 strided conv + BN downsample (binary or float depending on the model's ``float_layers``)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class ShortcutA(nn.Module):
    """Option-A shortcut (He et al. 2016): stride-``s`` subsample, then zero-pad the channels.

    Parameter-free, so there is nothing to binarize or export. The new channels are split evenly before and
    after the existing ones (``(out - in) // 2`` in front), as in the common CIFAR ResNet code
    (16→32 pads 8 + 8). Pass ``in_channels`` so the padding is a constant in the traced graph.
    """

    def __init__(self, stride: int, out_channels: int, in_channels: int | None = None) -> None:
        super().__init__()
        self.stride = int(stride)
        self.out_channels = int(out_channels)
        self.in_channels = None if in_channels is None else int(in_channels)
        if self.in_channels is not None and self.in_channels > self.out_channels:
            raise ValueError("ShortcutA can only add channels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.in_channels == self.out_channels:
            return x
        extra = self.out_channels - (x.shape[1] if self.in_channels is None else self.in_channels)
        front = extra // 2
        return F.pad(x, (0, 0, 0, 0, front, extra - front))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, in_channels={self.in_channels}, out_channels={self.out_channels}"


def make_shortcut(kind: str, in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Identity when shapes match; otherwise option A (``"A"``) or a 1×1 conv + BN (``"conv"``)."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    if kind == "A":
        return ShortcutA(stride, out_channels, in_channels)
    if kind == "conv":
        return conv_bn_shortcut(in_channels, out_channels, stride)
    raise ValueError(f"shortcut kind {kind!r}; expected 'A' or 'conv'")


class _TwoConvBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = nn.Hardtanh(inplace=False)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2 = nn.Hardtanh(inplace=False)
        self.shortcut = make_shortcut(shortcut, in_channels, out_channels, stride)


class BasicBlock(_TwoConvBlock):
    """Normal structure: one shortcut per block, ``act2(bn2(conv2(act1(bn1(conv1(x))))) + shortcut(x))``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(h)) + self.shortcut(x))


class BiRealBlock(_TwoConvBlock):
    """Bi-Real structure: a real-valued shortcut around *every* binary conv, which keeps real information
    flowing past each sign: ``h = act1(bn1(conv1(x)) + shortcut(x))``, ``act2(bn2(conv2(h)) + h)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.bn1(self.conv1(x)) + self.shortcut(x))
        return self.act2(self.bn2(self.conv2(h)) + h)
