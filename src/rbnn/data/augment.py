"""Batched tensor augmentation driven by an explicit ``torch.Generator`` (no per-sample Python).

All functions take a batch ``x`` of shape (N, C, H, W) (uint8 or float) and return a new batch of the same
shape and dtype. Randomness comes only from the generator passed in, so a batch is reproduced exactly by
re-seeding the generator. Cropping and flipping are done on the raw uint8 images before normalization, as
torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip`` do in the reference CIFAR pipelines
(the padding is black, value 0, before normalization).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def crop_at(x: torch.Tensor, pad: int, offsets: torch.Tensor) -> torch.Tensor:
    """Zero-pad ``x`` by ``pad`` on every side and crop the original size at per-sample ``offsets``.

    ``offsets`` is an int64 tensor (N, 2) of (top, left) in ``[0, 2*pad]``; offset (pad, pad) is the identity.
    """
    n, c, h, w = x.shape
    if pad <= 0 or n == 0:
        return x.clone()
    xp = F.pad(x, (pad, pad, pad, pad))
    hp, wp = h + 2 * pad, w + 2 * pad
    # flat index of every output pixel in its padded image; one gather for the whole batch
    rows = offsets[:, 0, None, None] + torch.arange(h)[None, :, None]
    cols = offsets[:, 1, None, None] + torch.arange(w)[None, None, :]
    index = (rows * wp + cols).view(n, 1, h * w).expand(n, c, h * w)
    return xp.view(n, c, hp * wp).gather(2, index).view(n, c, h, w)


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the original size from the zero-padded batch (``RandomCrop(size, padding=pad)``)."""
    if pad <= 0:
        return x.clone()
    offsets = torch.randint(0, 2 * pad + 1, (x.shape[0], 2), generator=generator)
    return crop_at(x, pad, offsets)


def flip_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror (left-right) the samples where the bool ``mask`` (N,) is True."""
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def random_flip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Horizontal flip of each sample with probability ``p``."""
    mask = torch.rand(x.shape[0], generator=generator) < p
    return flip_where(x, mask)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (0..255) or float (0..1) batch -> float32 ``(x/255 - mean) / std`` per channel."""
    return apply_normalization(x, *normalization_constants(mean, std, uint8=x.dtype == torch.uint8))


def normalization_constants(mean, std, uint8: bool = True, device: torch.device | str | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with ``normalize(x) == x * scale - shift``; made once per loader on its device, so a
    batch normalized on a GPU copies nothing from the host."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    scale = 1.0 / (255.0 * std_t) if uint8 else 1.0 / std_t
    return scale.to(device), (mean_t / std_t).to(device)


def apply_normalization(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    out = x.to(torch.float32)
    out.mul_(scale).sub_(shift)
    return out


@dataclass(frozen=True)
class BatchAugment:
    """Pad-and-crop plus optional horizontal flip, applied to a whole batch at once."""

    pad: int = 0
    flip: bool = False

    @property
    def active(self) -> bool:
        return self.pad > 0 or self.flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.pad > 0:
            x = random_crop(x, self.pad, generator)
        if self.flip:
            x = random_flip(x, generator)
        return x


def default_pad(size: int) -> int:
    """Padding for random crops: 4 for 32x32 (the CIFAR convention), 2 for smaller images such as 28x28."""
    return 4 if size >= 32 else 2
