"""Model zoo: registry, shapes, float layers, init conventions, fx-traceability, backward."""

from __future__ import annotations

import fnmatch
import operator

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from rbnn import models
from rbnn.models import _registry
from rbnn.models.blocks import BasicBlock, BiRealBlock, ShortcutA
from rbnn.nn import BinaryMixin

IMAGENET = ("resnet18", "resnet34")
CIFAR_BINARY = ("resnet20", "resnet20_bireal", "resnet18_cifar", "vgg_small", "smallnet")
EXPECTED = {"resnet20", "resnet20_bireal", "resnet18_cifar", "vgg_small", "resnet18", "resnet34", "smallnet"}


def small_input(name: str, model: nn.Module, n: int = 2) -> torch.Tensor:
    c, h, w = model.input_size
    if name in IMAGENET:
        h = w = 64
    return torch.randn(n, c, h, w)


class BinaryLeafTracer(torch.fx.Tracer):
    """What the exporter does: binary layers are opaque leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, BinaryMixin) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> torch.fx.GraphModule:
    return torch.fx.GraphModule(model, BinaryLeafTracer().trace(model))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---- registry ------------------------------------------------------------------------------------
def test_registry_lists_contract_models():
    assert EXPECTED <= set(models.list_models())
    assert models.list_models() == sorted(models.list_models())
    assert models.list_models("resnet20*") == ["resnet20", "resnet20_bireal"]


def test_unknown_model_lists_available():
    with pytest.raises(KeyError, match="resnet20"):
        models.create("no_such_net")


def test_register_model_extends_and_rejects_duplicates():
    @models.register_model("_test_tiny")
    def tiny(num_classes=10, in_channels=3, init="reference"):
        m = nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.Flatten(), nn.LazyLinear(num_classes))
        m.float_layers = ["0"]
        return m

    try:
        assert "_test_tiny" in models.list_models()
        m = models.create("_test_tiny", "xnor", num_classes=3)
        assert m.binarization["float_layers"] == ["0"]
        with pytest.raises(ValueError, match="already registered"):
            models.register_model("_test_tiny")(tiny)
    finally:
        _registry._MODELS.pop("_test_tiny", None)


def test_invalid_init_and_options():
    with pytest.raises(ValueError, match="init"):
        models.create("resnet20", init="xavier")
    with pytest.raises(ValueError):
        models.create("resnet20", "fp", zero=0)  # fp takes no recipe options
    with pytest.raises(ValueError):
        models.create("resnet20", "xnor", not_a_field=1)


def test_method_overrides_reach_the_recipe():
    m = models.create("resnet20", "rbnn", zero=0)
    assert m.binarization["recipe"]["zero"] == 0
    assert not hasattr(models.create("resnet20", None), "binarization")


# ---- shapes, for every model and method ----------------------------------------------------------
@pytest.mark.parametrize("method", ["fp", "xnor", "rbnn"])
@pytest.mark.parametrize("name", sorted(EXPECTED | {"smallnet_wide"}))
def test_builds_and_output_shape(name, method):
    model = models.create(name, method, num_classes=7)
    x = small_input(name, model)
    assert model(x).shape == (2, 7)
    model.eval()
    assert model(x[:1]).shape == (1, 7)


@pytest.mark.parametrize("name,channels", [("resnet20", 1), ("smallnet", 3), ("vgg_small", 1),
                                                  ("resnet18", 1)])
def test_in_channels_honored(name, channels):
    model = models.create(name, "xnor", in_channels=channels)
    assert model.input_size[0] == channels
    assert model(small_input(name, model)).shape == (2, 10)


def test_default_input_sizes():
    assert models.create("resnet20").input_size == (3, 32, 32)
    assert models.create("vgg_small").input_size == (3, 32, 32)
    assert models.create("resnet18").input_size == (3, 224, 224)
    assert models.create("smallnet").input_size == (1, 28, 28)


def test_input_size_sizes_the_classifier():
    vgg = models.create("vgg_small", input_size=(16, 16))
    assert vgg.fc.in_features == 512 * 2 * 2 and vgg.input_size == (3, 16, 16)
    assert models.create("vgg_small").fc.in_features == 512 * 4 * 4
    net = models.create("smallnet", "xnor", input_size=(3, 32, 32))
    assert net.input_size == (3, 32, 32)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError):
        models.create("smallnet", in_channels=1, input_size=(3, 28, 28))
    # global pooling: the ResNets accept other sizes unchanged
    assert models.create("resnet20", "xnor")(torch.randn(2, 3, 24, 24)).shape == (2, 10)


def test_parameter_counts():
    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(models.create("resnet20")) == pytest.approx(0.27e6, rel=0.03)
    assert count(models.create("resnet18", num_classes=1000)) == pytest.approx(11.69e6, rel=0.03)
    assert count(models.create("resnet34", num_classes=1000)) == pytest.approx(21.8e6, rel=0.03)


def test_structure_conventions():
    for name in sorted(EXPECTED):
        model = models.create(name)
        mods = list(model.modules())
        assert all(m.bias is None for m in mods if isinstance(m, nn.Conv2d)), name
        assert not any(isinstance(m, nn.ReLU | nn.ReLU6 | nn.PReLU) for m in mods), name
        assert any(isinstance(m, nn.Hardtanh) for m in mods), name


# ---- float layers --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_float_layers_are_exactly_what_prepare_keeps(name):
    model = models.create(name)
    matched = [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)
               and any(fnmatch.fnmatchcase(n, p) for p in model.float_layers)]
    prepared = models.create(name, "xnor")
    assert prepared.binarization["float_layers"] == matched
    kept = {n for n, m in prepared.named_modules() if type(m) in (nn.Conv2d, nn.Linear)}
    assert kept == set(matched)
    binary = prepared.binarization["binary_layers"]
    assert all(isinstance(prepared.get_submodule(n), BinaryMixin) for n in binary)


def test_float_layer_choices_follow_the_spec():
    assert models.create("resnet20", "xnor").binarization["float_layers"] == ["conv1", "fc"]
    assert models.create("vgg_small", "xnor").binarization["float_layers"] == ["conv0", "fc"]
    assert len(models.create("vgg_small", "xnor").binarization["binary_layers"]) == 5
    r18c = models.create("resnet18_cifar", "xnor").binarization
    assert r18c["float_layers"] == ["conv1", "fc"]
    assert "layer2.0.shortcut.0" in r18c["binary_layers"]  # RBNN binarizes the CIFAR ResNet-18 downsample
    r18 = models.create("resnet18", "xnor").binarization
    assert r18["float_layers"] == ["conv1", "layer2.0.shortcut.0", "layer3.0.shortcut.0",
                                   "layer4.0.shortcut.0", "fc"]
    assert len(r18["binary_layers"]) == 16


# ---- shortcuts and block structure ---------------------------------------------------------------
def test_shortcut_a_matches_hand_computation():
    x = torch.randn(2, 16, 7, 7)
    y = ShortcutA(2, 32, 16)(x)
    expected = torch.zeros(2, 32, 4, 4)
    expected[:, 8:24] = x[:, :, 0::2, 0::2]
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    torch.testing.assert_close(ShortcutA(2, 32)(x), expected, rtol=0, atol=0)  # in_channels inferred
    torch.testing.assert_close(ShortcutA(1, 16, 16)(x), x)
    with pytest.raises(ValueError):
        ShortcutA(1, 8, 16)


def _count_adds(model: nn.Module) -> int:
    graph = trace(model).graph
    return sum(1 for n in graph.nodes if n.op == "call_function" and n.target in (operator.add, torch.add))


def test_bireal_has_a_shortcut_per_conv():
    normal, bireal = models.create("resnet20", "xnor"), models.create("resnet20_bireal", "xnor")
    assert _count_adds(normal) == 9 and _count_adds(bireal) == 18
    assert isinstance(normal.layer1[0], BasicBlock) and isinstance(bireal.layer1[0], BiRealBlock)
    assert _count_adds(models.create("resnet18", "xnor")) == 16
    assert isinstance(normal.layer2[0].shortcut, ShortcutA)
    assert not any(isinstance(m, nn.Conv2d) for m in normal.layer2[0].shortcut.modules())


def test_block_forward_matches_formula():
    block = BiRealBlock(16, 32, stride=2).eval()
    x = torch.randn(2, 16, 8, 8)
    h = F.hardtanh(block.bn1(block.conv1(x)) + block.shortcut(x))
    torch.testing.assert_close(block(x), F.hardtanh(block.bn2(block.conv2(h)) + h))
    block = BasicBlock(16, 16).eval()
    h = F.hardtanh(block.bn1(block.conv1(x)))
    torch.testing.assert_close(block(x), F.hardtanh(block.bn2(block.conv2(h)) + x))


# ---- fx traceability (the exporter walks these graphs) -------------------------------------------
@pytest.mark.parametrize("method", ["xnor", "rbnn"])
@pytest.mark.parametrize("name", sorted(EXPECTED | {"smallnet_wide"}))
def test_fx_trace_after_prepare(name, method):
    model = models.create(name, method).eval()
    gm = trace(model)
    leaves = [n.target for n in gm.graph.nodes if n.op == "call_module"
              and isinstance(gm.get_submodule(n.target), BinaryMixin)]
    assert sorted(leaves) == sorted(model.binarization["binary_layers"])
    x = small_input(name, model)
    torch.testing.assert_close(gm(x), model(x))


def test_fx_trace_float_model():
    model = models.create("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), model(x))


# ---- init conventions ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet20", "resnet20_bireal", "resnet18"])
def test_reference_init_bn2d_weights(name):
    model = models.create(name, "xnor")
    bn2d = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn2d and all(torch.all(m.weight == 1e-8) and torch.all(m.bias == 0) for m in bn2d)
    assert all(torch.all(m.weight == 1) for m in model.modules() if isinstance(m, nn.BatchNorm1d))
    pytorch = models.create(name, "xnor", init="pytorch")
    assert all(torch.all(m.weight == 1) for m in pytorch.modules() if isinstance(m, nn.BatchNorm2d))


def test_reference_init_vgg_and_kaiming():
    vgg = models.create("vgg_small")
    assert vgg.fc.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert vgg.conv5.weight.std().item() == pytest.approx((2 / (9 * 512)) ** 0.5, rel=0.05)
    assert all(torch.all(m.weight == 1) for m in vgg.modules() if isinstance(m, nn.BatchNorm2d))
    r20 = models.create("resnet20")
    # Kaiming-normal (fan_in, gain sqrt 2): std = sqrt(2 / (C_in k^2))
    assert r20.layer3[0].conv2.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)
    # prepare keeps the initialized weights
    torch.manual_seed(1)
    a = models.create("resnet20")
    torch.manual_seed(1)
    b = models.create("resnet20", "xnor")
    torch.testing.assert_close(a.layer1[0].conv1.weight, b.layer1[0].conv1.weight)


# ---- training works ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["xnor", "rbnn"])
@pytest.mark.parametrize("name", CIFAR_BINARY)
def test_backward_through_binary_model(name, method):
    size = None if name in ("resnet20", "resnet20_bireal", "smallnet") else (16, 16)
    model = models.create(name, method, input_size=size).train()
    x = torch.randn(4, *model.input_size)
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for layer_name in model.binarization["binary_layers"]:
        g = model.get_submodule(layer_name).weight.grad
        assert g is not None and torch.isfinite(g).all(), layer_name
    assert model.fc.weight.grad.abs().sum() > 0
    # gradient reaches the first binary layer (for RBNN at init, alpha = sin(pi/2) = 1 and the stop-gradient
    # through R zero the latent-weight gradient by design; theta and the scale still get one)
    first = model.get_submodule(model.binarization["binary_layers"][0])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in first.parameters())
