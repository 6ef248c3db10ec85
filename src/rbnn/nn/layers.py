"""BinaryConv2d and BinaryLinear: drop-in subclasses of nn.Conv2d / nn.Linear driven by a BinaryRecipe.

A layer is thin: it holds its recipe's components (``weight_scale``, ``input_transform``: registered objects,
see ``components.py``; the sign estimators of ``functional/surrogates.py``) and RBNN's rotation, and calls them.
All state that matters is a Parameter or a buffer (t, k, R1, R2, theta, the components' state), so
``state_dict`` round-trips and resume is exact. Schedules and rotation updates are applied from outside
``forward`` through ``set_epoch`` and ``update_rotation`` (called by training callbacks), never inside it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from ..functional import schedules
from ..functional.transforms import standardize_filters
from ..rotation import factorize, haar_orthogonal, optimize_rotation, rotate
from .components import INPUT_TRANSFORMS, WEIGHT_SCALES, InputTransform, WeightScale
from .recipe import BinaryRecipe


class BinaryMixin:
    """The binarization logic shared by BinaryConv2d and BinaryLinear."""

    recipe: BinaryRecipe
    weight: nn.Parameter
    weight_scale: WeightScale
    input_transform: InputTransform

    # ---- construction -------------------------------------------------------------------------
    def _init_binary(self, recipe: BinaryRecipe, torch_default_weight: torch.Tensor | None = None) -> None:
        """``torch_default_weight``: the weight torch's default init gave this layer before the float weights
        were copied in (None: ``self.weight`` still holds it); RBNN's ``scale_init="torch_default"`` reads it."""
        self.recipe = recipe
        out_ch = self.weight.shape[0]
        n = self.weight[0].numel()
        dev, dt = self.weight.device, self.weight.dtype
        self.register_buffer("t", torch.tensor(recipe.t_min, dtype=dt, device=dev))
        self.register_buffer("k", torch.tensor(max(1.0 / recipe.t_min, 1.0), dtype=dt, device=dev))
        if recipe.rotation:
            self.n1, self.n2 = factorize(n)
            self.register_buffer("R1", haar_orthogonal(self.n1, dtype=dt).to(dev))
            self.register_buffer("R2", haar_orthogonal(self.n2, dtype=dt).to(dev))
            if recipe.adjustable:
                self.theta = nn.Parameter(torch.full((out_ch,), recipe.theta_init, dtype=dt, device=dev))
        # the components register their state on the layer, in this order (the parameter order of checkpoints)
        self.weight_scale = WEIGHT_SCALES[recipe.weight_scale](self, recipe, torch_default_weight)
        self.input_transform = INPUT_TRANSFORMS[recipe.act_transform](self, recipe)
        self._register_load_state_dict_pre_hook(self._before_load)

    def _before_load(self, state_dict: dict, prefix: str, *args) -> None:
        """torch's load pre-hook: lets the weight scale complete a state dict that lacks its state."""
        self.weight_scale.before_load(self, state_dict, prefix)

    @classmethod
    def from_float(cls, module: nn.Module, recipe: BinaryRecipe):
        """Build a binary layer with ``module``'s shape and weights (the float module is left untouched)."""
        raise NotImplementedError

    # ---- schedule and rotation (called from callbacks) ----------------------------------------
    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Set t and k for this epoch (log-linear t from t_min to t_max, k = max(1/t, 1))."""
        t, k = schedules.tk_schedule(epoch, total_epochs, self.recipe.t_min, self.recipe.t_max)
        self.t.fill_(t)
        self.k.fill_(k)

    def latent_weight(self) -> torch.Tensor:
        """The weight after the recipe's transform (standardized for IR-Net/RBNN), before rotation."""
        w = self.weight
        if self.recipe.weight_transform == "standardize":
            w = standardize_filters(w, eps=self.recipe.eps)
        return w

    @torch.no_grad()
    def update_rotation(self, cycles: int | None = None) -> None:
        """RBNN: run the alternating B/R1/R2 optimization on the detached latent weight (warm start), in the
        layer's precision: float64 for a float64 layer, float32 otherwise."""
        if not self.recipe.rotation:
            return
        X = self.latent_weight().detach().reshape(-1, self.n1, self.n2)
        dtype = torch.float64 if self.R1.dtype == torch.float64 else torch.float32
        R1, R2 = optimize_rotation(X, self.R1, self.R2, self.recipe.rotation_cycles if cycles is None else cycles,
                                   compute_dtype=dtype)
        self.R1.copy_(R1)
        self.R2.copy_(R2)

    def alpha(self) -> torch.Tensor | None:
        """RBNN's per-channel mix alpha = |sin theta| (None when the layer has no adjustable rotation)."""
        if self.recipe.rotation and self.recipe.adjustable:
            return torch.sin(self.theta).abs()
        return None

    # ---- weight path ---------------------------------------------------------------------------
    def mixed_weight(self) -> torch.Tensor:
        """The real-valued weight whose sign is the binary weight (w-tilde for RBNN)."""
        w = self.latent_weight()
        if not self.recipe.rotation:
            return w
        # the rotation runs in the weight's dtype: under bf16 autocast its matmuls would flip ~0.1 % of the signs
        dev = w.device.type
        with torch.autocast(dev, enabled=False) if torch.is_autocast_enabled(dev) else nullcontext():
            rotated = rotate(w.reshape(-1, self.n1, self.n2), self.R1, self.R2).reshape(w.shape)
        if self.recipe.rotation_grad == "stop":
            rotated = rotated.detach()
        if not self.recipe.adjustable:
            return rotated
        a = self.alpha().reshape(-1, *([1] * (w.dim() - 1)))
        return w + a * (rotated - w)

    def binary_weight(self) -> torch.Tensor:
        """The weight the layer convolves with: (scale *) sign(mixed weight), surrogate in the backward."""
        if self.recipe.weight_estimator is None:  # real-valued weights (W32A1)
            return self.mixed_weight()
        return self.weight_scale.quantize(self, self.mixed_weight())

    # ---- input path ----------------------------------------------------------------------------
    def binary_input(self, x: torch.Tensor) -> torch.Tensor:
        """sign(input transform(x)) with the activation estimator (the transformed x for real activations)."""
        r = self.recipe
        if r.act_estimator is None:
            return self.input_transform.transform(self, x)
        if r.act_rule == "rbnn":
            return self.input_transform.binarize(self, x, torch.clamp(self.t, min=1.0), torch.ones_like(self.k))
        return self.input_transform.binarize(self, x, self.t, self.k)

    def weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the layer's conv/linear runs with (an output-side scale, RBNN's lambda, is applied to the weight
        and bias here, and gets its gradient from the output in ``scaled_output``)."""
        return self.weight_scale.weight_and_bias(self, self.binary_weight(), self.bias)

    def scaled_output(self, y: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """The layer's output, carrying an output-side scale's gradient."""
        return self.weight_scale.output(self, y, channel_dim)

    def auxiliary_loss(self) -> torch.Tensor | None:
        """The weight scale's term for the training loss (ReBNN's reconstruction value), or None."""
        return self.weight_scale.auxiliary_loss(self)

    def binary_extra_repr(self) -> str:
        r = self.recipe
        parts = [f"w={r.weight_transform}/{r.weight_estimator}/{r.weight_scale}",
                 f"a={r.act_transform}/{r.act_estimator}"]
        if r.rotation:
            parts.append(f"rotation=({self.n1}x{self.n2}, grad={r.rotation_grad}, adjustable={r.adjustable})")
        return ", ".join(parts)


class BinaryConv2d(nn.Conv2d, BinaryMixin):
    """A Conv2d whose weights and inputs are binarized by a BinaryRecipe.

    Padding is zero-padding applied *after* input binarization (as in every reference code), so border taps
    see 0; the packed engine reproduces this exactly.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = False, recipe: BinaryRecipe | None = None, **kw) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, **kw)
        if self.padding_mode != "zeros":
            raise ValueError("BinaryConv2d supports padding_mode='zeros' only")
        self._init_binary(recipe or BinaryRecipe())

    @classmethod
    def from_float(cls, module: nn.Conv2d, recipe: BinaryRecipe) -> BinaryConv2d:
        new = cls.__new__(cls)
        nn.Conv2d.__init__(new, module.in_channels, module.out_channels, module.kernel_size, module.stride,
                           module.padding, module.dilation, module.groups, module.bias is not None,
                           module.padding_mode, device=module.weight.device, dtype=module.weight.dtype)
        # torch's default init, drawn by __init__ (as the reference's layer draws it) and overwritten below
        default = new.weight.detach().clone() if recipe.scale_init == "torch_default" else None
        with torch.no_grad():
            new.weight.copy_(module.weight)
            if module.bias is not None:
                new.bias.copy_(module.bias)
        new._init_binary(recipe, default)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, bias = self.weight_and_bias()
        return self.scaled_output(self._conv_forward(self.binary_input(x), w, bias), 1)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", " + self.binary_extra_repr()


class BinaryLinear(nn.Linear, BinaryMixin):
    """A Linear layer whose weights and inputs are binarized by a BinaryRecipe."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 recipe: BinaryRecipe | None = None, **kw) -> None:
        super().__init__(in_features, out_features, bias, **kw)
        self._init_binary(recipe or BinaryRecipe())

    @classmethod
    def from_float(cls, module: nn.Linear, recipe: BinaryRecipe) -> BinaryLinear:
        new = cls.__new__(cls)
        nn.Linear.__init__(new, module.in_features, module.out_features, module.bias is not None,
                           device=module.weight.device, dtype=module.weight.dtype)
        # torch's default init, drawn by __init__ (as the reference's layer draws it) and overwritten below
        default = new.weight.detach().clone() if recipe.scale_init == "torch_default" else None
        with torch.no_grad():
            new.weight.copy_(module.weight)
            if module.bias is not None:
                new.bias.copy_(module.bias)
        new._init_binary(recipe, default)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, bias = self.weight_and_bias()
        return self.scaled_output(F.linear(self.binary_input(x), w, bias), -1)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", " + self.binary_extra_repr()


def binary_modules(model: nn.Module) -> list[tuple[str, BinaryMixin]]:
    """(name, module) for every binary layer of ``model``, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BinaryMixin)]


def auxiliary_losses(model: nn.Module) -> list[Callable[[], torch.Tensor]]:
    """The extra loss terms the trainer adds: ``auxiliary_loss`` of every binary layer whose weight scale has
    one (ReBNN) and of any other module that defines the method."""
    return [m.auxiliary_loss for m in model.modules() if callable(getattr(m, "auxiliary_loss", None))
            and not (isinstance(m, BinaryMixin) and m.auxiliary_loss() is None)]


