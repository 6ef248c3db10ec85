"""A binarization recipe: the components one binary layer is made of, by name.

A method (``rbnn.methods``) is a named ``BinaryRecipe``; layers resolve its component names in the registries
(``ESTIMATORS``, ``WEIGHT_SCALES``, ``INPUT_TRANSFORMS``) and never branch on method names. Registering a new
component makes its name valid here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..functional.surrogates import ESTIMATORS
from .components import INPUT_TRANSFORMS, WEIGHT_SCALES

WEIGHT_TRANSFORMS = ("none", "standardize")
ACT_RULES = ("same", "rbnn")
ROTATION_GRADS = ("stop", "full")
SCALE_INITS = ("weights", "torch_default")


@dataclass(frozen=True)
class BinaryRecipe:
    """Everything that defines how a layer binarizes its weights and inputs.

    Weight path:  w -> weight_transform -> [rotation mix] -> sign (weight_estimator backward) -> weight_scale
    Input path:   a -> act_transform -> sign (act_estimator backward; ``None`` keeps real activations)
    """

    weight_transform: str = "none"
    weight_estimator: str | None = "clipped_ste"  # None: real weights (W32A1, e.g. ReActNet stage 1)
    weight_scale: str = "none"
    act_estimator: str | None = "clipped_ste"
    act_transform: str = "none"
    act_rule: str = "same"  # "rbnn": activations use k=1, t=max(t,1) (RBNN code)
    # surrogate schedule (only ede/rbnn estimators use t, k)
    t_min: float = 0.1
    t_max: float = 10.0
    # RBNN bi-rotation
    rotation: bool = False
    adjustable: bool = True  # learn alpha=|sin theta| per channel; False: weight fully rotated
    rotation_grad: str = "stop"  # "stop": reference stop-gradient; "full": chain rule (1-a)I + a R
    rotation_cycles: int = 3
    rotation_period: int = 1  # epochs between rotation updates (at epoch start, as the reference)
    rotation_every_steps: int = 0  # >0: also update every N optimizer steps (a finer-grained option)
    theta_init: float = math.pi / 2
    # learned_output's lambda at init: mean|W_c| of the weights the layer is built from ("weights", i.e. after
    # the model's init), or of torch's default uniform init of a layer of that shape ("torch_default"): RBNN's
    # code computes it at construction, before the model re-initialises the weights (lambda*sqrt(fan_in) ~ 0.5)
    scale_init: str = "weights"
    # conventions
    zero: int = 1  # sign(0): 1 -> +1 (deployable), 0 -> torch.sign (reference)
    eps: float = 0.0  # added to the std of both standardizations (reference: 0)
    # ReBNN (learned weight scale with reconstruction term)
    gamma_mode: str = "adaptive"  # adaptive (paper Eq. 3.150, clamped) | constant
    gamma: float = 2e-4  # constant gamma, and the upper clamp of the adaptive rule
    gamma_min: float = 1e-5

    def __post_init__(self) -> None:
        def check(field: str, value, allowed) -> None:
            if value not in allowed:
                raise ValueError(f"recipe field {field}={value!r}; expected one of {', '.join(map(str, allowed))}")

        check("weight_transform", self.weight_transform, WEIGHT_TRANSFORMS)
        check("weight_estimator", self.weight_estimator, (*ESTIMATORS, None))
        check("weight_scale", self.weight_scale, WEIGHT_SCALES)
        check("act_estimator", self.act_estimator, (*ESTIMATORS, None))
        check("act_transform", self.act_transform, INPUT_TRANSFORMS)
        check("act_rule", self.act_rule, ACT_RULES)
        check("rotation_grad", self.rotation_grad, ROTATION_GRADS)
        check("scale_init", self.scale_init, SCALE_INITS)
        check("zero", self.zero, (0, 1))
        if self.rotation_cycles < 0 or self.rotation_period < 1 or self.rotation_every_steps < 0:
            raise ValueError("rotation_cycles and rotation_every_steps must be >= 0 and rotation_period >= 1")
        if not (0 < self.t_min <= self.t_max):
            raise ValueError(f"need 0 < t_min <= t_max, got t_min={self.t_min}, t_max={self.t_max}")
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")

    def replace(self, **changes) -> BinaryRecipe:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown recipe field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
