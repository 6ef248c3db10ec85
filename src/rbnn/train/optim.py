"""Optimizers with per-group weight decay, and learning-rate schedules as pure functions of progress."""

from __future__ import annotations

import fnmatch
import math

import torch
from torch import nn

from ..config import OptimConfig, ScheduleConfig


def param_groups(model: nn.Module, weight_decay: float, no_decay: list[str]) -> list[dict]:
    """Two groups: parameters matching a ``no_decay`` glob get weight decay 0, the rest ``weight_decay``."""
    decay, plain, plain_names = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if any(fnmatch.fnmatchcase(name, pat) for pat in no_decay):
            plain.append(p)
            plain_names.append(name)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"}]
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0, "name": "no_decay"})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.no_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=betas)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas)
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def lr_factor(epoch: int, batch: int, steps_per_epoch: int, total_epochs: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the base lr at (epoch, batch).

    Warm-up is linear: with epoch granularity epochs 0..W-1 use (e+1)/W (the RBNN reference: 0.02, 0.04, ...
    0.1 for W=5); with step granularity it ramps per iteration. After warm-up: cosine / linear decay to
    ``min_lr`` over the remaining epochs, step decay at ``milestones``, or constant.
    """
    if cfg.granularity == "epoch":
        p, delta = float(epoch), 1.0
    else:
        p, delta = epoch + batch / max(steps_per_epoch, 1), 1.0 / max(steps_per_epoch, 1)
    w = cfg.warmup_epochs
    if w > 0 and p < w:
        return min(1.0, (p + delta) / w)
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "step":
        return cfg.gamma ** sum(1 for m in cfg.milestones if p >= m)
    q = min(max((p - w) / max(total_epochs - w, 1e-12), 0.0), 1.0)
    if cfg.name == "cosine":
        base = 0.5 * (1.0 + math.cos(math.pi * q))
    elif cfg.name == "linear":
        base = 1.0 - q
    else:
        raise ValueError(f"unknown schedule {cfg.name!r}")
    return cfg.min_lr + (1.0 - cfg.min_lr) * base


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr
