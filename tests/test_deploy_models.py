"""Every registered model × binary method: exported, run by both engines, integer-exact against torch."""

from __future__ import annotations

import numpy as np
import pytest
from test_deploy_helpers import rand_input, randomize

import rbnn.deploy as deploy
from rbnn import models
from rbnn.methods import METHODS

BINARY_METHODS = [m for m, r in METHODS.items() if r is not None and r.weight_estimator is not None]
# small inputs keep the suite fast (ImageNet ResNets: the stem divides by 4, adaptive pooling absorbs the rest)
SIZES = {
    "resnet18": (3, 32, 32),
    "resnet34": (3, 32, 32),
    "vgg_small": (3, 16, 16),
    "resnet18_cifar": (3, 16, 16),
    "resnet20": (3, 16, 16),
    "resnet20_bireal": (3, 16, 16),
    "smallnet": (1, 14, 14),
    "smallnet_wide": (1, 14, 14),
}


def _build(name, method, seed=0):
    import torch

    torch.manual_seed(seed)
    size = SIZES.get(name)
    m = models.create(name, method=method, num_classes=10, input_size=size)
    return randomize(m, seed), size or tuple(m.input_size)


def _check(m, path, x, backend):
    rep = deploy.verify(m, path, x, backend=backend)
    bad = {k: v for k, v in rep["layers"].items() if not v["equal"]}
    assert rep["int_exact"], bad
    assert rep["max_rel_logit_err"] <= 1e-4
    assert rep["argmax_agreement"] == 1.0


# the models of the deploy contract (ReActNet: tests/test_deploy_reactnet.py)
CONTRACT = [
    "resnet20",
    "resnet20_bireal",
    "resnet18_cifar",
    "vgg_small",
    "resnet18",
    "resnet34",
    "smallnet",
    "smallnet_wide",
]
# every registered model (ReActNet has its own file); a new model is tested here without editing this file
REGISTERED = [n for n in models.list_models() if not n.startswith("reactnet")]


def test_contract_models_are_registered():
    assert set(CONTRACT) <= set(REGISTERED)


@pytest.mark.parametrize("name", REGISTERED)
def test_every_model_rbnn_fast_and_reference(name, tmp_path):
    m, size = _build(name, "rbnn")
    p = tmp_path / "m.rbnn"
    info = deploy.export(m, p, input_shape=size)
    assert info["binary_layers"], "no binary layer exported"
    x = rand_input(size, 2)
    _check(m, p, x, "fast")
    lf = deploy.load(p, backend="fast").layer_outputs(x)
    lr = deploy.load(p, backend="reference").layer_outputs(x)
    for k in lr:
        np.testing.assert_array_equal(lf[k], lr[k])


@pytest.mark.parametrize("method", BINARY_METHODS)
def test_resnet20_bireal_every_method(method, tmp_path):
    m, size = _build("resnet20_bireal", method, seed=1)
    p = tmp_path / "m.rbnn"
    deploy.export(m, p, input_shape=size)
    for n in (1, 3):
        _check(m, p, rand_input(size, n, seed=n), "fast")


@pytest.mark.parametrize("method", ["xnor", "irnet", "rbnn-faithful", "rebnn"])
@pytest.mark.parametrize("name", ["resnet20", "smallnet", "vgg_small"])
def test_small_models_more_methods(name, method, tmp_path):
    if name not in models.list_models() or method not in METHODS:
        pytest.skip(f"{name}/{method} not registered")
    m, size = _build(name, method, seed=2)
    p = tmp_path / "m.rbnn"
    deploy.export(m, p, input_shape=size)
    _check(m, p, rand_input(size, 3, seed=3), "fast")


def test_real_model_shapes_batch2(tmp_path):
    """resnet18_cifar at its real 32x32 input, batch 2, and the size targets."""
    m = randomize(models.create("resnet18_cifar", method="xnor"))
    p = tmp_path / "m.rbnn"
    info = deploy.export(m, p, input_shape=(3, 32, 32))
    _check(m, p, rand_input((3, 32, 32), 2), "fast")
    assert info["bytes"] * 20 <= info["float32_state_dict_bytes"]


def test_resnet20_binary_convs_28x_smaller(tmp_path):
    m = randomize(models.create("resnet20", method="rbnn"))
    rows = deploy.size_report(m, input_shape=(3, 32, 32))
    total = rows[-1]
    assert total["binary_weight_ratio"] >= 28.0, total


@pytest.mark.parametrize("method", ["rbnn", "xnor"])
def test_downsampling_shortcut_reads_its_siblings_windows(method, tmp_path):
    """resnet18_cifar's downsampling blocks: the 1x1 shortcut conv reads the middle tap of its 3x3 sibling's row
    windows of their common input, which the block before writes in its epilogue, instead of packing it again;
    the logits stay bit-identical to the reference engine's (a wrong word offset or row would read the wrong
    pixel)."""
    from rbnn.runtime.plan import _BinStep

    m, size = _build("resnet18_cifar", method, seed=4)
    p = tmp_path / "m.rbnn"
    deploy.export(m, p, input_shape=size)
    fast, ref = deploy.load(p, backend="fast"), deploy.load(p, backend="reference")
    steps = [fn for _, _, fn in fast.ops.steps if isinstance(fn, _BinStep)]
    readers = {s.node.name for s in steps if s.shared_xoff >= 0}
    assert readers == {"layer2_0_shortcut_0", "layer3_0_shortcut_0", "layer4_0_shortcut_0"}
    # the 3x3 siblings' windows come from the block before them, which binarizes its output once for both
    assert all(s.packed_in for s in steps if s.share) and sum(s.share for s in steps) == 3
    for n in (1, 3):
        x = rand_input(size, n, seed=n)
        np.testing.assert_array_equal(fast.predict(x), ref.predict(x))


@pytest.mark.parametrize("name,method", [("resnet20", "xnor"), ("resnet20_bireal", "rbnn"), ("resnet18_cifar", "rbnn")])
def test_float_stem_writes_the_first_binary_layers_windows(name, method, tmp_path):
    """The float stem conv reads the NCHW images directly and binarizes its own output into the first binary
    layer's row windows (by sign, or by RBNN's per-sample mean after each sample), so that layer packs nothing;
    every binary layer's integers and the logits stay equal to the reference engine's, one image and several
    (the per-sample path)."""
    from rbnn.runtime.plan import _BinStep

    m, size = _build(name, method, seed=5)
    p = tmp_path / "m.rbnn"
    deploy.export(m, p, input_shape=size)
    fast, ref = deploy.load(p, backend="fast"), deploy.load(p, backend="reference")
    first = [fn for _, _, fn in fast.ops.steps if isinstance(fn, _BinStep)][0]
    assert first.packed_in and {n.name: n for n in fast.graph.nodes}[first.src].op in ("conv", "hardtanh")
    assert fast.ops.input_nchw  # only the stem reads the images: they go to it in NCHW, no NHWC round trip
    for n in (1, 3):
        x = rand_input(size, n, seed=n)
        lf, lr = fast.layer_outputs(x), ref.layer_outputs(x)
        for k in lr:
            np.testing.assert_array_equal(lf[k], lr[k])
        np.testing.assert_array_equal(fast.predict(x), ref.predict(x))


@pytest.mark.parametrize("name,method", [("resnet20", "xnor"), ("resnet20_bireal", "rbnn"), ("resnet18_cifar", "rbnn")])
def test_pooled_float_outputs_equal_the_reference(name, method, tmp_path):
    """A run over several images hands each float output an array that a dead value left (warm in cache), or
    writes it over its residual when that dies with this step, instead of one array per step: fewer arrays than
    float outputs, and every logit still equals the reference engine's (an array handed on or overwritten while
    its value is still read would change them)."""
    m, size = _build(name, method, seed=6)
    p = tmp_path / "m.rbnn"
    deploy.export(m, p, input_shape=size)
    fast, ref = deploy.load(p, backend="fast"), deploy.load(p, backend="reference")
    buffers, takes = fast.ops.buffers, []
    take = buffers.take
    buffers.take = lambda *a: takes.append(a) or take(*a)
    x = rand_input(size, 5, seed=7)
    np.testing.assert_array_equal(fast.predict(x), ref.predict(x))
    pooled = sum(len(v) for v in buffers._local.pool.values())
    # fewer arrays than float outputs: pooled ones handed on, and residual blocks writing over their residual
    in_place = sum(getattr(s, "res_dies", False) for _, _, s in fast.ops.steps)
    assert 0 < pooled <= len(takes) and (pooled < len(takes) or in_place >= 6), (pooled, len(takes), in_place)
    if name.startswith("resnet20"):  # every block's second conv adds a residual that dies there
        assert in_place >= 6
    np.testing.assert_array_equal(fast.predict(x[:2]), ref.predict(x[:2]))
