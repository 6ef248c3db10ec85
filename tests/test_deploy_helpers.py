"""Shared helpers for the deploy tests: random-but-realistic binary models."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rbnn.methods import prepare


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN running stats / affine params, RBNN theta (alpha != 1) and lambda (some negative),
    ReAct-style shifts; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)

    def rn(t: torch.Tensor, mean: float, std: float) -> torch.Tensor:
        return (torch.randn(t.shape, generator=g) * std + mean).to(t.dtype)

    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d | nn.BatchNorm1d):
                mod.running_mean.copy_(rn(mod.running_mean, 0.0, 0.3))
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) * 1.5 + 0.5)
                mod.weight.copy_(rn(mod.weight, 1.0, 0.5))
                mod.bias.copy_(rn(mod.bias, 0.0, 0.3))
            theta = getattr(mod, "theta", None)
            if isinstance(theta, nn.Parameter):
                theta.copy_(torch.rand(theta.shape, generator=g) * 1.2 + 0.2)
            scale = getattr(mod, "scale", None)
            if isinstance(scale, nn.Parameter):
                scale.copy_(rn(scale, 0.0, 1.0))
            shift = getattr(mod, "act_shift", None)
            if isinstance(shift, nn.Parameter):
                shift.copy_(rn(shift, 0.0, 0.2))
    return model.eval()


class TinyNet(nn.Module):
    """Stem + three binary convs (stride 2, odd channels, a residual) + BN1d + float Linear."""

    def __init__(self, c1: int = 16, c2: int = 24, in_ch: int = 3, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.act = nn.Hardtanh()
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, stride=2, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.conv3 = nn.Conv2d(c2, c2, 3, padding=1, bias=True)
        self.bn3 = nn.BatchNorm2d(c2)
        self.conv4 = nn.Conv2d(c2, c2, (1, 3), padding=(0, 2), dilation=(1, 2))
        self.pool = nn.MaxPool2d(2, padding=1)
        self.bn4 = nn.BatchNorm2d(c2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.bnf = nn.BatchNorm1d(c2)
        self.fc = nn.Linear(c2, classes)

    def forward(self, x):
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        x = self.act(self.bn3(self.conv3(x)) + x)
        x = self.act(self.bn4(self.pool(self.conv4(x))))
        return self.fc(self.bnf(self.flat(self.gap(x))))


class MLP(nn.Module):
    def __init__(self, d_in: int = 70, hidden: int = 100, classes: int = 7) -> None:
        super().__init__()
        self.fc0 = nn.Linear(d_in, hidden)
        self.bn0 = nn.BatchNorm1d(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.act = nn.Hardtanh()
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        x = self.act(self.bn0(self.fc0(x)))
        x = self.act(self.bn1(self.fc1(x)))
        return self.fc2(x)


def tiny(method, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return randomize(prepare(TinyNet(**kw), method), seed)


def mlp(method, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize(prepare(MLP(), method, skip=["fc0", "fc2"]), seed)


def rand_input(shape, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)
