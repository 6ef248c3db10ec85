"""Binary layers (BinaryConv2d, BinaryLinear), their registered components and the recipe that names them."""

from . import rebnn  # noqa: F401  (registers the "rebnn" and "rebnn_released" weight scales)
from .components import (
    INPUT_TRANSFORMS,
    WEIGHT_SCALES,
    InputTransform,
    WeightScale,
    register_input_transform,
    register_weight_scale,
)
from .layers import BinaryConv2d, BinaryLinear, BinaryMixin, auxiliary_losses, binary_modules
from .recipe import BinaryRecipe

__all__ = [
    "INPUT_TRANSFORMS", "WEIGHT_SCALES", "BinaryConv2d", "BinaryLinear", "BinaryMixin", "BinaryRecipe",
    "InputTransform", "WeightScale", "auxiliary_losses", "binary_modules", "register_input_transform",
    "register_weight_scale",
]
