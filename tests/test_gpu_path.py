"""CPU checks of what the GPU path relies on.

NCCL refuses non-contiguous tensors in collectives (gloo, the CPU tests' backend, does not check), so every
rotation buffer that is broadcast must be contiguous at every point of its life, and the broadcast helper
refuses anything else on every backend. A checkpoint is loaded with ``map_location=device``: the state the
callbacks keep must then live where they use it (the layer's device), not where the checkpoint was saved.
CPU has no second real device, so the load tests move the model to ``meta``.
"""

import pytest
import torch

from rbnn import methods, models
from rbnn.config import load_config
from rbnn.nn.layers import binary_modules
from rbnn.train.callbacks import RotationUpdate
from rbnn.train.distributed import broadcast_
from rbnn.train.engine import build_callbacks

ROTATION_METHODS = [n for n, r in methods.METHODS.items() if r is not None and r.rotation]


def test_every_rotation_method_is_covered():
    assert {"rbnn", "rbnn-faithful", "rbnn-stopgrad", "rbnn-BR", "rbnn-BTR"} <= set(ROTATION_METHODS)


def _rotation_buffers(model):
    return [(f"{n}.{b}", getattr(m, b)) for n, m in binary_modules(model) for b in ("R1", "R2")]


@pytest.mark.parametrize("method", ROTATION_METHODS)
def test_rotation_buffers_stay_contiguous(method):
    torch.manual_seed(0)
    model = models.create("smallnet", method=method, num_classes=10, in_channels=1)
    layers = binary_modules(model)
    assert layers and all(hasattr(m, "R1") for _, m in layers)
    for name, r in _rotation_buffers(model):
        assert r.is_contiguous(), f"{name} after construction"
    for _, m in layers:
        m.update_rotation()
    for name, r in _rotation_buffers(model):
        assert r.is_contiguous(), f"{name} after update_rotation"
    state = model.state_dict()
    # a checkpoint written before the fix holds column-major R1/R2: loading it must not change the layout
    state = {k: (v.t().contiguous().t() if k.endswith(("R1", "R2")) else v) for k, v in state.items()}
    assert not all(v.is_contiguous() for k, v in state.items() if k.endswith("R1"))
    fresh = models.create("smallnet", method=method, num_classes=10, in_channels=1)
    fresh.load_state_dict(state)
    for name, r in _rotation_buffers(fresh):
        assert r.is_contiguous(), f"{name} after load_state_dict"
    for name, r in _rotation_buffers(fresh.to(torch.float64)):
        assert r.is_contiguous() and r.dtype == torch.float64, f"{name} after .to(float64)"
    RotationUpdate(fresh).on_epoch_start(0, 1)  # runs the broadcast helper on every buffer


def test_broadcast_refuses_non_contiguous_in_one_process():
    t = torch.randn(4, 3).t()
    with pytest.raises(ValueError, match="not contiguous"):
        broadcast_(t)
    broadcast_(t.contiguous())


def _tensors(obj, path="cb"):
    """Every tensor an object keeps, with where it is kept."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{path}[{k!r}]")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{path}[{i}]")


@pytest.mark.parametrize("method", ["rbnn", "rebnn", "xnor"])
def test_callback_state_follows_the_model_after_a_load(method):
    """Saved on one device, loaded for a model on another: every tensor a callback keeps lives on the model's
    device afterwards (the GPU resume crash compared a CUDA tensor with a CPU one at the first epoch end)."""
    cfg = load_config(None, ["model=smallnet", f"method={method}", "data=synthetic", "diagnostics=true"])
    torch.manual_seed(0)
    model = models.create("smallnet", method=method, num_classes=10, in_channels=1)
    cbs = build_callbacks(model, cfg)
    for cb in cbs:
        cb.on_train_start(model)
        cb.on_step_end(0, 0)
        cb.on_epoch_end(0)
    states = [cb.state_dict() for cb in cbs]
    assert any(any(True for _ in _tensors(s)) for s in states), "no callback kept tensors: nothing tested"
    other = models.create("smallnet", method=method, num_classes=10, in_channels=1).to("meta")
    loaded = build_callbacks(other, cfg)
    for cb, state in zip(loaded, states, strict=True):
        cb.load_state_dict(state)
        for where, t in _tensors(vars(cb)):
            assert t.device.type == "meta", f"{type(cb).__name__}: {where} on {t.device}"


# ---------------------------------------------------------------------------------------------------------
# a step the GPU does not wait on: host syncs, sampled diagnostics, layouts, autocast, collectives
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

from torch.overrides import TorchFunctionMode  # noqa: E402

from rbnn import cli  # noqa: E402
from rbnn.diagnostics.oscillation import OscillationMonitor  # noqa: E402
from rbnn.errors import ConfigError  # noqa: E402
from rbnn.functional.standardized_sign import standardized_sign  # noqa: E402
from rbnn.methods import get_recipe  # noqa: E402
from rbnn.nn import rebnn  # noqa: E402
from rbnn.nn.layers import BinaryConv2d, BinaryLinear  # noqa: E402
from rbnn.rotation import optimize_rotation, orthogonality_error  # noqa: E402
from rbnn.train import engine, launch  # noqa: E402
from rbnn.train.callbacks import ModuleHooks  # noqa: E402

SYNC_METHODS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu"}
STEP = ["threads=1", "data=synthetic", "data.subset=256", "data.test_subset=64", "export=false",
        "model=smallnet", "device=cpu", "optim.name=sgd", "optim.lr=0.1"]


class SyncCounter(TorchFunctionMode):
    """Counts the tensor -> host reads (each one waits for the GPU on CUDA) made while ``active``."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []
        self.active = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.active and getattr(func, "__name__", "") in SYNC_METHODS:
            self.calls.append(func.__name__)
        return func(*args, **(kwargs or {}))


def _with_callback(cb_factory, cfg, **kw):
    original = engine.build_callbacks
    engine.build_callbacks = lambda model, c: original(model, c) + [cb_factory(model)]
    try:
        return engine.train(cfg, **kw)
    finally:
        engine.build_callbacks = original


@pytest.mark.parametrize("method", ["rbnn", "rebnn"])
def test_host_syncs_per_step(tmp_path, method):
    """sync_every=8, 16 steps per epoch: between the end of step 1 and the end of step 13 the loop reads the
    device exactly once (the sync point after step 8); the old loop read it 4 times per step."""
    counter = SyncCounter()

    class Window(engine.Callback):
        def on_step_end(self, epoch, batch):
            if batch == 0:
                counter.active = True
            elif batch == 12:
                counter.active = False

    cfg = load_config(None, [*STEP, f"method={method}", "batch_size=16", "epochs=1", "sync_every=8",
                             f"out={tmp_path / 'r'}"])
    with counter:
        _with_callback(lambda m: Window(), cfg)
    assert counter.calls == ["tolist"], counter.calls


def test_host_syncs_every_step_by_default_on_cpu(tmp_path):
    counter = SyncCounter()

    class Window(engine.Callback):
        def on_step_end(self, epoch, batch):
            counter.active = batch == 0 or (counter.active and batch < 5)

    cfg = load_config(None, [*STEP, "method=rbnn", "batch_size=32", "epochs=1", f"out={tmp_path / 'r'}"])
    with counter:
        _with_callback(lambda m: Window(), cfg)
    assert counter.calls == ["tolist"] * 5, counter.calls  # sync_every=0 is 1 on CPU: one read per step


def test_nan_found_at_a_later_sync_point_names_its_batch_and_keeps_last_checkpoint(tmp_path):
    """sync_every=4: the loss turns NaN at batch 2 of epoch 2; the check after batch 4 reports batch 2, and
    the epoch-1 checkpoint stays byte-identical (weights went NaN in between, nothing was written)."""
    out = tmp_path / "r"
    args = [*STEP, "method=rbnn", "batch_size=32", "epochs=2", "sync_every=4", f"out={out}"]
    engine.train(load_config(None, args), stop_after_epochs=1)
    before = (out / "last.pt").read_bytes()
    original = engine.build_model
    calls = []

    def poisoned(*a, **k):
        m = original(*a, **k)
        m.fc.register_forward_hook(lambda mod, i, o: (calls.append(1), o * float("nan") if
                                                      len(calls) == 2 else o)[1])
        return m

    engine.build_model = poisoned
    try:
        with pytest.raises(engine.TrainingDiverged) as e:
            engine.train(load_config(None, args), resume=True)
    finally:
        engine.build_model = original
    msg = str(e.value)
    assert "loss became nan at epoch 2 batch 2 " in msg and "checked after batch 4" in msg, msg
    assert "is unchanged" in msg and (out / "last.pt").read_bytes() == before


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    """A weight that becomes inf in the last step (its loss was still finite) stops the run before the
    epoch's checkpoint is written."""
    out = tmp_path / "r"

    class Poison(engine.Callback):
        def __init__(self, model):
            self.model = model

        def on_step_end(self, epoch, batch):
            if batch == 7:
                with torch.no_grad():
                    self.model.fc.weight[0, 0] = float("inf")

    cfg = load_config(None, [*STEP, "method=xnor", "batch_size=32", "epochs=1", f"out={out}"])
    with pytest.raises(engine.TrainingDiverged, match="non-finite loss .* or weight"):
        _with_callback(Poison, cfg)
    assert not (out / "last.pt").exists()


def test_sigterm_with_sync_every_stops_at_the_exact_batch_and_resume_is_exact(tmp_path):
    common = [*STEP, "method=rbnn", "batch_size=32", "epochs=2", "sync_every=4", "seed=4"]
    engine.train(load_config(None, [*common, f"out={tmp_path / 'full'}"]))

    class Sender(engine.Callback):
        def on_step_end(self, epoch, batch):
            if (epoch, batch) == (1, 1):
                os.kill(os.getpid(), signal.SIGTERM)

    out = tmp_path / "mid"
    with pytest.raises(engine.Interrupted, match="after batch 2/8 of epoch 2"):
        _with_callback(lambda m: Sender(), load_config(None, [*common, f"out={out}"]))
    assert torch.load(out / "last.pt", weights_only=True)["in_epoch"]["batches_done"] == 2
    engine.train(load_config(None, [*common, f"out={out}"]), resume=True)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(out / "last.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    drop = {"epoch_seconds", "train_img_per_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in a["metrics"]] == \
           [{k: v for k, v in r.items() if k not in drop} for r in b["metrics"]]


@pytest.mark.parametrize("key", ["sync_every", "diagnostics_every", "data.workers"])
def test_negative_every_is_a_config_error(key):
    with pytest.raises(ConfigError, match=key.split(".")[-1]):
        load_config(None, [f"{key}=-2"])


def test_oscillation_sampled_every_n_steps(monkeypatch):
    """every=2: steps 2 and 4 are measured, each as an exact one-step flip fraction (sign after step 1 vs after
    step 2, after step 3 vs after step 4); steps 1 and 3 only record the sign the next step starts from."""
    torch.manual_seed(0)
    layer = BinaryLinear(10, 2, bias=False, recipe=get_recipe("rebnn"))
    model = torch.nn.Sequential(layer)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    mon = OscillationMonitor(model, every=2)
    mon.on_train_start(model)
    mon.on_epoch_start(0, 1)
    negative_after_step = [6, 8, 0, 4]  # the first n weights of row 0..1 (flattened) are negative
    calls = []
    original = OscillationMonitor._weight
    monkeypatch.setattr(OscillationMonitor, "_weight", staticmethod(lambda m: calls.append(1) or original(m)))
    for step, n in enumerate(negative_after_step):
        with torch.no_grad():
            layer.weight.fill_(1.0)
            layer.weight.view(-1)[:n] = -1.0
        mon.on_step_end(0, step)
    monkeypatch.undo()
    assert len(calls) == 4 and mon.steps == 2 and mon.total_steps == 4
    out = mon.on_epoch_end(0)
    # sampled: 6 -> 8 negative (2 of 20 flip), 0 -> 4 (4 of 20); every step would give (6+2+8+4)/4/20 = 0.25
    assert out["0/osc_seq"] == pytest.approx((2 / 20 + 4 / 20) / 2)
    assert out["0/osc_epoch"] == pytest.approx(4 / 20)
    every_step = OscillationMonitor(model, every=1)
    assert every_step.every == 1
    with pytest.raises(ValueError, match="every"):
        OscillationMonitor(model, every=0)


@pytest.mark.parametrize("estimator", ["rbnn", "ste"])
def test_standardized_sign_keeps_channels_last(estimator):
    """RBNN's activation path on a channels_last input: same values and gradients, and channels_last out
    (a reshape(N, -1) used to copy the input into NCHW order and return NCHW)."""
    torch.manual_seed(0)
    a = torch.randn(4, 8, 5, 6, dtype=torch.float64)
    x1 = a.clone().requires_grad_()
    x2 = a.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    y1 = standardized_sign(x1, estimator, 1, 0.0, 1.3, 0.8)
    y2 = standardized_sign(x2, estimator, 1, 0.0, 1.3, 0.8)
    assert y2.is_contiguous(memory_format=torch.channels_last) and not y2.is_contiguous()
    assert torch.equal(y1, y2)
    g = torch.randn_like(a)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=0, atol=1e-12)
    assert x2.grad.is_contiguous(memory_format=torch.channels_last)


def test_rotation_is_not_autocast_to_bf16():
    """bf16 rotation matmuls flipped 527 of the 589,824 binary weight signs of this layer."""
    torch.manual_seed(0)
    layer = BinaryConv2d(256, 256, 3, padding=1, recipe=get_recipe("rbnn"))
    layer.update_rotation()
    with torch.no_grad():
        ref = layer.mixed_weight() >= 0
        with torch.autocast("cpu", dtype=torch.bfloat16):
            w = layer.mixed_weight()
    assert w.dtype == torch.float32
    assert torch.equal(w >= 0, ref), f"{int((ref != (w >= 0)).sum())} signs differ"


def test_rotation_update_on_non_finite_weights_does_not_raise():
    """Weights may be NaN for a few steps before the loop's next check: the rotation update (its SVDs run on
    the CPU in float64) must not raise from inside the SVD; it returns orthogonal matrices."""
    X = torch.randn(8, 3, 4)
    X[0, 0, 0] = float("nan")
    R1, R2 = optimize_rotation(X, torch.eye(3), torch.eye(4))
    assert orthogonality_error(R1) < 1e-5 and orthogonality_error(R2) < 1e-5


def test_rebnn_gamma_uses_one_all_reduce_for_all_layers(monkeypatch):
    torch.manual_seed(0)
    model = models.create("reactnet_small", method="rebnn", num_classes=10, in_channels=1)
    layers = rebnn.rebnn_layers(model)
    assert len(layers) > 2
    x = torch.randn(4, 1, 16, 16)
    calls = []
    original = rebnn._all_reduce_max
    monkeypatch.setattr(rebnn, "_all_reduce_max", lambda t: calls.append(t.numel()) or original(t))
    model(x).square().sum().backward()
    # the per-layer path, on a copy of every layer's stash, gives the reference γ
    expected = {}
    for _, m in layers:
        m.prev_sign.mul_(-1)  # make flips happen so γ depends on the gradient maxima
    for name, m in layers:
        twin = {k: v.clone() for k, v in m.weight_scale.stash.items()}
        saved = (m.gamma.clone(), m.prev_sign.clone())
        m.weight_scale.on_after_backward(m)
        expected[name] = m.gamma.clone()
        m.gamma.copy_(saved[0])
        m.prev_sign.copy_(saved[1])
        m.weight_scale.stash.update(twin)
    calls.clear()
    ModuleHooks(model).on_after_backward(model)
    assert calls == [sum(m.gamma.numel() for _, m in layers)], calls
    for name, m in layers:
        assert torch.equal(m.gamma, expected[name]), name
    assert any(float(m.gamma.max()) > m.recipe.gamma_min for _, m in layers)


def test_cudnn_autotuner_on_cuda_unless_deterministic(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    engine.configure_backends(torch.device("cuda"), deterministic=False)
    assert torch.backends.cudnn.benchmark is True
    engine.configure_backends(torch.device("cuda"), deterministic=True)
    assert torch.backends.cudnn.benchmark is False
    engine.configure_backends(torch.device("cpu"), deterministic=False)
    assert torch.backends.cudnn.benchmark is False


def test_nproc_launcher_sets_omp_threads_per_rank(monkeypatch, tmp_path):
    # real ranks started by torch's launcher: each writes what it got
    worker = ("import os, pathlib, sys; e = os.environ; pathlib.Path(sys.argv[1], 'rank' + e['RANK']).write_text("
              "' '.join([e['OMP_NUM_THREADS'], e['LOCAL_RANK'], e['WORLD_SIZE'], e['MASTER_ADDR']]))")
    monkeypatch.setattr(launch, "omp_threads", lambda nproc: 16 // nproc)
    base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    assert launch.spawn([sys.executable, "-c", worker, str(tmp_path)], 4, env=base) == 0
    got = [(tmp_path / f"rank{r}").read_text() for r in range(4)]
    assert got == [f"4 {r} 4 127.0.0.1" for r in range(4)]
    assert launch.spawn([sys.executable, "-c", worker, str(tmp_path)], 2, env=dict(base, OMP_NUM_THREADS="3")) == 0
    assert [(tmp_path / f"rank{r}").read_text().split()[0] for r in range(2)] == ["3", "3"]  # the caller's wins
    assert "OMP_NUM_THREADS" not in os.environ or os.environ["OMP_NUM_THREADS"] != "4"  # ours is untouched
    monkeypatch.undo()
    assert launch.omp_threads(3, cpus=16) == 5 and launch.omp_threads(4, cpus=2) == 1


def test_eval_device_option(tmp_path, capsys):
    out = tmp_path / "r"
    engine.train(load_config(None, [*STEP, "method=xnor", "batch_size=64", "epochs=1", f"out={out}"]))
    assert cli.main(["eval", str(out), "--device", "cpu"]) == 0
    assert '"test_acc"' in capsys.readouterr().out
    assert cli.main(["eval", str(out), "--device", "gpu0"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert len(err) == 1 and "'gpu0'" in err[0], err


def test_folder_loader_device_batches_and_worker_defaults(tmp_path, monkeypatch):
    """Batches delivered on a device are the same numbers (normalized there from uint8); worker processes
    persist across epochs; -1 workers come from the CPU count shared by the local ranks."""
    import numpy as np
    from PIL import Image

    from rbnn.config import DataConfig
    from rbnn.data import build_loaders
    from rbnn.data.imagefolder import default_workers

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.png")
    cfg = DataConfig(name="imagenet", root=str(tmp_path), image_size=8, workers=0)
    host, _, _ = build_loaders(cfg, 3, 3, seed=1)
    dev, _, _ = build_loaders(cfg, 3, 3, seed=1, device=torch.device("cpu"))
    assert not dev._loader.pin_memory  # pinned only for CUDA
    for (xa, ya), (xb, yb) in zip(host, dev, strict=True):
        assert xb.dtype == torch.float32 and torch.equal(xa, xb) and torch.equal(ya, yb)
    cfg.workers = 1
    pooled, _, _ = build_loaders(cfg, 3, 3, seed=1, device=torch.device("cpu"))
    assert pooled._loader.persistent_workers and pooled.workers == 1
    assert torch.equal(next(iter(pooled))[0], next(iter(host))[0])

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(48)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_workers(-1) == 11 and default_workers(0) == 0 and default_workers(5) == 5
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert default_workers(-1) == 32  # capped
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert default_workers(-1) == 0  # one CPU: decode in the training process
