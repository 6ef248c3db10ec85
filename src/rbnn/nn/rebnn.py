"""ReBNN (Xu et al., AAAI 2023): learnable weight scale + weighted reconstruction loss with an adaptive γ.

Two weight binarizers, selected by ``recipe.weight_scale``:

``"rebnn"`` (the paper, Eq. 3.144–3.152)
    ŵ = α ⊙ sign(w), α learnable per output channel (``rebnn_alpha``, initialized to mean|w_c|). The custom
    backward is the gradient of ``L_task + (γ/2)·||w − α b||²`` with the sign's surrogate in the task term:

        δw = ∂L/∂ŵ · α · e(w) + γ_c (w − α b)              e = 1{|w| ≤ 1} (clipped_ste) or 1 (ste)
        δα_c = Σ_j ∂L/∂ŵ_cj · b_cj − γ_c Σ_j (w_cj − α_c b_cj) b_cj

    The reconstruction term acts only through this backward; ``auxiliary_loss()`` returns its value
    *detached*, for logging (the engine adds it to the loss, which then changes no gradient).

``"rebnn_released"`` (the released code)
    ŵ = 0.02·|s_c|·sign(w), ``rebnn_s`` ~ randn. Identity STE and the latent w in the scale's task term:

        δw = S·g + γ (w − S b),   δS = Σ g ⊙ w − γ Σ (w − S b) ⊙ b,   b = 0.02·sign(w), S = |s|

    then through the abs by autograd. γ ≡ ``recipe.gamma`` (2e-4), as the released code's swapped clamp gives.

γ (buffer ``gamma``, shape (C_out,)). ``gamma_mode="constant"``: γ ≡ ``recipe.gamma``. ``"adaptive"``
(paper Eq. 3.150, with a real clamp): in ``on_after_backward`` of iteration t (after ``loss.backward()``,
before ``optimizer.step()``) the layer sets

    γ_c ← clamp( flip_c(w_{t−1} → w_t) · max_j |∂L/∂ŵ_{t,cj}| ,  gamma_min, gamma )

and that γ is used by the backward of iteration t+1. ``flip_c`` is the fraction of channel c's weights
whose sign differs from ``prev_sign`` (int8 buffer holding sign(w_{t−1})), which is then set to sign(w_t).
Eq. 3.150 pairs flip(t → t+1) with the gradient at t; we use the flip that is already known when γ must
be fixed (one iteration older), so nothing is mutated inside ``forward``. Under DDP the captured
max|∂L/∂ŵ| is all-reduced with MAX, so γ is identical on every rank (the weights, hence the flips, are).

State is all Parameters and buffers (``rebnn_alpha`` / ``rebnn_s``, ``gamma``, ``prev_sign``), so
``state_dict`` round-trips and resume is exact. When a state dict carrying ``weight`` but no scale is loaded
(stage 1 → stage 2 through ``init_from``), α is re-initialized to mean|w_c| of the *loaded* weight and
``prev_sign`` to its sign (the released scale ``rebnn_s`` stays randn, as in the released code).

Both are weight-scale components (``rbnn.nn.components``), registered here under their recipe names: the layer
holds one as ``layer.weight_scale``, which owns the weight path, the fold into the packed format (``fold``: the
per-channel α or 0.02·|s|), ``auxiliary_loss`` and ``on_after_backward``; the trainer reaches them through
``rbnn.nn.layers.auxiliary_losses`` and :func:`after_backward`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..functional.sign import sign
from .components import WeightScale, register_weight_scale

if TYPE_CHECKING:
    from .layers import BinaryMixin
    from .recipe import BinaryRecipe

GAMMA_MODES = ("adaptive", "constant")
RELEASED_BIN = 0.02  # the released code's constant multiplying sign(w)


def binarizes_weights(recipe: BinaryRecipe) -> bool:
    """False for W32A1 recipes (real weights): such a layer keeps no ReBNN state."""
    return recipe.weight_estimator is not None


def _channel_view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def _channel_sum(x: torch.Tensor) -> torch.Tensor:
    return x.sum(dim=tuple(range(1, x.dim())))


def _channel_absmax(x: torch.Tensor) -> torch.Tensor:
    return x.abs().amax(dim=tuple(range(1, x.dim())))


# ---------------------------------------------------------------------------------------------------------
# autograd Functions
class ReBNNWeight(torch.autograd.Function):
    """ŵ = α ⊙ sign(w); backward = task surrogate + γ-weighted reconstruction gradient (paper)."""

    @staticmethod
    def forward(ctx, w, alpha, gamma, zero: int, clip: bool, stash):
        b = sign(w, zero)
        ctx.save_for_backward(w, alpha, gamma, b)
        ctx.clip, ctx.stash = clip, stash
        return _channel_view(alpha, w) * b

    @staticmethod
    def backward(ctx, g):
        w, alpha, gamma, b = ctx.saved_tensors
        _capture(ctx.stash, g)
        a, gm = _channel_view(alpha, w), _channel_view(gamma, w)
        r = w - a * b
        task_w = g * a
        if ctx.clip:
            task_w = task_w * (w.abs() <= 1).to(g.dtype)
        dw = task_w + gm * r
        dalpha = _channel_sum(g * b) - gamma * _channel_sum(r * b)
        return dw, dalpha, None, None, None, None


class ReBNNReleasedWeight(torch.autograd.Function):
    """ŵ = S ⊙ 0.02·sign(w) with S = |s| (computed outside); the released code's backward."""

    @staticmethod
    def forward(ctx, w, S, gamma, zero: int, stash):
        b = RELEASED_BIN * sign(w, zero)
        ctx.save_for_backward(w, S, gamma, b)
        ctx.stash = stash
        return _channel_view(S, w) * b

    @staticmethod
    def backward(ctx, g):
        w, S, gamma, b = ctx.saved_tensors
        _capture(ctx.stash, g)
        s, gm = _channel_view(S, w), _channel_view(gamma, w)
        r = w - s * b
        dw = s * g + gm * r
        dS = _channel_sum(g * w) - gamma * _channel_sum(r * b)
        return dw, dS, None, None, None


def _capture(stash: dict | None, g: torch.Tensor) -> None:
    """Keep max_j |∂L/∂ŵ_cj| of this backward (max over several backwards within one iteration)."""
    if stash is None:
        return
    m = _channel_absmax(g.detach())
    prev = stash.get("grad_absmax")
    stash["grad_absmax"] = m if prev is None else torch.maximum(prev, m)


# ---------------------------------------------------------------------------------------------------------
# pure functions (tested directly)
def flip_fraction(prev_sign: torch.Tensor, cur_sign: torch.Tensor) -> torch.Tensor:
    """Per output channel: the fraction of weights whose sign differs (first factor of Eq. 3.150)."""
    return (prev_sign != cur_sign).to(torch.float32).flatten(1).mean(1)


def gamma_rule(flip: torch.Tensor, grad_absmax: torch.Tensor, gamma_min: float,
               gamma_max: float) -> torch.Tensor:
    """Eq. 3.150 with a correct clamp: clamp(flip_c · max_j|∂L/∂ŵ_cj|, gamma_min, gamma_max)."""
    if gamma_min > gamma_max:
        raise ValueError(f"need gamma_min <= gamma, got gamma_min={gamma_min}, gamma={gamma_max}")
    return torch.clamp(flip.to(grad_absmax.dtype) * grad_absmax, min=gamma_min, max=gamma_max)


def sign_int8(w: torch.Tensor) -> torch.Tensor:
    """sign(w) as int8 with +1 at 0 (the flip bookkeeping's convention, whatever ``recipe.zero`` is)."""
    return torch.where(w >= 0, 1, -1).to(torch.int8)


# ---------------------------------------------------------------------------------------------------------
# the weight-scale components
class _ReBNNScale(WeightScale):
    """Shared by both ReBNN scales: γ (buffer ``gamma``), ``prev_sign``, the gradient stash, the hooks."""

    def __init__(self, layer: BinaryMixin, recipe: BinaryRecipe, torch_default_weight: torch.Tensor | None = None
                 ) -> None:
        self.stash: dict[str, torch.Tensor] = {}  # max_j |∂L/∂ŵ_cj| of this iteration's backward(s)
        self.enabled = binarizes_weights(recipe)
        if not self.enabled:
            return  # W32A1: real weights, no ReBNN state
        _check_gamma(recipe)
        w = layer.weight.detach()
        self._init_scale(layer, w)
        layer.register_buffer("gamma", torch.full((w.shape[0],), _initial_gamma(recipe), dtype=w.dtype,
                                                  device=w.device))
        layer.register_buffer("prev_sign", sign_int8(w))

    def _init_scale(self, layer: BinaryMixin, w: torch.Tensor) -> None:
        raise NotImplementedError

    def channel_scale(self, layer: BinaryMixin) -> torch.Tensor:
        """(C_out,) scale multiplying sign(w), detached."""
        raise NotImplementedError

    @torch.no_grad()
    def fold(self, layer: BinaryMixin, w: torch.Tensor) -> torch.Tensor:
        return self.channel_scale(layer).reshape(w.shape[0]).double()

    def reconstruction_error(self, layer: BinaryMixin) -> torch.Tensor:
        """w − scale ⊙ b with the scale actually used (detached)."""
        w = layer.weight.detach()
        return w - _channel_view(self.channel_scale(layer), w) * sign(w, layer.recipe.zero)

    def auxiliary_loss(self, layer: BinaryMixin) -> torch.Tensor | None:
        """(γ/2)·||w − α b||² summed over the layer, DETACHED: for logging only (the gradient of this term
        already acts through the custom backward, so the engine's adding it to the loss counts nothing twice).
        """
        if not self.enabled:
            return None
        with torch.no_grad():
            e = self.reconstruction_error(layer)
            return 0.5 * (_channel_view(layer.gamma, e) * e * e).sum()

    def take_grad_absmax(self, layer: BinaryMixin) -> torch.Tensor:
        """This iteration's captured max_j |∂L/∂ŵ_cj| (zeros if no backward ran), removed from the stash."""
        gmax = self.stash.pop("grad_absmax", None)
        return torch.zeros_like(layer.gamma) if gmax is None else gmax.to(layer.gamma.dtype)

    @torch.no_grad()
    def on_after_backward(self, layer: BinaryMixin, reduced_grad_absmax: torch.Tensor | None = None) -> None:
        """Once per iteration, after backward and before the optimizer step: update γ and ``prev_sign``.
        ``reduced_grad_absmax``: the captured maximum already all-reduced by :func:`after_backward` (which
        does it for all layers in one collective); None: take it from the stash and all-reduce it here."""
        r = layer.recipe
        cur = sign_int8(layer.weight)
        if r.gamma_mode == "adaptive":
            gmax = reduced_grad_absmax
            if gmax is None:
                gmax = _all_reduce_max(self.take_grad_absmax(layer))
            flip = flip_fraction(layer.prev_sign, cur)
            layer.gamma.copy_(gamma_rule(flip, gmax, r.gamma_min, r.gamma))
        else:
            self.stash.pop("grad_absmax", None)
            layer.gamma.fill_(r.gamma)
        layer.prev_sign.copy_(cur)

    @torch.no_grad()
    def before_load(self, layer: BinaryMixin, state_dict: dict, prefix: str) -> None:
        """Stage 1 → stage 2 (a state dict with ``weight`` but no ReBNN state): γ and ``prev_sign`` start from
        the *loaded* weight; the paper's α is re-initialized to its mean|w_c| too."""
        w = state_dict.get(prefix + "weight")
        if not self.enabled or not isinstance(w, torch.Tensor) or w.shape != layer.weight.shape:
            return  # a shape mismatch is reported by torch's loader
        self._reinit_scale(layer, state_dict, prefix, w.detach())
        if prefix + "prev_sign" not in state_dict:
            layer.prev_sign.copy_(sign_int8(w.detach()).to(layer.prev_sign.device))
        if prefix + "gamma" not in state_dict:
            layer.gamma.fill_(_initial_gamma(layer.recipe))

    def _reinit_scale(self, layer: BinaryMixin, state_dict: dict, prefix: str, w: torch.Tensor) -> None:
        """The scale when the state dict carries none (the released ``rebnn_s`` stays randn, as its code)."""


class ReBNNScale(_ReBNNScale):
    """The paper: ŵ = α ⊙ sign(w), α learnable (``rebnn_alpha``, init mean|w_c|), γ-weighted reconstruction."""

    def _init_scale(self, layer: BinaryMixin, w: torch.Tensor) -> None:
        layer.rebnn_alpha = nn.Parameter(_channel_mean_abs(w))

    def channel_scale(self, layer: BinaryMixin) -> torch.Tensor:
        return layer.rebnn_alpha.detach()

    def quantize(self, layer: BinaryMixin, w: torch.Tensor) -> torch.Tensor:
        r = layer.recipe
        stash = self.stash if torch.is_grad_enabled() else None
        return ReBNNWeight.apply(w, layer.rebnn_alpha, layer.gamma, r.zero, r.weight_estimator == "clipped_ste",
                                 stash)

    def _reinit_scale(self, layer: BinaryMixin, state_dict: dict, prefix: str, w: torch.Tensor) -> None:
        if prefix + "rebnn_alpha" not in state_dict:
            layer.rebnn_alpha.copy_(_channel_mean_abs(w).to(layer.rebnn_alpha))


class ReBNNReleasedScale(_ReBNNScale):
    """The released code: ŵ = 0.02·|s| ⊙ sign(w), ``rebnn_s`` ~ randn, identity STE, constant γ."""

    def _init_scale(self, layer: BinaryMixin, w: torch.Tensor) -> None:
        layer.rebnn_s = nn.Parameter(torch.randn(w.shape[0], dtype=w.dtype, device=w.device))

    def channel_scale(self, layer: BinaryMixin) -> torch.Tensor:
        return RELEASED_BIN * layer.rebnn_s.detach().abs()

    def quantize(self, layer: BinaryMixin, w: torch.Tensor) -> torch.Tensor:
        stash = self.stash if torch.is_grad_enabled() else None
        return ReBNNReleasedWeight.apply(w, layer.rebnn_s.abs(), layer.gamma, layer.recipe.zero, stash)


register_weight_scale("rebnn", ReBNNScale)
register_weight_scale("rebnn_released", ReBNNReleasedScale)


def _check_gamma(r: BinaryRecipe) -> None:
    if r.gamma_mode not in GAMMA_MODES:
        raise ValueError(f"recipe field gamma_mode={r.gamma_mode!r}; expected {' or '.join(GAMMA_MODES)}")
    if r.gamma < 0 or r.gamma_min < 0:
        raise ValueError(f"gamma and gamma_min must be >= 0, got {r.gamma}, {r.gamma_min}")
    if r.gamma_mode == "adaptive" and r.gamma_min > r.gamma:
        raise ValueError(f"adaptive gamma needs gamma_min <= gamma, got {r.gamma_min} > {r.gamma}")


def _channel_mean_abs(w: torch.Tensor) -> torch.Tensor:
    return w.abs().flatten(1).mean(1).clone()


def _initial_gamma(r: BinaryRecipe) -> float:
    """Constant mode: gamma. Adaptive: gamma_min (no flip has been observed before the first step)."""
    return r.gamma if r.gamma_mode == "constant" else r.gamma_min


def is_rebnn_layer(m: nn.Module) -> bool:
    """A binary layer whose weights are binarized with a ReBNN scale (so it has ``gamma`` and ``prev_sign``)."""
    scale = getattr(m, "weight_scale", None)
    return isinstance(scale, _ReBNNScale) and scale.enabled


def rebnn_weight(layer: BinaryMixin) -> torch.Tensor:
    """The weight a ReBNN ``layer`` convolves with (its ``binary_weight()``)."""
    if not is_rebnn_layer(layer):
        return layer.weight
    return layer.weight_scale.quantize(layer, layer.weight)


def _all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """MAX over ranks when torch.distributed is initialized (γ must be identical everywhere); else no-op."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.contiguous()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


@torch.no_grad()
def after_backward(layers: list[BinaryMixin]) -> None:
    """``on_after_backward`` of every ReBNN layer in ``layers`` with ONE all-reduce (MAX) of all their captured
    gradient maxima instead of one per layer (a ReActNet-18 has ~20 adaptive layers: 20 collectives per step)."""
    adaptive = [m for m in layers if m.recipe.gamma_mode == "adaptive"]
    if adaptive:
        gmax = [m.weight_scale.take_grad_absmax(m) for m in adaptive]
        flat = _all_reduce_max(torch.cat([g.to(torch.float64) for g in gmax]))
        for m, g, old in zip(adaptive, flat.split([g.numel() for g in gmax]), gmax):
            m.weight_scale.on_after_backward(m, g.to(old.dtype))
    for m in layers:
        if m.recipe.gamma_mode != "adaptive":
            m.weight_scale.on_after_backward(m)


def rebnn_layers(model: nn.Module) -> list[tuple[str, BinaryMixin]]:
    """(name, layer) for every layer of ``model`` with a binarized ReBNN weight."""
    return [(n, m) for n, m in model.named_modules() if is_rebnn_layer(m)]
