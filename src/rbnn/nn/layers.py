"""BinaryConv2d and BinaryLinear: drop-in subclasses of nn.Conv2d / nn.Linear driven by a BinaryRecipe.

All state that matters is a Parameter or a buffer (t, k, R1, R2, theta, scales), so ``state_dict`` round-trips
and resume is exact. Schedules and rotation updates are applied from outside ``forward`` through
``set_epoch`` and ``update_rotation`` (called by training callbacks), never inside it.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from ..functional import output_scale, schedules
from ..functional.standardized_sign import standardized_sign
from ..functional.surrogates import binarize
from ..functional.transforms import libra_pb_scale, mean_abs_scale, standardize_filters, standardize_samples
from ..rotation import factorize, haar_orthogonal, optimize_rotation, rotate
from .recipe import BinaryRecipe


class BinaryMixin:
    """The binarization logic shared by BinaryConv2d and BinaryLinear."""

    recipe: BinaryRecipe
    weight: nn.Parameter

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
        if recipe.weight_scale == "learned_output":
            # RBNN's lambda: initialized to mean|W_c| at construction, learnable, not detached.
            src = self.weight if recipe.scale_init == "weights" or torch_default_weight is None \
                else torch_default_weight
            self.scale = nn.Parameter(mean_abs_scale(src.detach()).reshape(out_ch).clone())
        if recipe.weight_scale in ("rebnn", "rebnn_released"):
            from .rebnn import init_rebnn_state

            init_rebnn_state(self)
        if recipe.act_transform == "shift":
            in_ch = self.weight.shape[1] * getattr(self, "groups", 1)
            self.act_shift = nn.Parameter(torch.zeros(in_ch, dtype=dt, device=dev))

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
        r = self.recipe
        if r.weight_estimator is None:  # real-valued weights (W32A1)
            return self.mixed_weight()
        if r.weight_scale in ("rebnn", "rebnn_released"):
            from .rebnn import rebnn_weight

            return rebnn_weight(self)
        w = self.mixed_weight()
        b = binarize(w, r.weight_estimator, r.zero, self.t, self.k)
        if r.weight_scale == "mean_abs":
            return b * mean_abs_scale(w)
        if r.weight_scale == "mean_abs_detached":
            return b * mean_abs_scale(w).detach()
        if r.weight_scale == "pow2":
            return b * libra_pb_scale(w)
        return b

    # ---- input path ----------------------------------------------------------------------------
    def binary_input(self, x: torch.Tensor) -> torch.Tensor:
        r = self.recipe
        if r.act_rule == "rbnn":
            t = torch.clamp(self.t, min=1.0)
            k = torch.ones_like(self.k)
        else:
            t, k = self.t, self.k
        if r.act_transform == "standardize_sample":
            if r.act_estimator is not None:  # fused: same values and gradients, far fewer passes
                return standardized_sign(x, r.act_estimator, r.zero, r.eps, t, k)
            x = standardize_samples(x, eps=r.eps)
        elif r.act_transform == "shift":
            x = x + self.act_shift.reshape(1, -1, *([1] * (x.dim() - 2)))
        if r.act_estimator is None:
            return x
        return binarize(x, r.act_estimator, r.zero, t, k)

    def weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the layer's conv/linear runs with. RBNN's learned per-channel output scale lambda is applied to
        the weight (and bias) rather than to the output: conv(x, b) * lambda == conv(x, lambda * b), and the
        weight is tiny next to the activation tensor, so this saves a forward and two backward passes. While
        training, lambda's gradient comes from the output instead (``scaled_output``; see
        ``functional/output_scale.py``): from the weight it would be ~70x noisier in float32."""
        w, bias = self.binary_weight(), self.bias
        if self.recipe.weight_scale == "learned_output":
            lam = output_scale.weight_side(self.scale)
            w = w * lam.reshape(-1, *([1] * (w.dim() - 1)))
            bias = None if bias is None else bias * lam
        return w, bias

    def scaled_output(self, y: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """The layer's output, carrying lambda's gradient when the recipe learns an output scale."""
        if self.recipe.weight_scale == "learned_output":
            return output_scale.output_side(y, self.scale, channel_dim)
        return y

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
        y = F.conv2d(self.binary_input(x), w, bias, self.stride, self.padding, self.dilation, self.groups)
        return self.scaled_output(y, 1)

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


