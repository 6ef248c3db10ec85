"""Model registry (timm-style): every architecture is one name away.

A builder is a callable ``builder(*, num_classes, init, in_channels=..., input_size=..., **kw) -> nn.Module``
that returns the *float* skeleton; binarization is applied afterwards by ``rbnn.methods.prepare``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

# reference: the reference code's init (RBNN's ResNets: Kaiming-normal, every BatchNorm2d gamma = 1e-8);
# standard: the same weights with every BatchNorm gamma = 1 (the IR-Net code's ResNet-20 init; trains with any
# optimizer); pytorch: torch's defaults. Models whose reference init has gamma = 1 treat standard as reference.
INITS = ("reference", "standard", "pytorch")

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_DEFAULTS: dict[str, dict[str, Any]] = {}

B = TypeVar("B", bound=Callable[..., nn.Module])


def register_model(name: str, defaults: dict[str, Any] | None = None) -> Callable[[B], B]:
    """Decorator: register ``builder`` under ``name`` (a duplicate is an error, not an override).

    ``defaults``: dotted config keys (``{"optim.lr": 0.02}``) that ``rbnn train model=name`` uses in place of
    the global defaults, so that the model trains with nothing else set; a section the user sets any key of
    (``optim=sgd``, ``optim.lr=...``) is the user's alone (``rbnn.config.apply_model_defaults``).
    """

    def wrap(builder: B) -> B:
        if name in _MODELS:
            raise ValueError(f"model {name!r} already registered")
        _MODELS[name] = builder
        _DEFAULTS[name] = dict(defaults or {})
        return builder

    return wrap


def model_defaults(name: str) -> dict[str, Any]:
    """The training defaults model ``name`` was registered with (empty for unknown names)."""
    return dict(_DEFAULTS.get(name, {}))


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered model names, optionally filtered by a glob ``pattern`` (e.g. ``"resnet*"``)."""
    names = sorted(_MODELS)
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else names


def get_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered under ``name``; KeyError listing what exists otherwise."""
    try:
        return _MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None


def check_init(init: str) -> str:
    if init not in INITS:
        raise ValueError(f"init={init!r}; expected one of {', '.join(INITS)}")
    return init


def spatial_size(input_size: tuple[int, ...] | None, default: tuple[int, int]) -> tuple[int, int]:
    """(H, W) from an ``input_size`` given as (H, W) or (C, H, W); ``default`` when None."""
    if input_size is None:
        return default
    size = tuple(int(s) for s in input_size)
    if len(size) not in (2, 3) or min(size) < 1:
        raise ValueError(f"input_size must be (H, W) or (C, H, W) of positive ints, got {input_size!r}")
    return size[-2], size[-1]  # type: ignore[return-value]
