"""A method whose parts are defined here, outside the ``rbnn`` package: a new weight scale (per-channel RMS of
the weight) and a new input transform (a learnable per-channel shift 0.5*tanh(p)). Registered, trained on real
Fashion-MNIST images, exported, and run packed integer-exact, with no change inside ``rbnn``.

The components only say what they compute and how they fold (``fold``); nothing in the exporter or the runtime
knows their names. The last two tests give each a wrong fold and check that export / verify catch it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rbnn import models
from rbnn.data.idx import load_idx_split
from rbnn.export import ExportError, export, verify
from rbnn.methods import METHODS, register_method
from rbnn.nn import (
    INPUT_TRANSFORMS,
    WEIGHT_SCALES,
    BinaryRecipe,
    InputTransform,
    WeightScale,
    binary_modules,
    register_input_transform,
    register_weight_scale,
)
from rbnn.runtime import format as fmt

FASHION = Path("/usr/share/datasets/fashion-mnist")
METHOD = "ext-rms-tanh"

pytestmark = pytest.mark.usefixtures("one_thread")


class RMSScale(WeightScale):
    """alpha_c = sqrt(mean_j w_cj^2), differentiated through (``fold`` is the base class's: this scale)."""

    def scale(self, layer, w):
        return w.square().mean(dim=tuple(range(1, w.dim())), keepdim=True).sqrt()


class TanhShift(InputTransform):
    """x + 0.5*tanh(p_c) before the sign, p learnable per input channel (a bounded RSign)."""

    def __init__(self, layer, recipe):
        w = layer.weight
        layer.tanh_shift = nn.Parameter(torch.zeros(w.shape[1], dtype=w.dtype, device=w.device))

    def shift(self, layer):
        return 0.5 * torch.tanh(layer.tanh_shift)

    def transform(self, layer, x):
        return x + self.shift(layer).reshape(1, -1, *([1] * (x.dim() - 2)))

    def fold(self, layer):
        return "shift", {"act_shift": self.shift(layer).detach()}


class ForgetfulShift(TanhShift):
    """Wrong on purpose: folds tanh(p) instead of 0.5*tanh(p)."""

    def fold(self, layer):
        return "shift", {"act_shift": torch.tanh(layer.tanh_shift).detach()}


class MeanAbsFoldRMS(RMSScale):
    """Wrong on purpose: trains with the RMS but folds mean|w|."""

    def fold(self, layer, w):
        return w.abs().flatten(1).mean(1).double()


@pytest.fixture(scope="module")
def registered():
    """Register the parts and the methods (and remove them afterwards: the registries are process-wide)."""
    register_weight_scale("ext_rms", RMSScale)
    register_weight_scale("ext_rms_bad_fold", MeanAbsFoldRMS)
    register_input_transform("ext_tanh_shift", TanhShift)
    register_input_transform("ext_tanh_shift_bad_fold", ForgetfulShift)
    recipe = BinaryRecipe(weight_estimator="clipped_ste", weight_scale="ext_rms", act_estimator="approx",
                          act_transform="ext_tanh_shift")
    register_method(METHOD, recipe)
    yield recipe
    del METHODS[METHOD]
    for name in ("ext_rms", "ext_rms_bad_fold"):
        del WEIGHT_SCALES[name]
    for name in ("ext_tanh_shift", "ext_tanh_shift_bad_fold"):
        del INPUT_TRANSFORMS[name]


def _fashion(n: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not FASHION.is_dir():
        pytest.skip(f"Fashion-MNIST not installed at {FASHION}")
    images, labels, _, _ = load_idx_split(FASHION, split)
    x = torch.as_tensor(images[:n], dtype=torch.float32) / 255.0
    return (x - 0.2860) / 0.3530, torch.as_tensor(labels[:n], dtype=torch.int64)


def _trained_model(steps: int = 24, batch: int = 50):
    torch.manual_seed(0)
    model = models.create("smallnet", method=METHOD, num_classes=10, input_size=(1, 28, 28))
    x, y = _fashion(400, "train")
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    model.train()
    for i in range(steps):
        j = (i * batch) % len(x)
        loss = F.cross_entropy(model(x[j:j + batch]), y[j:j + batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return model.eval(), losses


def test_outside_method_trains_exports_and_runs_integer_exact(registered, tmp_path):
    model, losses = _trained_model()
    layers = binary_modules(model)
    assert layers and all(isinstance(m.weight_scale, RMSScale) and isinstance(m.input_transform, TanhShift)
                          for _, m in layers)
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses  # it learns
    for _, m in layers:  # the learned shift moved away from 0 (else a wrong fold of it could pass unseen)
        assert float(m.tanh_shift.detach().abs().max()) > 1e-3
    path = tmp_path / "ext.rbnn"
    export(model, path, input_shape=(1, 28, 28))
    x, _ = _fashion(64, "test")
    rep = verify(model, path, x.numpy(), backend="reference")
    assert rep["int_exact"], {k: v for k, v in rep["layers"].items() if not v["equal"]}
    assert rep["ok"] and rep["max_rel_logit_err"] < 1e-4 and rep["argmax_agreement"] == 1.0
    # the packed nodes hold exactly the input transform's fold, act_shift = 0.5 tanh(p) (out_mul has the next
    # BatchNorm folded in: the scale's fold is checked by the close logits above and the next test)
    nodes = {n.attrs["module"]: n for n in fmt.read(path).nodes if n.op in ("bconv", "blinear")}
    assert set(nodes) == {name for name, _ in layers}
    for name, m in layers:
        assert nodes[name].attrs["act_transform"] == "shift"
        want = (0.5 * torch.tanh(m.tanh_shift.detach())).numpy().astype(np.float32)
        np.testing.assert_array_equal(nodes[name].arrays["act_shift"], want)


def test_the_scale_folds_to_the_rms(registered):
    layer = binary_modules(models.create("smallnet", method=METHOD, num_classes=10))[0][1]
    w = layer.mixed_weight().detach()
    rms = w.double().square().flatten(1).mean(1).sqrt()
    torch.testing.assert_close(layer.weight_scale.fold(layer, w), rms, rtol=1e-6, atol=0)


def _randomized(recipe: BinaryRecipe):
    torch.manual_seed(1)
    model = models.create("smallnet", method=recipe, num_classes=10, input_size=(1, 28, 28))
    with torch.no_grad():
        for _, m in binary_modules(model):
            m.tanh_shift.copy_(torch.randn_like(m.tanh_shift))
    return model.eval()


def test_a_wrong_shift_fold_is_caught_by_verify(registered, tmp_path):
    model = _randomized(registered.replace(act_transform="ext_tanh_shift_bad_fold"))
    export(model, tmp_path / "bad.rbnn", input_shape=(1, 28, 28))
    x, _ = _fashion(16, "test")
    rep = verify(model, tmp_path / "bad.rbnn", x.numpy(), backend="reference")
    assert not rep["int_exact"]


def test_a_wrong_scale_fold_is_refused_by_export(registered, tmp_path):
    model = _randomized(registered.replace(weight_scale="ext_rms_bad_fold"))
    with pytest.raises(ExportError, match="MeanAbsFoldRMS.fold disagrees with its forward"):
        export(model, tmp_path / "bad.rbnn", input_shape=(1, 28, 28))
