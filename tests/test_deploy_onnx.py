"""ONNX export: training sign semantics (sign(0)=+1 without a bare Sign), checked with onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_deploy_helpers import rand_input, tiny
from torch import nn

import rbnn.deploy as deploy
from rbnn.methods import prepare

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


@pytest.mark.parametrize("method", ["xnor", "rbnn", "irnet", "bireal", "rbnn-faithful"])
def test_onnx_matches_torch(method, tmp_path):
    m = tiny(method)
    p = deploy.export_onnx(m, tmp_path / "m.onnx", (3, 9, 9))
    ops = {n.op_type for n in onnx.load(p).graph.node}
    zero = m.conv2.recipe.zero
    if zero == 1:
        assert "Sign" not in ops and {"GreaterOrEqual", "Where"} <= ops
    for n in (1, 4):
        x = rand_input((3, 9, 9), n, seed=n)
        a = _run(p, x)
        with torch.no_grad():
            b = m(torch.from_numpy(x)).numpy()
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
        assert (a.argmax(1) == b.argmax(1)).all()


def test_onnx_sign_of_exact_zero(tmp_path):
    """Inputs that are exactly 0 must binarize to +1 (not ONNX Sign's 0)."""
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.Conv2d(3, 4, 1), nn.Flatten())
    prepare(net, "bnn", skip=["0"])
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.zero_()  # the binary layer sees exactly 0 everywhere
    net.eval()
    p = deploy.export_onnx(net, tmp_path / "z.onnx", (2, 3, 3))
    x = rand_input((2, 3, 3), 2)
    with torch.no_grad():
        b = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(p, x), b, rtol=1e-6)
    assert np.abs(b).min() > 0  # sum of +-1 weights times +1 inputs: all nonzero here (3 odd)


def test_onnx_and_packed_agree(tmp_path):
    m = tiny("rbnn")
    po = deploy.export_onnx(m, tmp_path / "m.onnx", (3, 8, 8))
    pp = tmp_path / "m.rbnn"
    deploy.export(m, pp, input_shape=(3, 8, 8))
    x = rand_input((3, 8, 8), 3)
    a, b = _run(po, x), deploy.load(pp).predict(x)
    assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
