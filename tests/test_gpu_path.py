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
