"""The component registries (weight scales, input transforms, estimators) and checkpoint compatibility: the
state dicts written by the layers before they were built from components load strictly and compute the same."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from test_deploy_helpers import tiny

from rbnn.functional.surrogates import ESTIMATORS
from rbnn.nn import (
    INPUT_TRANSFORMS,
    WEIGHT_SCALES,
    BinaryLinear,
    BinaryRecipe,
    InputTransform,
    WeightScale,
    binary_modules,
    register_input_transform,
    register_weight_scale,
)
from rbnn.nn.rebnn import rebnn_layers

OLD = Path(__file__).parent / "data" / "old_layout_13.pt"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("method", ["rbnn", "rebnn", "rebnn-released", "irnet"])
def test_state_dict_of_the_layers_before_components_loads_strictly_and_computes_the_same(method):
    """tests/data/old_layout_13.pt was written by the layers of commit 3b04a62 (before this refactor): same
    keys (``conv2.scale``, ``.theta``, ``.R1``, ``.rebnn_alpha``, ``.gamma``, ``.prev_sign``, ``.act_shift``, ...)
    and the same eval logits after a strict load into a freshly built (differently seeded) model: bit-identical on
    the CPU that wrote the file; elsewhere torch's kernels may round differently (1e-7 on an AVX-512 Xeon), so
    the check allows float32 rounding, far below what a wrong key, shape or layout changes."""
    old = torch.load(OLD, weights_only=True)
    model = tiny(method, seed=7, c1=8, c2=8)
    assert list(model.state_dict()) == list(old[method]["state_dict"])
    model.load_state_dict(old[method]["state_dict"], strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(old["x"]), old[method]["logits"], rtol=1e-5, atol=1e-6)


def test_recipe_names_are_checked_against_the_registries():
    with pytest.raises(ValueError, match="weight_scale='rms'; expected one of none, mean_abs, .*rebnn"):
        BinaryRecipe(weight_scale="rms")
    with pytest.raises(ValueError, match="act_transform='tanh'; expected one of none, standardize_sample, shift"):
        BinaryRecipe(act_transform="tanh")
    with pytest.raises(ValueError, match="weight_estimator='sine'"):
        BinaryRecipe(weight_estimator="sine")
    assert set(ESTIMATORS) == {"ste", "clipped_ste", "approx", "ede", "rbnn"}


def test_registering_makes_a_name_valid_and_is_checked():
    class Half(WeightScale):
        def scale(self, layer, w):
            return torch.full_like(w[:, :1], 0.5)

    register_weight_scale("test_half", Half)
    try:
        layer = BinaryLinear(3, 2, bias=False, recipe=BinaryRecipe(weight_scale="test_half"))
        with torch.no_grad():
            layer.weight.copy_(torch.tensor([[1.0, -2.0, 0.0], [-0.5, 0.25, 3.0]]))
        assert torch.equal(layer.binary_weight(), torch.tensor([[0.5, -0.5, 0.5], [-0.5, 0.5, 0.5]]))
        assert torch.equal(layer.weight_scale.fold(layer, layer.weight), torch.full((2,), 0.5, dtype=torch.float64))
        with pytest.raises(ValueError, match="weight scale 'test_half' already registered"):
            register_weight_scale("test_half", Half)
    finally:
        del WEIGHT_SCALES["test_half"]
    with pytest.raises(TypeError, match="subclass of InputTransform"):
        register_input_transform("test_bad", Half)
    assert "test_bad" not in INPUT_TRANSFORMS and issubclass(INPUT_TRANSFORMS["shift"], InputTransform)


def test_rebnn_stage1_weights_reinitialize_alpha_in_a_deep_copy_only():
    """The load hook that completes a ReBNN state dict is bound to its own layer, also in a deep copy."""
    model = tiny("rebnn", seed=3, c1=8, c2=8)
    twin = copy.deepcopy(model)
    alpha = {n: m.rebnn_alpha.detach().clone() for n, m in rebnn_layers(model)}
    stage1 = {k: v for k, v in twin.state_dict().items() if not k.endswith(("rebnn_alpha", "gamma", "prev_sign"))}
    for k in stage1:
        if k.endswith(".weight") and k.split(".")[0] in alpha:
            stage1[k] = stage1[k] * 3.0
    missing = twin.load_state_dict(stage1, strict=False).missing_keys
    assert sorted(missing) == sorted(f"{n}.{k}" for n in alpha for k in ("rebnn_alpha", "gamma", "prev_sign"))
    for (n, m), (_, t) in zip(rebnn_layers(model), rebnn_layers(twin)):
        assert torch.equal(m.rebnn_alpha.detach(), alpha[n])  # the original is untouched
        torch.testing.assert_close(t.rebnn_alpha.detach(), 3.0 * m.weight.detach().abs().flatten(1).mean(1))
    assert len(binary_modules(twin)) == len(alpha) == 3
