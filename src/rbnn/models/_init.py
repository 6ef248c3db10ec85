"""Weight-init conventions of the reference codes (spec §1.8), applied to the float skeleton before prepare.

They are applied before binarization because ``prepare`` copies float weights into the binary layers (and
RBNN's learned scale is initialised from them), so the init must already be in place.
"""

from __future__ import annotations

import math

from torch import nn


def kaiming_init(model: nn.Module, bn2d_weight: float = 1e-8, linear: bool = True) -> None:
    """Kaiming-normal convs (and Linear if ``linear``); every BatchNorm2d weight = ``bn2d_weight``, bias 0.

    RBNN's code sets the BN weight to 1e-8, so every residual branch starts near zero (an identity-like
    network); IR-Net's code never touches BatchNorm (weight 1, the ``"standard"`` init). With 1e-8 the BN
    weights must grow by orders of magnitude before the branches count, which suits SGD at lr 0.1 (steps of
    ~lr) but not Adam at 2e-3: that is why it is the paper recipes' init, not the command line's default.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d) or (linear and isinstance(m, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, bn2d_weight)
            nn.init.zeros_(m.bias)


def vgg_init(model: nn.Module) -> None:
    """VGG-small: conv ~ N(0, 2/(k²·C_out)), BN weight 1 / bias 0, Linear ~ N(0, 0.01²) with bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
