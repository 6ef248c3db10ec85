"""Model zoo: float skeletons of the papers' architectures, binarized by ``rbnn.methods.prepare``.

    model = rbnn.models.create("resnet20_bireal", method="rbnn")   # float skeleton -> binary model
    rbnn.models.list_models()                                       # every registered name

Each model carries ``float_layers`` (glob patterns of module names that stay float: stem conv, last Linear,
and the FP downsample convs where the recipe says so) and ``input_size`` (C, H, W).
Add an architecture by decorating a builder with ``@register_model("name")`` in a module of this package;
modules listed in ``_BUILTIN`` are imported here (those absent from the checkout are skipped).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from torch import nn

from ..methods import prepare
from ._registry import INITS, check_init, get_builder, list_models, model_defaults, register_model

_BUILTIN = ("resnet_cifar", "resnet_imagenet", "vgg_small", "small", "reactnet")

for _mod in _BUILTIN:
    if importlib.util.find_spec(f"{__name__}.{_mod}") is not None:
        importlib.import_module(f"{__name__}.{_mod}")


def create(name: str, method: Any = "fp", num_classes: int = 10, in_channels: int | None = None,
           init: str = "reference", *, input_size: tuple[int, ...] | None = None,
           model_kwargs: dict[str, Any] | None = None, **method_overrides: Any) -> nn.Module:
    """Build model ``name`` and binarize it with ``method`` (a method name, a BinaryRecipe, or None/"fp").

    ``in_channels=None`` means the model's own default (1 for the 28×28 small nets, 3 otherwise);
    ``input_size`` ((H, W) or (C, H, W)) sizes the models whose classifier depends on it (VGG-small,
    smallnet). ``method_overrides`` are recipe fields passed to ``prepare``; ``model_kwargs`` go to the
    builder.
    """
    builder = get_builder(name)
    check_init(init)
    kwargs: dict[str, Any] = dict(model_kwargs or {})
    kwargs.update(num_classes=num_classes, init=init)
    if in_channels is not None:
        kwargs["in_channels"] = in_channels
    if input_size is not None:
        if len(input_size) == 3 and in_channels is not None and input_size[0] != in_channels:
            raise ValueError(f"input_size {tuple(input_size)} disagrees with in_channels={in_channels}")
        if len(input_size) == 3 and in_channels is None:
            kwargs["in_channels"] = int(input_size[0])
        kwargs["input_size"] = tuple(input_size)
    model = builder(**kwargs)
    model.model_name = name
    if method is not None:
        prepare(model, method, **method_overrides)
    elif method_overrides:
        raise ValueError(f"method=None takes no binarization options, got {', '.join(method_overrides)}")
    return model


__all__ = ["INITS", "check_init", "create", "get_builder", "list_models", "model_defaults", "register_model"]
