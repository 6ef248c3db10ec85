"""ReBNN (Xu et al., AAAI 2023): learnable weight scale + weighted reconstruction loss with an adaptive γ.

Two weight binarizers, selected by ``recipe.weight_scale`` (spec §4):

``"rebnn"`` (the paper, Eq. 3.144–3.152)
    ŵ = α ⊙ sign(w), α learnable per output channel (``rebnn_alpha``, initialized to mean|w_c|). The custom
    backward is the gradient of ``L_task + (γ/2)·||w − α b||²`` with the sign's surrogate in the task term:

        δw = ∂L/∂ŵ · α · e(w) + γ_c (w − α b)              e = 1{|w| ≤ 1} (clipped_ste) or 1 (ste)
        δα_c = Σ_j ∂L/∂ŵ_cj · b_cj − γ_c Σ_j (w_cj − α_c b_cj) b_cj

    The reconstruction term acts only through this backward; ``auxiliary_loss()`` returns its value
    *detached*, for logging (the engine adds it to the loss, which then changes no gradient).

``"rebnn_released"`` (the released code, spec §4.3)
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

Layers get their ReBNN methods (``on_after_backward``, ``auxiliary_loss``, ``deploy_scale``) by having their
class switched to a subclass defined here (``ReBNNConv2d`` / ``ReBNNLinear``), the way
``torch.nn.utils.parametrize`` does it; they stay instances of ``BinaryConv2d`` / ``BinaryLinear``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..functional.sign import sign
from .layers import BinaryConv2d, BinaryLinear
from .recipe import BinaryRecipe

GAMMA_MODES = ("adaptive", "constant")
RELEASED_BIN = 0.02  # the released code's constant multiplying sign(w)
REBNN_SCALES = ("rebnn", "rebnn_released")


def binarizes_weights(recipe: BinaryRecipe) -> bool:
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
# layer state and weight path (called from rbnn.nn.layers)
def init_rebnn_state(layer) -> None:
    """Create the ReBNN parameters/buffers of ``layer`` and give it the ReBNN methods."""
    r: BinaryRecipe = layer.recipe
    if r.weight_scale not in REBNN_SCALES:
        raise ValueError(f"init_rebnn_state: weight_scale={r.weight_scale!r} is not a ReBNN scale")
    if not binarizes_weights(r):
        return  # W32A1: real weights, no ReBNN state
    if r.gamma_mode not in GAMMA_MODES:
        raise ValueError(f"recipe field gamma_mode={r.gamma_mode!r}; expected {' or '.join(GAMMA_MODES)}")
    if r.gamma < 0 or r.gamma_min < 0:
        raise ValueError(f"gamma and gamma_min must be >= 0, got {r.gamma}, {r.gamma_min}")
    if r.gamma_mode == "adaptive" and r.gamma_min > r.gamma:
        raise ValueError(f"adaptive gamma needs gamma_min <= gamma, got {r.gamma_min} > {r.gamma}")
    w = layer.weight.detach()
    out_ch = w.shape[0]
    if r.weight_scale == "rebnn":
        layer.rebnn_alpha = nn.Parameter(_channel_mean_abs(w))
    else:
        layer.rebnn_s = nn.Parameter(torch.randn(out_ch, dtype=w.dtype, device=w.device))
    layer.register_buffer("gamma", torch.full((out_ch,), _initial_gamma(r), dtype=w.dtype, device=w.device))
    layer.register_buffer("prev_sign", sign_int8(w))
    layer._rebnn_stash = {}
    cls = _REBNN_CLASSES.get(type(layer))
    if cls is None and type(layer) not in _REBNN_CLASSES.values():
        raise TypeError(f"ReBNN supports BinaryConv2d and BinaryLinear, not {type(layer).__name__}")
    if cls is not None:
        layer.__class__ = cls


def _channel_mean_abs(w: torch.Tensor) -> torch.Tensor:
    return w.abs().flatten(1).mean(1).clone()


def _initial_gamma(r: BinaryRecipe) -> float:
    """Constant mode: gamma. Adaptive: gamma_min (no flip has been observed before the first step)."""
    return r.gamma if r.gamma_mode == "constant" else r.gamma_min


def rebnn_weight(layer) -> torch.Tensor:
    """The weight ``layer`` convolves with (its ``binary_weight()`` for the ReBNN scales)."""
    r: BinaryRecipe = layer.recipe
    w = layer.weight
    if not binarizes_weights(r):
        return w
    stash = layer._rebnn_stash if torch.is_grad_enabled() else None
    if r.weight_scale == "rebnn":
        clip = r.weight_estimator == "clipped_ste"
        return ReBNNWeight.apply(w, layer.rebnn_alpha, layer.gamma, r.zero, clip, stash)
    return ReBNNReleasedWeight.apply(w, layer.rebnn_s.abs(), layer.gamma, r.zero, stash)


class ReBNNMixin:
    """Methods of a ReBNN layer (mixed into BinaryConv2d / BinaryLinear by ``init_rebnn_state``)."""

    def deploy_scale(self) -> torch.Tensor:
        """(C_out,) scale multiplying sign(w): α (paper; positive in practice) or 0.02·|s| (released)."""
        if self.recipe.weight_scale == "rebnn":
            return self.rebnn_alpha.detach().clone()
        return RELEASED_BIN * self.rebnn_s.detach().abs()

    def scale_per_channel(self) -> torch.Tensor:
        return self.deploy_scale()

    def reconstruction_error(self) -> torch.Tensor:
        """w − scale ⊙ b with the scale actually used (detached)."""
        w = self.weight.detach()
        b = sign(w, self.recipe.zero)
        if self.recipe.weight_scale == "rebnn_released":
            return w - _channel_view(self.rebnn_s.detach().abs(), w) * RELEASED_BIN * b
        return w - _channel_view(self.rebnn_alpha.detach(), w) * b

    def auxiliary_loss(self) -> torch.Tensor:
        """(γ/2)·||w − α b||² summed over the layer, DETACHED: for logging only (the gradient of this term
        already acts through the custom backward, so the engine's adding it to the loss counts nothing twice).
        """
        with torch.no_grad():
            e = self.reconstruction_error()
            return 0.5 * (_channel_view(self.gamma, e) * e * e).sum()

    def take_grad_absmax(self) -> torch.Tensor:
        """This iteration's captured max_j |∂L/∂ŵ_cj| (zeros if no backward ran), removed from the stash."""
        gmax = self._rebnn_stash.pop("grad_absmax", None)
        return torch.zeros_like(self.gamma) if gmax is None else gmax.to(self.gamma.dtype)

    @torch.no_grad()
    def on_after_backward(self, reduced_grad_absmax: torch.Tensor | None = None) -> None:
        """Once per iteration, after backward and before the optimizer step: update γ and ``prev_sign``.
        ``reduced_grad_absmax``: the captured maximum already all-reduced by :func:`after_backward` (which
        does it for all layers in one collective); None: take it from the stash and all-reduce it here."""
        r = self.recipe
        cur = sign_int8(self.weight)
        if r.gamma_mode == "adaptive":
            gmax = reduced_grad_absmax
            if gmax is None:
                gmax = _all_reduce_max(self.take_grad_absmax())
            flip = flip_fraction(self.prev_sign, cur)
            self.gamma.copy_(gamma_rule(flip, gmax, r.gamma_min, r.gamma))
        else:
            self._rebnn_stash.pop("grad_absmax", None)
            self.gamma.fill_(r.gamma)
        self.prev_sign.copy_(cur)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        w = state_dict.get(prefix + "weight")
        if isinstance(w, torch.Tensor) and w.shape == self.weight.shape:  # a mismatch is reported by super()
            with torch.no_grad():
                if self.recipe.weight_scale == "rebnn" and prefix + "rebnn_alpha" not in state_dict:
                    self.rebnn_alpha.copy_(_channel_mean_abs(w.detach()).to(self.rebnn_alpha))
                if prefix + "prev_sign" not in state_dict:
                    self.prev_sign.copy_(sign_int8(w.detach()).to(self.prev_sign.device))
                if prefix + "gamma" not in state_dict:
                    self.gamma.fill_(_initial_gamma(self.recipe))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def _all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """MAX over ranks when torch.distributed is initialized (γ must be identical everywhere); else no-op."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.contiguous()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


@torch.no_grad()
def after_backward(layers: list[ReBNNMixin]) -> None:
    """``on_after_backward`` of every layer in ``layers`` with ONE all-reduce (MAX) of all their captured
    gradient maxima instead of one per layer (a ReActNet-18 has ~20 adaptive layers: 20 collectives per step)."""
    adaptive = [m for m in layers if m.recipe.gamma_mode == "adaptive"]
    if adaptive:
        gmax = [m.take_grad_absmax() for m in adaptive]
        flat = _all_reduce_max(torch.cat([g.to(torch.float64) for g in gmax]))
        for m, g, old in zip(adaptive, flat.split([g.numel() for g in gmax]), gmax):
            m.on_after_backward(g.to(old.dtype))
    for m in layers:
        if m.recipe.gamma_mode != "adaptive":
            m.on_after_backward()


class ReBNNConv2d(ReBNNMixin, BinaryConv2d):
    """A BinaryConv2d with a ReBNN weight scale (created by ``init_rebnn_state``, not directly)."""


class ReBNNLinear(ReBNNMixin, BinaryLinear):
    """A BinaryLinear with a ReBNN weight scale (created by ``init_rebnn_state``, not directly)."""


_REBNN_CLASSES = {BinaryConv2d: ReBNNConv2d, BinaryLinear: ReBNNLinear}


def rebnn_layers(model: nn.Module) -> list[tuple[str, ReBNNMixin]]:
    """(name, layer) for every layer of ``model`` with a binarized ReBNN weight."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ReBNNMixin)]
