"""A binary layer's parts as registered objects: its weight scale and its input transform.

A recipe names them (``weight_scale="mean_abs"``, ``act_transform="shift"``); the layer resolves the names in
``WEIGHT_SCALES`` / ``INPUT_TRANSFORMS`` and holds one instance of each (``layer.weight_scale``,
``layer.input_transform``). The sign estimators are the third kind of part (``ESTIMATORS``, in
``functional/surrogates.py``: forward sign and closed-form surrogate gradient side by side). Each part knows

- its training forward (what the layer computes with it), and
- how it folds into the packed format: a weight scale gives the per-output-channel float64 multiplier of the
  integer dot product ``sign(x) . sign(w)`` (``fold``) and says whether the bias is multiplied by it too
  (``output_side``: RBNN's lambda scales the layer's output); an input transform gives the packed node's
  ``act_transform`` and arrays (``fold``) in the runtime's vocabulary: ``"none"``, ``"standardize_sample"``, or
  ``"shift"`` with a per-channel ``act_shift`` (any learned per-channel shift folds to this one).

The exporter asks these objects and re-derives nothing, so a part registered from outside the package
(``register_weight_scale`` / ``register_input_transform``, then a recipe naming it) trains, exports and runs
packed with no change inside ``rbnn`` (tests/test_extension.py does exactly that).

State a part learns or keeps (RBNN's lambda, ReBNN's alpha and gamma, the RSign shift) is registered *on the
layer* by the part's constructor, under a flat name (``conv.scale``, ``conv.act_shift``): state_dict keys, the
optimizer's parameter order and ``optim.no_decay`` globs stay those of every checkpoint written so far. So the
parts are plain objects that take the layer as their first argument and hold no tensors (a part keeping a
reference to its layer would break ``nn.DataParallel`` replicas; a part registered as a child module would move
every key).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from ..functional import output_scale
from ..functional.standardized_sign import standardized_sign
from ..functional.surrogates import ESTIMATORS, binarize
from ..functional.transforms import libra_pb_scale, mean_abs_scale, standardize_samples

if TYPE_CHECKING:
    from .layers import BinaryMixin
    from .recipe import BinaryRecipe

# the act_transform values the packed format (runtime/shapes.py) knows; an input transform folds to one of them
PACKED_ACT_TRANSFORMS = ("none", "standardize_sample", "shift")


def channel_view(v: torch.Tensor, like: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """A per-channel vector shaped to broadcast against ``like`` along ``dim`` (0: weights, 1: activations)."""
    return v.reshape(*([1] * dim), -1, *([1] * (like.dim() - dim - 1)))


# ---------------------------------------------------------------------------------------------------------
# weight scales
class WeightScale:
    """sign(w) (the recipe's weight estimator) times a per-output-channel scale; this base has no scale.

    ``w`` is the layer's mixed weight (after the weight transform and the rotation). Subclasses override
    ``scale`` (enough for a scale that is a function of ``w``), or ``quantize`` and ``fold`` together.
    """

    output_side: ClassVar[bool] = False  # True: the multiplier scales the layer's output, bias included

    def __init__(self, layer: BinaryMixin, recipe: BinaryRecipe, torch_default_weight: torch.Tensor | None = None
                 ) -> None:
        """Register the scale's parameters and buffers on ``layer`` (none here). ``torch_default_weight``: the
        weight torch's default init drew for the layer before the float weights were copied in (or None)."""

    def scale(self, layer: BinaryMixin, w: torch.Tensor) -> torch.Tensor | None:
        """The scale multiplying sign(w) in training, broadcastable against ``w``; None for no scale."""
        return None

    def quantize(self, layer: BinaryMixin, w: torch.Tensor) -> torch.Tensor:
        """The binary weight the layer convolves with: scale * sign(w), the estimator's surrogate backward."""
        r = layer.recipe
        b = binarize(w, r.weight_estimator, r.zero, layer.t, layer.k)
        s = self.scale(layer, w)
        return b if s is None else b * s

    def weight_and_bias(self, layer: BinaryMixin, w: torch.Tensor, bias: torch.Tensor | None
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the conv/linear runs with, given the binary weight (an output-side scale is applied here)."""
        return w, bias

    def output(self, layer: BinaryMixin, y: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """The layer's output (an output-side scale attaches its gradient here)."""
        return y

    @torch.no_grad()
    def fold(self, layer: BinaryMixin, w: torch.Tensor) -> torch.Tensor:
        """(C_out,) float64: the multiplier of the packed layer's integer dot product sign(x) . sign(w)."""
        s = self.scale(layer, w)
        if s is None:
            return torch.ones(w.shape[0], dtype=torch.float64, device=w.device)
        return s.detach().reshape(w.shape[0]).double()

    def auxiliary_loss(self, layer: BinaryMixin) -> torch.Tensor | None:
        """A term the trainer adds to the loss (ReBNN's reconstruction term, for logging), or None."""
        return None

    def before_load(self, layer: BinaryMixin, state_dict: dict, prefix: str) -> None:
        """Called before ``layer`` loads ``state_dict`` (keys under ``prefix``): fill in state it lacks."""


class MeanAbs(WeightScale):
    """XNOR-Net: alpha_c = mean|w_c|, differentiated through."""

    def scale(self, layer: BinaryMixin, w: torch.Tensor) -> torch.Tensor:
        return mean_abs_scale(w)


class MeanAbsDetached(WeightScale):
    """Bi-Real: alpha_c = mean|w_c|, detached (magnitude-aware sign)."""

    def scale(self, layer: BinaryMixin, w: torch.Tensor) -> torch.Tensor:
        return mean_abs_scale(w).detach()


class PowerOfTwo(WeightScale):
    """IR-Net's Libra-PB: 2^round(log2 mean|w_c|), detached (a bit shift at inference)."""

    def scale(self, layer: BinaryMixin, w: torch.Tensor) -> torch.Tensor:
        return libra_pb_scale(w)


class LearnedOutputScale(WeightScale):
    """RBNN's learned per-channel lambda (parameter ``scale`` on the layer), initialized to mean|W_c|.

    Applied to the weight and bias (conv(x, lambda b) == lambda conv(x, b), and the weight is small), with its
    gradient taken from the output (see ``functional/output_scale.py``). lambda may be negative.
    """

    output_side = True

    def __init__(self, layer: BinaryMixin, recipe: BinaryRecipe, torch_default_weight: torch.Tensor | None = None
                 ) -> None:
        use_default = recipe.scale_init == "torch_default" and torch_default_weight is not None
        src = torch_default_weight if use_default else layer.weight
        layer.scale = nn.Parameter(mean_abs_scale(src.detach()).reshape(layer.weight.shape[0]).clone())

    def weight_and_bias(self, layer: BinaryMixin, w: torch.Tensor, bias: torch.Tensor | None
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        lam = output_scale.weight_side(layer.scale)
        return w * channel_view(lam, w), None if bias is None else bias * lam

    def output(self, layer: BinaryMixin, y: torch.Tensor, channel_dim: int) -> torch.Tensor:
        return output_scale.output_side(y, layer.scale, channel_dim)

    @torch.no_grad()
    def fold(self, layer: BinaryMixin, w: torch.Tensor) -> torch.Tensor:
        return layer.scale.detach().double().reshape(w.shape[0])


# ---------------------------------------------------------------------------------------------------------
# input transforms
class InputTransform:
    """What a layer does to its input before the sign; this base does nothing (``act_transform="none"``)."""

    def __init__(self, layer: BinaryMixin, recipe: BinaryRecipe) -> None:
        """Register the transform's parameters and buffers on ``layer`` (none here)."""

    def transform(self, layer: BinaryMixin, x: torch.Tensor) -> torch.Tensor:
        """The real-valued input the sign is taken of (the layer's input when it keeps real activations)."""
        return x

    def binarize(self, layer: BinaryMixin, x: torch.Tensor, t: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """sign(transform(x)) with the recipe's activation estimator (t, k: the activation schedule values)."""
        r = layer.recipe
        return binarize(self.transform(layer, x), r.act_estimator, r.zero, t, k)

    @torch.no_grad()
    def fold(self, layer: BinaryMixin) -> tuple[str, dict[str, torch.Tensor]]:
        """The packed node's ``act_transform`` (one of ``PACKED_ACT_TRANSFORMS``) and its arrays by name."""
        return "none", {}


class StandardizeSample(InputTransform):
    """RBNN's code: per-sample (a - mean) / (std + eps); fused with the sign into one autograd node."""

    def transform(self, layer: BinaryMixin, x: torch.Tensor) -> torch.Tensor:
        return standardize_samples(x, eps=layer.recipe.eps)

    def binarize(self, layer: BinaryMixin, x: torch.Tensor, t: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        r = layer.recipe  # same values and gradients as the composed version, far fewer passes
        return standardized_sign(x, r.act_estimator, r.zero, r.eps, t, k)

    @torch.no_grad()
    def fold(self, layer: BinaryMixin) -> tuple[str, dict[str, torch.Tensor]]:
        return "standardize_sample", {}


class ChannelShift(InputTransform):
    """ReActNet's RSign: a learnable per-input-channel shift (parameter ``act_shift`` on the layer), zero at init."""

    def __init__(self, layer: BinaryMixin, recipe: BinaryRecipe) -> None:
        w = layer.weight
        in_ch = w.shape[1] * getattr(layer, "groups", 1)
        layer.act_shift = nn.Parameter(torch.zeros(in_ch, dtype=w.dtype, device=w.device))

    def transform(self, layer: BinaryMixin, x: torch.Tensor) -> torch.Tensor:
        return x + channel_view(layer.act_shift, x, dim=1)

    @torch.no_grad()
    def fold(self, layer: BinaryMixin) -> tuple[str, dict[str, torch.Tensor]]:
        return "shift", {"act_shift": layer.act_shift.detach()}


# ---------------------------------------------------------------------------------------------------------
# registries
WEIGHT_SCALES: dict[str, type[WeightScale]] = {}
INPUT_TRANSFORMS: dict[str, type[InputTransform]] = {}


def _register(registry: dict, kind: str, base: type, name: str, cls: type) -> type:
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"a {kind} must be a subclass of {base.__name__}, got {cls!r}")
    if name in registry:
        raise ValueError(f"{kind} {name!r} already registered")
    registry[name] = cls
    return cls


def register_weight_scale(name: str, cls: type[WeightScale]) -> type[WeightScale]:
    """Make ``cls`` the weight scale a recipe names ``name`` (``BinaryRecipe(weight_scale=name)``)."""
    return _register(WEIGHT_SCALES, "weight scale", WeightScale, name, cls)


def register_input_transform(name: str, cls: type[InputTransform]) -> type[InputTransform]:
    """Make ``cls`` the input transform a recipe names ``name`` (``BinaryRecipe(act_transform=name)``)."""
    return _register(INPUT_TRANSFORMS, "input transform", InputTransform, name, cls)


register_weight_scale("none", WeightScale)
register_weight_scale("mean_abs", MeanAbs)
register_weight_scale("mean_abs_detached", MeanAbsDetached)
register_weight_scale("pow2", PowerOfTwo)
register_weight_scale("learned_output", LearnedOutputScale)
# "rebnn" and "rebnn_released" are registered by rbnn.nn.rebnn (imported by rbnn.nn)
register_input_transform("none", InputTransform)
register_input_transform("standardize_sample", StandardizeSample)
register_input_transform("shift", ChannelShift)

__all__ = [
    "ESTIMATORS", "INPUT_TRANSFORMS", "PACKED_ACT_TRANSFORMS", "WEIGHT_SCALES", "ChannelShift", "InputTransform",
    "LearnedOutputScale", "MeanAbs", "MeanAbsDetached", "PowerOfTwo", "StandardizeSample", "WeightScale",
    "channel_view", "register_input_transform", "register_weight_scale",
]
