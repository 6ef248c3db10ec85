"""Binary layers (BinaryConv2d, BinaryLinear) and the recipe that configures them."""

from .layers import BinaryConv2d, BinaryLinear, BinaryMixin, binary_modules
from .recipe import BinaryRecipe

__all__ = ["BinaryConv2d", "BinaryLinear", "BinaryMixin", "BinaryRecipe", "binary_modules"]
