"""A run on disk, read back: the model of a config or a checkpoint, and a run's metrics.

Everything that needs "the model of this run" (eval, export, verify, report, distillation's teacher) imports
this module, not the trainer.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch import nn

from . import models
from .checkpoint import load_checkpoint
from .config import Config, from_dict
from .errors import CheckpointError, ConfigError


def build_model(cfg: Config, num_classes: int, input_size: tuple[int, int, int]) -> nn.Module:
    """The model of ``cfg`` for a dataset with ``num_classes`` classes and ``input_size`` (C, H, W) inputs."""
    try:
        return models.create(cfg.model, method=cfg.method.name, num_classes=num_classes,
                             in_channels=input_size[0], init=cfg.model_init, input_size=input_size,
                             skip=cfg.method.skip, **cfg.method.recipe_overrides())
    except KeyError as e:
        raise ConfigError(str(e).strip("'\"")) from None
    except ValueError as e:
        raise ConfigError(f"model '{cfg.model}' with method '{cfg.method.name}': {e}") from None


def load_run_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Config, dict]:
    """Rebuild the model of a checkpoint (or run dir) and load its weights strictly."""
    state = load_checkpoint(path, map_location="cpu")
    try:
        cfg = from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path}: stored config is invalid ({e})") from None
    ds = state.get("dataset", {})
    num_classes, input_size = ds.get("num_classes", 10), ds.get("input_size", [1, 28, 28])
    if not (isinstance(num_classes, int) and num_classes > 0 and isinstance(input_size, list | tuple)
            and len(input_size) in (1, 3) and all(isinstance(v, int) and v > 0 for v in input_size)):
        raise CheckpointError(f"checkpoint {path}: key 'dataset' holds num_classes={num_classes!r}, "
                              f"input_size={input_size!r}; expected a positive int and 1 or 3 positive ints")
    model = build_model(cfg, num_classes, tuple(input_size))
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not match model '{cfg.model}' with method "
                              f"'{cfg.method.name}': {one_line(e)}") from None
    return model.to(device), cfg, state


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception as one line: load_state_dict's multi-line report becomes 'Missing key(s) ...; ...'."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    text = "; ".join(lines) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: _num(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _num(v: str):
    if v is None or v == "":
        return None
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f
