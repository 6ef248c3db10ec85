"""ReBNN: binarizer gradients, the γ rule, state/resume, stage 1 → 2 loading, ReActNet models, oscillation."""

from __future__ import annotations

import io

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F

from rbnn import models
from rbnn.diagnostics.oscillation import OscillationMonitor
from rbnn.methods import METHODS, get_recipe, prepare
from rbnn.nn.layers import BinaryConv2d, BinaryLinear, BinaryMixin, auxiliary_losses, binary_modules
from rbnn.nn.rebnn import (
    RELEASED_BIN,
    ReBNNScale,
    flip_fraction,
    gamma_rule,
    rebnn_layers,
    rebnn_weight,
    sign_int8,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _linear(method: str, out_f=4, in_f=16, seed=0, **overrides) -> BinaryLinear:
    torch.manual_seed(seed)
    fp = torch.nn.Linear(in_f, out_f, bias=False, dtype=torch.float64)
    with torch.no_grad():
        w = torch.randn(out_f, in_f, dtype=torch.float64) * 0.8
        w[w.abs() < 1e-2] += 0.05  # keep away from the sign's kink for finite differences
        fp.weight.copy_(w)
    return BinaryLinear.from_float(fp, get_recipe(method, **overrides))  # the path prepare() takes


def _set_gamma(layer, values) -> None:
    layer.gamma.copy_(torch.as_tensor(values, dtype=layer.gamma.dtype))


# ---------------------------------------------------------------------------------------------------------
# gradients
def test_paper_weight_and_scale_gradients_closed_form():
    layer = _linear("rebnn")
    assert isinstance(layer.weight_scale, ReBNNScale) and isinstance(layer, BinaryLinear)
    w, a = layer.weight, layer.rebnn_alpha
    assert torch.allclose(a, w.detach().abs().mean(1))  # init mean|w_c|
    _set_gamma(layer, [0.3, 0.05, 0.0, 1.0])
    gam = layer.gamma.clone()
    c = torch.randn_like(w)
    wh = rebnn_weight(layer)
    b = torch.where(w.detach() >= 0, 1.0, -1.0).double()
    assert torch.equal(wh.detach(), a.detach()[:, None] * b)
    (c * wh).sum().backward()
    wd, ad = w.detach(), a.detach()[:, None]
    r = wd - ad * b
    exp_w = c * ad * (wd.abs() <= 1).double() + gam[:, None] * r
    exp_a = (c * b).sum(1) - gam * (r * b).sum(1)
    assert (wd.abs() > 1).any()  # the clip is exercised
    torch.testing.assert_close(w.grad, exp_w)
    torch.testing.assert_close(a.grad, exp_a)


def test_paper_gradients_match_finite_differences_of_task_plus_reconstruction():
    layer = _linear("rebnn", seed=1)
    _set_gamma(layer, [0.2, 0.7, 0.05, 1.5])
    gam = layer.gamma.clone()
    w0, a0 = layer.weight.detach().clone(), layer.rebnn_alpha.detach().clone()
    c = torch.randn_like(w0)

    def recon(w, a):  # (γ/2)||w − α b||² with b = sign(w) (piecewise constant: differentiable away from 0)
        b = torch.where(w >= 0, 1.0, -1.0).double()
        return 0.5 * (gam[:, None] * (w - a[:, None] * b) ** 2).sum()

    def task(w, a):
        return (c * a[:, None] * torch.where(w >= 0, 1.0, -1.0).double()).sum()

    # reconstruction part: zero task gradient -> the backward is exactly the reconstruction gradient
    rebnn_weight(layer).backward(torch.zeros_like(w0))
    eps = 1e-6
    fd_w = torch.zeros_like(w0)
    for idx in range(w0.numel()):
        e = torch.zeros_like(w0).view(-1)
        e[idx] = eps
        e = e.view_as(w0)
        fd_w.view(-1)[idx] = (recon(w0 + e, a0) - recon(w0 - e, a0)) / (2 * eps)
    torch.testing.assert_close(layer.weight.grad, fd_w, rtol=1e-6, atol=1e-8)
    # scale: task + reconstruction are both differentiable in α -> full finite differences
    layer.zero_grad()
    (c * rebnn_weight(layer)).sum().backward()
    fd_a = torch.zeros_like(a0)
    for i in range(a0.numel()):
        e = torch.zeros_like(a0)
        e[i] = eps
        J = lambda a: task(w0, a) + recon(w0, a)  # noqa: E731
        fd_a[i] = (J(a0 + e) - J(a0 - e)) / (2 * eps)
    torch.testing.assert_close(layer.rebnn_alpha.grad, fd_a, rtol=1e-6, atol=1e-8)
    # weight: task part is the clipped-STE closed form, the rest is the reconstruction FD
    clip = (w0.abs() <= 1).double()
    torch.testing.assert_close(layer.weight.grad, c * a0[:, None] * clip + fd_w, rtol=1e-6, atol=1e-8)


def test_released_gradients_closed_form():
    layer = _linear("rebnn-released", seed=2)
    assert not hasattr(layer, "rebnn_alpha")
    w, s = layer.weight, layer.rebnn_s
    with torch.no_grad():
        s[0] = -s[0].abs() - 0.1  # a negative s: the gradient goes through abs
    gam = layer.gamma.clone()
    assert torch.all(gam == 2e-4)
    c = torch.randn_like(w)
    wh = rebnn_weight(layer)
    b = RELEASED_BIN * torch.where(w.detach() >= 0, 1.0, -1.0).double()
    S = s.detach().abs()[:, None]
    assert torch.allclose(wh.detach(), S * b)
    torch.testing.assert_close(layer.weight_scale.fold(layer, w.detach()), RELEASED_BIN * s.detach().abs())
    (c * wh).sum().backward()
    wd = w.detach()
    r = wd - S * b
    exp_w = S * c + gam[:, None] * r  # identity STE, no clip
    exp_S = (c * wd).sum(1) - gam * (r * b).sum(1)  # latent w in the task term (released code)
    torch.testing.assert_close(w.grad, exp_w)
    torch.testing.assert_close(s.grad, exp_S * torch.sign(s.detach()))


def test_auxiliary_loss_is_detached_reconstruction_value():
    layer = _linear("rebnn", seed=3)
    _set_gamma(layer, [0.1, 0.2, 0.3, 0.4])
    aux = layer.auxiliary_loss()
    assert not aux.requires_grad
    w, a = layer.weight.detach(), layer.rebnn_alpha.detach()
    b = torch.where(w >= 0, 1.0, -1.0).double()
    torch.testing.assert_close(aux, 0.5 * (layer.gamma[:, None] * (w - a[:, None] * b) ** 2).sum())
    # adding it to the loss (as the engine does) changes no gradient
    c = torch.randn_like(w)
    (c * rebnn_weight(layer)).sum().backward()
    g1 = layer.weight.grad.clone()
    layer.zero_grad()
    ((c * rebnn_weight(layer)).sum() + layer.auxiliary_loss()).backward()
    torch.testing.assert_close(layer.weight.grad, g1)


# ---------------------------------------------------------------------------------------------------------
# gamma rule
def test_gamma_rule_pure_function_and_clamp():
    flip = torch.tensor([0.0, 0.01, 0.1, 0.5])
    g = torch.tensor([1.0, 1e-4, 1e-3, 1.0])
    out = gamma_rule(flip, g, 1e-5, 2e-4)
    torch.testing.assert_close(out, torch.tensor([1e-5, 1e-5, 1e-4, 2e-4]))
    with pytest.raises(ValueError):
        gamma_rule(flip, g, 1e-3, 1e-4)


def test_gamma_rule_on_hand_built_flip_patterns():
    layer = _linear("rebnn", out_f=4, in_f=100, seed=4)
    w = layer.weight.detach()
    with torch.no_grad():
        layer.weight.copy_(w.abs() + 0.1)  # all positive
        layer.prev_sign.fill_(1)
        layer.weight[0, :1] *= -1  # 1 % flipped, small gradient      -> 1e-6 -> clamped up to gamma_min
        layer.weight[1, :50] *= -1  # 50 % flipped, large gradient     -> 0.5  -> clamped down to gamma
        layer.weight[2, :10] *= -1  # 10 % flipped, gradient 1e-3      -> 1e-4 (inside the range)
        # channel 3: no flip                                            -> 0    -> gamma_min
    layer.weight_scale.stash["grad_absmax"] = torch.tensor([1e-4, 1.0, 1e-3, 5.0], dtype=torch.float64)
    expected_flip = torch.tensor([0.01, 0.5, 0.1, 0.0])
    torch.testing.assert_close(flip_fraction(layer.prev_sign, sign_int8(layer.weight)), expected_flip)
    layer.weight_scale.on_after_backward(layer)
    torch.testing.assert_close(layer.gamma, torch.tensor([1e-5, 2e-4, 1e-4, 1e-5], dtype=torch.float64))
    assert torch.equal(layer.prev_sign, sign_int8(layer.weight))  # previous sign advanced
    assert "grad_absmax" not in layer.weight_scale.stash
    # the next iteration with no sign change: every channel at gamma_min
    layer.weight_scale.stash["grad_absmax"] = torch.full((4,), 10.0, dtype=torch.float64)
    layer.weight_scale.on_after_backward(layer)
    assert torch.all(layer.gamma == 1e-5)


def test_backward_captures_max_abs_task_gradient():
    layer = _linear("rebnn", seed=5)
    c = torch.randn(4, 16, dtype=torch.float64)
    (c * rebnn_weight(layer)).sum().backward()
    torch.testing.assert_close(layer.weight_scale.stash["grad_absmax"], c.abs().amax(1))
    with torch.no_grad():
        rebnn_weight(layer)  # no-grad forwards (eval) capture nothing and do not fail


def _tiny_model(method: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return models.create("reactnet_small", method=method, num_classes=5, input_size=(1, 12, 12),
                         model_kwargs={"width": 4, "layers": (1, 1, 1, 1)}, **overrides)


def _train_steps(model, opt, batches):
    losses = []
    hooks = [m for _, m in rebnn_layers(model)]
    aux_terms = auxiliary_losses(model)
    assert len(aux_terms) == len(hooks) > 0
    model.train()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y) + sum(term() for term in aux_terms)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for m in hooks:
            m.weight_scale.on_after_backward(m)
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _batches(n, seed=0, bs=16, size=12, classes=5):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 1, size, size, generator=g), torch.randint(0, classes, (bs,), generator=g))
            for _ in range(n)]


@pytest.mark.parametrize("method,gamma", [("rebnn-released", 2e-4), ("learned-scale", 0.0)])
def test_constant_gamma_stays_exact(method, gamma):
    model = _tiny_model(method)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(4):
        _train_steps(model, opt, _batches(1))
        for _, m in rebnn_layers(model):
            assert torch.all(m.gamma == torch.tensor(gamma, dtype=m.gamma.dtype))


def test_adaptive_gamma_within_clamp_during_training():
    model = _tiny_model("rebnn")
    opt = torch.optim.Adam(model.parameters(), 5e-2)
    _train_steps(model, opt, _batches(4))
    for _, m in rebnn_layers(model):
        assert torch.all((m.gamma >= 1e-5) & (m.gamma <= 2e-4))


# ---------------------------------------------------------------------------------------------------------
# state and resume
def test_state_dict_keys_and_exact_resume():
    model = _tiny_model("rebnn")
    names = [n for n, _ in rebnn_layers(model)]
    assert len(names) == 4
    sd = model.state_dict()
    for n in names:
        assert sd[f"{n}.prev_sign"].dtype == torch.int8
        assert sd[f"{n}.gamma"].shape == (sd[f"{n}.weight"].shape[0],)
        assert f"{n}.rebnn_alpha" in sd
    batches = _batches(7, seed=3)
    opt = torch.optim.Adam(model.parameters(), 2e-2)
    _train_steps(model, opt, batches[:3])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    ref_losses = _train_steps(model, opt, batches[3:])
    ref_state = model.state_dict()

    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    resumed = _tiny_model("rebnn", seed=123)  # different init: everything must come from the state dict
    resumed.load_state_dict(state["model"])
    opt2 = torch.optim.Adam(resumed.parameters(), 2e-2)
    opt2.load_state_dict(state["opt"])
    losses = _train_steps(resumed, opt2, batches[3:])
    assert losses == ref_losses
    for k, v in resumed.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    assert any(not torch.all(ref_state[f"{n}.gamma"] == 1e-5) for n in names)  # γ actually moved


def test_stage1_to_stage2_init_from_reports_new_keys(tmp_path):
    from rbnn.checkpoint import save_checkpoint
    from rbnn.train.engine import _init_from

    s1 = _tiny_model("rebnn-stage1", seed=1)
    assert not rebnn_layers(s1) and len(binary_modules(s1)) == 4
    x = torch.randn(2, 1, 12, 12)
    conv = s1.layer1[0].conv  # W32A1: real weights, binarized inputs (RSign)
    xin = torch.randn(2, 4, 12, 12)
    xb = torch.where(xin + conv.act_shift.view(1, -1, 1, 1) >= 0, 1.0, -1.0)
    ref = F.conv2d(xb, conv.weight, None, 1, 1)
    torch.testing.assert_close(conv(xin), ref)
    s1(x).sum().backward()
    path = tmp_path / "stage1.pt"
    save_checkpoint({"model": s1.state_dict(), "config": {}}, path)

    s2 = _tiny_model("rebnn", seed=2)
    report = _init_from(s2, str(path))
    layers = [n for n, _ in rebnn_layers(s2)]
    expected = sorted(f"{n}.{k}" for n in layers for k in ("gamma", "prev_sign", "rebnn_alpha"))
    assert report == {"new_keys": expected, "unused_keys": []}
    s1_sd = s1.state_dict()
    for n, m in rebnn_layers(s2):
        w = s1_sd[f"{n}.weight"]
        assert torch.equal(m.weight.detach(), w)
        torch.testing.assert_close(m.rebnn_alpha.detach(), w.abs().flatten(1).mean(1))  # α from LOADED w
        assert torch.equal(m.prev_sign, sign_int8(w))
    # the released scale stays randn (released code), but prev_sign follows the loaded weights
    s3 = _tiny_model("rebnn-released", seed=3)
    report3 = _init_from(s3, str(path))
    keys3 = ("gamma", "prev_sign", "rebnn_s")
    assert report3["new_keys"] == sorted(f"{n}.{k}" for n in layers for k in keys3)


# ---------------------------------------------------------------------------------------------------------
# models
class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return isinstance(m, BinaryMixin) or super().is_leaf_module(m, qualname)


@pytest.mark.parametrize("name,size,n_bin", [("reactnet_small", (1, 28, 28), 8),
                                              ("reactnet18", (3, 32, 32), 16),
                                              ("reactnet34", (3, 16, 16), 32)])
def test_reactnet_builds_runs_and_traces(name, size, n_bin):
    torch.manual_seed(0)
    model = models.create(name, method="rebnn", num_classes=7, input_size=size)
    info = model.binarization
    assert len(info["binary_layers"]) == n_bin
    assert all(n.endswith(".conv") for n in info["binary_layers"])
    assert set(info["float_layers"]) == {"conv1", "fc", *(f"layer{i}.0.down.1" for i in (2, 3, 4))}
    assert all(isinstance(m, BinaryConv2d) and isinstance(m.weight_scale, ReBNNScale)
               and m.recipe.act_transform == "shift"
               and m.recipe.act_estimator == "approx" for _, m in binary_modules(model))
    x = torch.randn(2, *size)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    for _, m in binary_modules(model):
        assert m.rebnn_alpha.grad is not None and m.act_shift.grad is not None
    gm = fx.GraphModule(model, _LeafTracer().trace(model))
    model.eval()
    torch.testing.assert_close(gm(x), model(x))


def test_prepare_gives_rsign_on_other_models():
    model = models.create("resnet18", method=None, num_classes=10, input_size=(3, 32, 32))
    prepare(model, "rebnn")
    layers = binary_modules(model)
    assert layers and all(isinstance(m.weight_scale, ReBNNScale) and hasattr(m, "act_shift") for _, m in layers)
    assert all(m.weight_scale.fold(m, m.weight).shape == (m.out_channels,) for _, m in layers)


def test_methods_registered():
    for name in ("rebnn", "rebnn-released", "learned-scale", "rebnn-stage1"):
        assert name in METHODS
    assert METHODS["rebnn"].gamma_mode == "adaptive" and METHODS["rebnn-released"].gamma_mode == "constant"
    assert METHODS["learned-scale"].gamma == 0.0
    with pytest.raises(ValueError, match="gamma_mode"):
        BinaryConv2d(2, 2, 3, recipe=get_recipe("rebnn", gamma_mode="sometimes"))


# ---------------------------------------------------------------------------------------------------------
# oscillation metrics
def test_oscillation_monitor_on_hand_built_flips():
    torch.manual_seed(0)
    layer = BinaryLinear(10, 2, bias=False, recipe=get_recipe("rebnn"))
    model = torch.nn.Sequential(layer)
    with torch.no_grad():
        layer.weight.copy_(torch.ones(2, 10))
    mon = OscillationMonitor(model)
    mon.on_train_start(model)
    mon.on_epoch_start(0, 2)
    with torch.no_grad():
        layer.weight[0, :4] = -1.0  # step 1: 4/20 flip
    mon.on_step_end(0, 0)
    with torch.no_grad():
        layer.weight[0, :4] = 1.0  # step 2: flips back: 4/20 again
    mon.on_step_end(0, 1)
    out = mon.on_epoch_end(0)
    assert out["0/osc_seq"] == pytest.approx(0.2)
    assert out["0/osc_epoch"] == pytest.approx(0.0)  # oscillated back: no epoch-wise change
    assert out["0/gamma_mean"] == pytest.approx(1e-5) and out["0/gamma_max"] == pytest.approx(1e-5)
    mon.on_epoch_start(1, 2)
    with torch.no_grad():
        layer.weight[1, :5] = -1.0
    mon.on_step_end(1, 0)
    state = mon.state_dict()
    mon2 = OscillationMonitor(model)
    mon2.load_state_dict(state)
    out = mon.on_epoch_end(1)
    assert out["0/osc_seq"] == pytest.approx(0.25) and out["0/osc_epoch"] == pytest.approx(0.25)
    assert out["osc_seq"] == pytest.approx(0.25)


def test_tiny_training_run_decreases_loss_with_metrics(tmp_path):
    import csv

    from rbnn.config import load_config
    from rbnn.train.engine import train

    cfg = load_config(None, ["model=reactnet_small", "method=rebnn", "data.name=synthetic", "data.subset=384",
                             "data.test_subset=128", "data.image_size=12", "epochs=3", "batch_size=64",
                             "threads=1",
                             "optim.name=adam", "optim.lr=0.005", "optim.weight_decay=0", "schedule=linear",
                             f"out={tmp_path / 'run'}", "export=false", "progress=false"])
    summary = train(cfg)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0]
    assert summary["best_test_acc"] > 0.3
    for key in ("layer1.0.conv/osc_seq", "layer1.0.conv/osc_epoch", "layer1.0.conv/gamma_mean", "aux_loss"):
        assert key in rows[-1] and rows[-1][key] != ""
    assert 0 <= float(rows[-1]["layer1.0.conv/osc_seq"]) <= 1


# ---------------------------------------------------------------------------------------------------------
# DDP: γ identical on every rank
def _ddp_gamma_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        layer = _linear("rebnn", out_f=3, in_f=10, seed=0)  # identical weights on both ranks
        with torch.no_grad():
            layer.weight[:, :5] *= -1  # 50 % flipped vs prev_sign, in every channel
        # rank-local task gradients differ: the captured max must be all-reduced (MAX) before γ
        layer.weight_scale.stash["grad_absmax"] = torch.tensor([1e-4, 1e-5, 1e-6], dtype=torch.float64) * (rank + 1)
        layer.weight_scale.on_after_backward(layer)
        torch.save(layer.gamma.clone(), f"{out}/gamma{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: ~10-30 s of imports on a 2-core box
def test_gamma_identical_across_ddp_ranks(tmp_path):
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'pg'}"
    mp.spawn(_ddp_gamma_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    g0, g1 = torch.load(tmp_path / "gamma0.pt"), torch.load(tmp_path / "gamma1.pt")
    assert torch.equal(g0, g1)
    # max over ranks = rank 1's values (×2), times the 0.5 flip fraction, clamped to [1e-5, 2e-4]
    torch.testing.assert_close(g0, torch.tensor([1e-4, 1e-5, 1e-5], dtype=torch.float64))
