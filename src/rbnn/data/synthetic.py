"""Deterministic synthetic image classification data (learnable, no files needed).

Each class has a smooth random template (a low-resolution Gaussian pattern upsampled bilinearly to H x W);
a sample is its class template plus a random brightness jitter and per-pixel Gaussian noise, stored as uint8.
Classes are separable by a linear classifier or a small CNN, but the noise keeps a single epoch from being
trivially perfect. Everything is drawn from a ``torch.Generator`` seeded with ``seed``: the same arguments
always give the same bytes. Train and test sets share the templates (the class definitions) and use
disjoint noise streams.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .loader import mix_seed


def class_templates(num_classes: int, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """Float templates (num_classes, C, H, W) with zero mean and unit std per class."""
    c, h, w = shape
    g = torch.Generator().manual_seed(mix_seed(seed, 0xC1A55))
    low = torch.randn(num_classes, c, max(2, (h + 3) // 4), max(2, (w + 3) // 4), generator=g)
    t = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    t = t - t.mean(dim=(1, 2, 3), keepdim=True)
    return t / t.flatten(1).std(dim=1).clamp_min(1e-6).view(-1, 1, 1, 1)


def make_synthetic(n: int, num_classes: int = 10, shape: tuple[int, int, int] = (1, 28, 28), *,
                   seed: int = 0, split: str = "train", noise: float = 0.8,
                   contrast: float = 40.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples -> (images uint8 (n, C, H, W), labels int64 (n,)).

    Labels cycle through the classes in a shuffled order (balanced to within one sample). ``noise`` is the
    per-pixel noise std relative to the template std; ``contrast`` the template std in grey levels.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    templates = class_templates(num_classes, shape, seed)
    g = torch.Generator().manual_seed(mix_seed(seed, 0x5EED, 0 if split == "train" else 1))
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    x = templates[labels]
    x = x * (1.0 + 0.2 * torch.randn(n, 1, 1, 1, generator=g))
    x = x + noise * torch.randn(x.shape, generator=g)
    images = (128.0 + contrast * x).round().clamp(0, 255).to(torch.uint8)
    return images, labels.to(torch.int64)
