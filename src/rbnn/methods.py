"""Method registry: a method is a named BinaryRecipe (data, not a subclass tree).

    model = rbnn.models.create("resnet20_bireal")          # float skeleton
    prepare(model, "rbnn")                                 # swaps Conv2d/Linear for binary layers in place

``prepare`` keeps the layers listed in the model's ``float_layers`` (first conv, last linear, and whatever the
architecture's recipe says, e.g. ImageNet downsample convs) in float, and says so.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Iterable

from torch import nn

from .nn.layers import BinaryConv2d, BinaryLinear
from .nn.recipe import BinaryRecipe

log = logging.getLogger(__name__)

# The reference codes' (t_min, t_max) schedules. IR-Net's: the paper's and its VGG-small / 1w32a trainers'
# 0.1; its CIFAR-10 ResNet-20 1w1a trainer uses t_min = 1e-3 (configs/irnet_cifar10_resnet20_bireal.yaml sets it).
_IRNET_T = {"t_min": 0.1, "t_max": 10.0}
_RBNN_T = {"t_min": 1e-2, "t_max": 10.0}

# RBNN exactly as lmbxmu/RBNN computes it (spec §1.5-1.7), apart from nothing.
RBNN_REFERENCE = BinaryRecipe(
    weight_transform="standardize", weight_estimator="rbnn", weight_scale="learned_output",
    act_estimator="rbnn", act_transform="standardize_sample", act_rule="rbnn", **_RBNN_T,
    rotation=True, adjustable=True, rotation_grad="stop", rotation_cycles=3, rotation_period=1,
    theta_init=math.pi / 2, zero=0, eps=0.0, scale_init="torch_default",
)

IRNET = BinaryRecipe(weight_transform="standardize", weight_estimator="ede", weight_scale="pow2",
                     act_estimator="ede", **_IRNET_T)

METHODS: dict[str, BinaryRecipe | None] = {
    "fp": None,
    # BNN: sign + clipped STE on weights and activations, no scale.
    "bnn": BinaryRecipe(weight_estimator="clipped_ste", act_estimator="clipped_ste"),
    # XNOR-Net: per-filter alpha = mean|W| (gradient through it), clipped STE.
    "xnor": BinaryRecipe(weight_estimator="clipped_ste", weight_scale="mean_abs", act_estimator="clipped_ste"),
    # Bi-Real: magnitude-aware weights (detached mean|W|, clipped STE), ApproxSign (PPF) for activations.
    "bireal": BinaryRecipe(weight_estimator="clipped_ste", weight_scale="mean_abs_detached", act_estimator="approx"),
    # IR-Net: Libra-PB (standardize + power-of-two scale) and EDE for weights and activations.
    "irnet": IRNET,
    # IR-Net plus RBNN's bi-rotation and adjustable alpha mix (full chain rule through R): rotation on top of
    # the strongest baseline, everything else IR-Net's (docs/rbnn.md, the 16-epoch schedule study).
    "irnet-rot": IRNET.replace(rotation=True, adjustable=True, rotation_grad="full"),
    # RBNN as the reference code computes it (sign(0)=0, no eps, stop-gradient through R).
    "rbnn-faithful": RBNN_REFERENCE,
    # RBNN, corrected (docs/rbnn.md): sign(0)=+1 (deployable), eps in both standardizations (no NaN), and the
    # full chain rule through the rotation, d w_tilde / d w_hat = (1-alpha) I + alpha R. With the reference's
    # stop-gradient the latent weights get (1-alpha) g, exactly 0 at alpha=1, and learn far slower early on.
    # (Weight decay on theta/lambda is an optimizer choice: optim.no_decay.) lambda starts at mean|W_c| of the
    # model's own init (Kaiming: lambda*sqrt(fan_in) ~ 1.13), not of the default init the reference discards.
    "rbnn": RBNN_REFERENCE.replace(zero=1, eps=1e-12, rotation_grad="full", scale_init="weights"),
    # The same with the reference's stop-gradient through R (to measure that choice alone).
    "rbnn-stopgrad": RBNN_REFERENCE.replace(zero=1, eps=1e-12, scale_init="weights"),
    # Table 4 ablation ladder (ResNet-20 Bi-Real, CIFAR-10): B < B+R, B+T < B+T+R < RBNN.
    # B = XNOR-Net binarization; R = rotation (alpha fixed to 1, so the gradient must go through R);
    # T = training-aware approximation with RBNN's schedule and activation rule.
    "rbnn-B": BinaryRecipe(weight_estimator="clipped_ste", weight_scale="mean_abs", act_estimator="clipped_ste"),
    "rbnn-BR": BinaryRecipe(weight_estimator="clipped_ste", weight_scale="mean_abs", act_estimator="clipped_ste",
                            rotation=True, adjustable=False, rotation_grad="full"),
    "rbnn-BT": BinaryRecipe(weight_estimator="rbnn", weight_scale="mean_abs", act_estimator="rbnn",
                            act_rule="rbnn", **_RBNN_T),
    "rbnn-BTR": BinaryRecipe(weight_estimator="rbnn", weight_scale="mean_abs", act_estimator="rbnn",
                             act_rule="rbnn", **_RBNN_T, rotation=True, adjustable=False, rotation_grad="full"),
    # ReBNN (spec §4): RSign activations (learnable shift, ApproxSign backward) for all of them.
    # rebnn: the paper -- learnable alpha (init mean|w_c|), clipped STE, adaptive gamma (Eq. 3.150, clamped).
    "rebnn": BinaryRecipe(weight_estimator="clipped_ste", weight_scale="rebnn", act_estimator="approx",
                          act_transform="shift", gamma_mode="adaptive", gamma=2e-4, gamma_min=1e-5),
    # rebnn-released: the released code -- 0.02|s| scale (s ~ randn), identity STE, gamma = 2e-4 constant.
    "rebnn-released": BinaryRecipe(weight_estimator="ste", weight_scale="rebnn_released",
                                   act_estimator="approx", act_transform="shift", gamma_mode="constant",
                                   gamma=2e-4),
    # learned-scale: the paper's binarizer with gamma = 0 (learnable alpha, no reconstruction term).
    "learned-scale": BinaryRecipe(weight_estimator="clipped_ste", weight_scale="rebnn",
                                  act_estimator="approx", act_transform="shift", gamma_mode="constant",
                                  gamma=0.0, gamma_min=0.0),
    # rebnn-stage1: ReActNet/ReBNN stage 1, W32A1 (real weights, RSign activations).
    "rebnn-stage1": BinaryRecipe(weight_estimator=None, act_estimator="approx", act_transform="shift"),
}


def register_method(name: str, recipe: BinaryRecipe | None) -> None:
    """Add a method to the registry (for user extensions)."""
    if name in METHODS:
        raise ValueError(f"method {name!r} already registered")
    METHODS[name] = recipe


def get_recipe(method: str | BinaryRecipe | None, **overrides) -> BinaryRecipe | None:
    """The recipe of a registered method name (or a recipe itself), with field overrides applied."""
    if isinstance(method, BinaryRecipe) or method is None:
        recipe = method
    else:
        if method not in METHODS:
            raise KeyError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
        recipe = METHODS[method]
    if recipe is None:
        if overrides:
            raise ValueError(f"method 'fp' takes no binarization options, got {', '.join(overrides)}")
        return None
    return recipe.replace(**overrides) if overrides else recipe


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def prepare(model: nn.Module, method: str | BinaryRecipe | None, skip: Iterable[str] | None = None,
            **overrides) -> nn.Module:
    """Replace every Conv2d / Linear of ``model`` not matched by ``skip`` with its binary version, in place.

    ``skip`` holds glob patterns of module names; by default the model's ``float_layers`` attribute, else the
    first conv and the last linear. Returns the model, with ``model.binarization`` describing what happened.
    """
    recipe = get_recipe(method, **overrides)
    candidates = [(n, m) for n, m in model.named_modules()
                  if type(m) in (nn.Conv2d, nn.Linear)]
    if skip is None:
        skip = getattr(model, "float_layers", None)
    if skip is None:
        convs = [n for n, m in candidates if isinstance(m, nn.Conv2d)]
        linears = [n for n, m in candidates if isinstance(m, nn.Linear)]
        skip = ([convs[0]] if convs else []) + ([linears[-1]] if linears else [])
    skip = list(skip)
    kept, swapped = [], []
    for name, module in candidates:
        if recipe is None or _matches(name, skip):
            kept.append(name)
            continue
        cls = BinaryConv2d if isinstance(module, nn.Conv2d) else BinaryLinear
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, cls.from_float(module, recipe))
        swapped.append(name)
    model.binarization = {"method": method if isinstance(method, str) else "custom",
                          "recipe": None if recipe is None else recipe.to_dict(),
                          "binary_layers": swapped, "float_layers": kept}
    if recipe is not None:
        log.info("prepare(%s): %d binary layers; kept in float: %s", model.binarization["method"],
                 len(swapped), ", ".join(kept) or "none")
    return model
