"""Export + packed engines: integer-exact per binary layer, logits within 1e-4, same argmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_deploy_helpers import mlp, rand_input, randomize, tiny
from torch import nn

import rbnn.deploy as deploy
from rbnn.export.exporter import ExportError
from rbnn.methods import METHODS, prepare
from rbnn.nn.recipe import BinaryRecipe

BINARY_METHODS = [m for m, r in METHODS.items() if r is not None and r.weight_estimator is not None]
W32_METHODS = [m for m, r in METHODS.items() if r is not None and r.weight_estimator is None]


def check(model, path, x, backend="reference", rtol=1e-4):
    rep = deploy.verify(model, path, x, backend=backend)
    bad = {k: v for k, v in rep["layers"].items() if not v["equal"]}
    assert rep["int_exact"], f"integer mismatch in {bad}"
    assert rep["max_rel_logit_err"] <= rtol, rep["max_rel_logit_err"]
    assert rep["argmax_agreement"] == 1.0
    return rep


@pytest.mark.parametrize("method", BINARY_METHODS)
def test_tiny_every_method_reference(method, tmp_path):
    m = tiny(method)
    p = tmp_path / "m.rbnn"
    info = deploy.export(m, p, input_shape=(3, 11, 13))
    assert info["binary_layers"] == ["conv2", "conv3", "conv4"]
    assert info["float_layers"] == ["conv1", "fc"]
    for n in (1, 5):
        check(m, p, rand_input((3, 11, 13), n, seed=n))


@pytest.mark.parametrize("method", ["xnor", "rbnn", "irnet", "rbnn-faithful"])
def test_mlp_binary_linear(method, tmp_path):
    m = mlp(method)
    p = tmp_path / "m.rbnn"
    info = deploy.export(m, p, input_shape=(70,))
    assert info["binary_layers"] == ["fc1"]
    check(m, p, rand_input((70,), 3))


def test_layer_outputs_match_torch_chain(tmp_path):
    """Chained run: packed layer_outputs equal torch's pre-activations computed on torch's own inputs."""
    from rbnn.export.verifier import torch_layer_dot

    m = tiny("xnor")
    p = tmp_path / "m.rbnn"
    deploy.export(m, p, input_shape=(3, 9, 9))
    x = rand_input((3, 9, 9), 3)
    captured = {}
    hooks = [
        getattr(m, n).register_forward_hook(lambda mod, a, o, n=n: captured.__setitem__(n, a[0]))
        for n in ("conv2", "conv3", "conv4")
    ]
    with torch.no_grad():
        m(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    outs = deploy.load(p, backend="reference").layer_outputs(x)
    for n, v in outs.items():
        np.testing.assert_array_equal(v, torch_layer_dot(getattr(m, n), captured[n]))


def test_ternary_activations_exact(tmp_path):
    """sign(0)=0 (faithful mode) with many exact zeros in the binary layer inputs (ReLU, zero-padding)."""
    torch.manual_seed(0)
    recipe = BinaryRecipe(zero=0)
    m = tiny(recipe)
    m.act = nn.ReLU()  # exact zeros everywhere
    randomize(m)
    with torch.no_grad():  # exact zero weights too
        m.conv3.weight[:, :3] = 0.0
    p = tmp_path / "m.rbnn"
    deploy.export(m, p, input_shape=(3, 8, 8))
    rep = check(m, p, rand_input((3, 8, 8), 4))
    assert rep["layers"]["conv3"]["equal"]


def test_zero_padding_border_taps(tmp_path):
    """A padding of 2 with a 3x3 kernel makes corner outputs see mostly padding; must stay exact."""
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(2, 70, 3, padding=1),
        nn.BatchNorm2d(70),
        nn.Hardtanh(),
        nn.Conv2d(70, 65, 3, padding=2, stride=3),
        nn.BatchNorm2d(65),
        nn.Hardtanh(),
        nn.Flatten(),
        nn.Linear(65 * 3 * 3, 4),
    )
    prepare(net, "bireal")
    randomize(net)
    p = tmp_path / "m.rbnn"
    deploy.export(net, p, input_shape=(2, 5, 5))
    check(net, p, rand_input((2, 5, 5), 3))


def test_unsupported_op_names_node(tmp_path):
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.sigmoid(self.conv(x)).flatten(1)

    with pytest.raises(ExportError, match="sigmoid"):
        deploy.export(Bad(), tmp_path / "b.rbnn", input_shape=(3, 6, 6))


@pytest.mark.parametrize("method", W32_METHODS)
def test_real_weights_refused(method, tmp_path):
    with pytest.raises(ExportError, match="real-valued weights"):
        deploy.export(tiny(method), tmp_path / "b.rbnn", input_shape=(3, 8, 8))


def test_real_activations_refused(tmp_path):
    m = prepare(TinyNetFor1w32a(), BinaryRecipe(act_estimator=None))
    with pytest.raises(ExportError, match="real-valued activations"):
        deploy.export(m, tmp_path / "b.rbnn", input_shape=(3, 8, 8))


class TinyNetFor1w32a(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(3, 8, 3)
        self.c1 = nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.c1(self.c0(x)).mean((2, 3)))


def test_header_is_self_describing(tmp_path):
    import json

    m = tiny("rbnn")
    m.binarization["note"] = "x"
    p = tmp_path / "m.rbnn"
    deploy.export(m, p, input_shape=(3, 8, 8))
    z = np.load(p, allow_pickle=False)
    header = json.loads(bytes(z["__rbnn_header__"]).decode())
    assert header["version"] == deploy.FORMAT_VERSION
    assert header["model"]["binarization"]["method"] == "rbnn"
    assert "padding" in header["conventions"] and "bit_order" in header["conventions"]
    assert {f["name"] for f in header["float_layers"]} == {"conv1", "fc"}
    bconv = [n for n in header["nodes"] if n["op"] == "bconv"]
    assert bconv[0]["arrays"]["w_bits"]["dtype"] == "uint64"
    assert bconv[0]["arrays"]["w_bits"]["shape"] == [24, 3]  # 24 filters of 16*9 = 144 bits
