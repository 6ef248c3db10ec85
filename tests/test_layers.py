"""Binary layers and prepare(): forward values, gradients (closed forms and finite differences), state."""

import io
import math

import pytest
import torch
from torch import nn

from rbnn.methods import METHODS, get_recipe, prepare
from rbnn.nn import BinaryConv2d, BinaryLinear, BinaryRecipe, binary_modules
from rbnn.rotation import orthogonality_error, rotate


def small_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardtanh(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Hardtanh(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 16), nn.Hardtanh(), nn.Linear(16, 4))


def test_prepare_keeps_first_and_last_float_and_says_so():
    torch.manual_seed(0)
    net = prepare(small_net(), "xnor")
    assert type(net[0]) is nn.Conv2d and type(net[10]) is nn.Linear
    assert isinstance(net[3], BinaryConv2d) and isinstance(net[8], BinaryLinear)
    assert net.binarization["float_layers"] == ["0", "10"]
    assert net.binarization["binary_layers"] == ["3", "8"]
    net2 = prepare(small_net(), "xnor", skip=["3", "8"])
    assert net2.binarization["binary_layers"] == ["0", "10"]
    assert prepare(small_net(), "fp").binarization["binary_layers"] == []


def test_unknown_method_and_bad_override():
    with pytest.raises(KeyError, match="unknown method"):
        get_recipe("nope")
    with pytest.raises(ValueError, match="unknown recipe field"):
        get_recipe("xnor", bogus=1)
    with pytest.raises(ValueError, match="weight_estimator"):
        BinaryRecipe(weight_estimator="magic")


@pytest.mark.parametrize("method", [m for m, r in METHODS.items() if r is not None and r.weight_estimator])
def test_binary_weights_and_inputs_are_pm1_times_scale(method):
    torch.manual_seed(0)
    net = prepare(small_net(), method)
    layer = net[3]
    wb = layer.binary_weight().detach()
    scale = wb.abs().reshape(wb.shape[0], -1)
    # one magnitude per output channel, signs +-1 (or 0 only in the faithful sign(0)=0 mode)
    assert torch.allclose(scale, scale[:, :1].expand_as(scale))
    xb = layer.binary_input(torch.randn(2, 8, 5, 5))
    assert set(xb.unique().tolist()) <= {-1.0, 1.0}
    out = net(torch.randn(2, 3, 8, 8))
    out.sum().backward()
    assert torch.isfinite(out).all()


def test_xnor_weight_gradient_closed_form():
    torch.manual_seed(0)
    layer = BinaryLinear(6, 3, bias=False, recipe=METHODS["xnor"].replace(act_estimator=None))
    with torch.no_grad():
        layer.weight.mul_(3)  # some |w| > 1 so the clip matters
    g = torch.randn(3, 6)
    wb = layer.binary_weight()
    wb.backward(g)
    w = layer.weight.detach()
    n = w.shape[1]
    alpha = w.abs().mean(1, keepdim=True)
    b = torch.sign(w)
    # exact chain rule of alpha*sign(w) with alpha = mean|w| and clipped STE on the sign
    expected = alpha * g * (w.abs() <= 1) + b * (g * b).sum(1, keepdim=True) / n
    assert torch.allclose(layer.weight.grad, expected, atol=1e-6)


def test_irnet_standardize_and_pow2():
    torch.manual_seed(0)
    layer = BinaryConv2d(4, 5, 3, recipe=METHODS["irnet"])
    wb = layer.binary_weight().detach()
    s = wb.abs().reshape(5, -1)[:, 0]
    assert all(math.log2(v).is_integer() for v in s.tolist())
    w_hat = layer.latent_weight().detach()
    assert torch.equal(torch.sign(wb), torch.where(w_hat >= 0, 1.0, -1.0))


def rbnn_layer(**kw):
    torch.manual_seed(0)
    return BinaryConv2d(8, 6, 3, padding=1, recipe=METHODS["rbnn-faithful"].replace(**kw))


def test_rbnn_step0_latent_gradient_is_zero_and_theta_gradient_formula():
    layer = rbnn_layer(zero=0, eps=0.0)
    x = torch.randn(2, 8, 6, 6)
    layer(x).square().sum().backward()
    # float32 sin(pi/2) == 1, so (1 - alpha) = 0: the latent weights get exactly zero gradient (spec §1.7)
    assert float(layer.weight.grad.abs().max()) == 0.0
    assert float(layer.theta.grad.abs().max()) < 1e-4


def _theta_grad_check(rotation_grad):
    layer = rbnn_layer(rotation_grad=rotation_grad)
    layer.set_epoch(5, 10)
    with torch.no_grad():
        layer.theta.copy_(torch.linspace(0.3, 1.2, 6))
    x = torch.randn(2, 8, 6, 6)
    g_out = torch.randn(2, 6, 6, 6)
    # capture dL/dw_tilde through a hook
    captured = {}
    w_tilde = layer.mixed_weight()
    w_tilde.register_hook(lambda g: captured.setdefault("g", g))
    from rbnn.functional.surrogates import binarize
    wb = binarize(w_tilde, "rbnn", 1, layer.t, layer.k)
    y = torch.nn.functional.conv2d(layer.binary_input(x), wb, padding=1) * layer.scale.view(1, -1, 1, 1)
    (y * g_out).sum().backward()
    return layer, captured["g"]


def test_rbnn_theta_gradient_matches_spec_formula():
    layer, g_wt = _theta_grad_check("stop")
    w_hat = layer.latent_weight().detach()
    W_R = rotate(w_hat.reshape(6, layer.n1, layer.n2), layer.R1, layer.R2).reshape(w_hat.shape)
    th = layer.theta.detach()
    expected = torch.sign(torch.sin(th)) * torch.cos(th) * (g_wt * (W_R - w_hat)).sum((1, 2, 3))
    assert torch.allclose(layer.theta.grad, expected, rtol=1e-4, atol=1e-6)


def test_rbnn_theta_gradient_finite_difference():
    # L(theta) = <G, w_tilde(theta)> is smooth in theta: compare autograd with central differences
    layer = rbnn_layer()
    with torch.no_grad():
        layer.theta.copy_(torch.linspace(0.3, 1.2, 6))
    layer = layer.double()
    G = torch.randn(6, 8, 3, 3, dtype=torch.float64)
    (layer.mixed_weight() * G).sum().backward()
    h = 1e-6
    for c in range(6):
        with torch.no_grad():
            layer.theta[c] += h
            up = float((layer.mixed_weight() * G).sum())
            layer.theta[c] -= 2 * h
            down = float((layer.mixed_weight() * G).sum())
            layer.theta[c] += h
        assert layer.theta.grad[c].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("mode", ["stop", "full"])
def test_rbnn_latent_gradient_stop_vs_full_chain_rule(mode, monkeypatch):
    """d w_tilde / d w_hat of the layer's own mixed_weight(), against the closed form written with an explicit
    Kronecker product: w_tilde_c = (1 - a_c) w_c + a_c (R1 (x) R2)^T w_c (row-major vec), so the gradient is
    (1 - a) G + a (R1 (x) R2) G with the full chain rule, and (1 - a) G with the reference's stop-gradient."""
    layer = rbnn_layer(rotation_grad=mode).double()
    with torch.no_grad():
        layer.theta.copy_(torch.linspace(0.3, 1.2, 6))
    wh = layer.latent_weight().detach().clone().requires_grad_(True)
    monkeypatch.setattr(layer, "latent_weight", lambda: wh)  # differentiate w.r.t. w_hat itself
    G = torch.randn(6, 8, 3, 3, dtype=torch.float64)
    (layer.mixed_weight() * G).sum().backward()
    a = torch.sin(layer.theta.detach()).abs().view(-1, 1)
    K = torch.kron(layer.R1, layer.R2)  # (n, n), n = n1 * n2 = 72
    g = G.reshape(6, -1)
    expected = (1 - a) * g + (a * (g @ K.t()) if mode == "full" else 0)
    assert torch.allclose(wh.grad.reshape(6, -1), expected, atol=1e-12)
    if mode == "full":  # the two modes differ by a visible amount, so the check above can tell them apart
        assert (a * (g @ K.t())).abs().max() > 0.1


def test_rotation_update_outside_forward_and_eval_is_deterministic():
    layer = rbnn_layer()
    R1 = layer.R1.clone()
    x = torch.randn(2, 8, 6, 6)
    layer.train()
    layer(x)
    assert torch.equal(layer.R1, R1)  # forward never rotates
    layer.update_rotation()
    assert not torch.equal(layer.R1, R1)
    assert orthogonality_error(layer.R1) < 1e-5 and orthogonality_error(layer.R2) < 1e-5
    layer.eval()
    with torch.no_grad():
        y1, y2 = layer(x), layer(x)
    assert torch.equal(y1, y2)


def test_rotation_update_raises_objective():
    layer = rbnn_layer()
    from rbnn.rotation import rotation_objective
    X = layer.latent_weight().detach().reshape(-1, layer.n1, layer.n2)
    before = float(rotation_objective(X, layer.R1, layer.R2))
    layer.update_rotation()
    assert float(rotation_objective(X, layer.R1, layer.R2)) >= before


def test_state_dict_round_trip_strict():
    torch.manual_seed(0)
    net = prepare(small_net(), "rbnn")
    for _, m in binary_modules(net):
        m.set_epoch(3, 10)
        m.update_rotation()
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    torch.manual_seed(1)
    net2 = prepare(small_net(), "rbnn")
    buf.seek(0)
    net2.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    for key in ("3.R1", "3.R2", "3.theta", "3.scale", "3.t", "3.k"):
        assert torch.equal(net.state_dict()[key], net2.state_dict()[key]), key
    x = torch.randn(2, 3, 8, 8)
    net.eval(), net2.eval()
    assert torch.equal(net(x), net2(x))


def test_eps_prevents_nan_on_constant_input():
    # reference behaviour: a constant activation map gives 0/0 in the per-sample standardization; the NaN
    # reaches the gradients (torch.sign(nan) hides it in the forward)
    for eps, finite in ((0.0, False), (1e-5, True)):
        layer = rbnn_layer(zero=0, eps=eps)
        with torch.no_grad():
            layer.theta.fill_(1.0)
        x = torch.zeros(2, 8, 6, 6, requires_grad=True)
        layer(x).sum().backward()
        assert bool(torch.isfinite(x.grad).all()) is finite
        assert bool(torch.isfinite(layer.weight.grad).all())


@pytest.mark.parametrize("cls", ["conv", "linear"])
def test_learned_output_scale_equals_scaling_the_output(cls):
    # lambda is applied to the weight (and bias) for speed; it must equal (conv(x, b) + bias) * lambda, with the
    # same gradients for lambda, the bias and the input
    torch.manual_seed(1)
    recipe = METHODS["rbnn"]
    if cls == "conv":
        layer = BinaryConv2d(4, 5, 3, padding=1, bias=True, recipe=recipe).double()
        x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    else:
        layer = BinaryLinear(12, 5, bias=True, recipe=recipe).double()
        x = torch.randn(3, 12, dtype=torch.float64)
    with torch.no_grad():
        layer.scale.copy_(torch.tensor([0.5, -1.25, 2.0, 0.1, -0.3], dtype=torch.float64))
        layer.bias.normal_()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = layer(xa)
    ga = torch.autograd.grad(ya.square().sum(), [layer.scale, layer.bias, xa])
    a = layer.binary_input(xb)
    raw = (torch.nn.functional.conv2d(a, layer.binary_weight(), layer.bias, padding=1) if cls == "conv"
           else torch.nn.functional.linear(a, layer.binary_weight(), layer.bias))
    yb = raw * layer.scale.reshape(1, -1, *([1] * (raw.dim() - 2)))
    gb = torch.autograd.grad(yb.square().sum(), [layer.scale, layer.bias, xb])
    torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-12)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-10)
