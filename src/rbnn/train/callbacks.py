"""Training callbacks: the only way the loop changes a model (schedules, rotation updates, diagnostics).

Protocol (all optional): ``on_train_start(model)``, ``on_epoch_start(epoch, total_epochs)``,
``on_after_backward(model)``, ``on_step_end(epoch, batch)``, ``on_epoch_end(epoch) -> dict`` of metrics,
``state_dict()`` / ``load_state_dict()`` for exact resume.
"""

from __future__ import annotations

import torch
from torch import nn

from ..diagnostics.weights import cos_to_sign, flip_rate, quantization_error
from ..nn.layers import BinaryMixin, binary_modules
from ..nn.rebnn import after_backward as rebnn_after_backward
from ..nn.rebnn import is_rebnn_layer
from ..rotation import factorize, haar_orthogonal, orthogonality_error, rotate
from . import distributed as dist_utils


class Callback:
    def on_train_start(self, model: nn.Module) -> None: ...
    def on_epoch_start(self, epoch: int, total_epochs: int) -> None: ...
    def on_after_backward(self, model: nn.Module) -> None: ...
    def on_step_end(self, epoch: int, batch: int) -> None: ...
    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        return {}
    def state_dict(self) -> dict:
        return {}
    def load_state_dict(self, state: dict) -> None: ...


class SurrogateSchedule(Callback):
    """Sets each binary layer's (t, k) for the epoch (IR-Net EDE and RBNN's training-aware sign)."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = binary_modules(model)

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        for _, m in self.layers:
            m.set_epoch(epoch, total_epochs)

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        if not self.layers:
            return {}
        m = self.layers[0][1]
        return {"t": float(m.t), "k": float(m.k)}


class RotationUpdate(Callback):
    """RBNN: at the start of every ``rotation_period``-th epoch, run the alternating optimization.

    It runs outside forward, once per epoch, on the module itself (never on a DataParallel replica). Under
    DDP it is computed on rank 0 and broadcast, so every rank holds identical R1, R2.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [(n, m) for n, m in binary_modules(model) if m.recipe.rotation]
        self.steps = 0

    @staticmethod
    def _update(m) -> None:
        if m.recipe.rotation_cycles == 0:
            return
        if dist_utils.rank() == 0:
            m.update_rotation()
        dist_utils.broadcast_(m.R1)
        dist_utils.broadcast_(m.R2)

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        for _, m in self.layers:
            if epoch % m.recipe.rotation_period == 0:
                self._update(m)

    def on_step_end(self, epoch: int, batch: int) -> None:
        self.steps += 1
        for _, m in self.layers:
            n = m.recipe.rotation_every_steps
            if n and self.steps % n == 0:
                self._update(m)

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state.get("steps", 0))


class ModuleHooks(Callback):
    """Calls ``on_after_backward()`` on modules that define it, and updates the ReBNN layers' γ all at once, so
    that under DDP their gradient maxima travel in one all-reduce."""

    def __init__(self, model: nn.Module) -> None:
        self.rebnn = [m for m in model.modules() if is_rebnn_layer(m)]
        self.after_backward = [m for m in model.modules() if hasattr(m, "on_after_backward")]

    def on_after_backward(self, model: nn.Module) -> None:
        if self.rebnn:
            rebnn_after_backward(self.rebnn)
        for m in self.after_backward:
            m.on_after_backward()


class WeightDiagnostics(Callback):
    """Per binary layer per epoch: angles, quantization error, flip rates (vs init, vs previous epoch, and a
    random-rotation control), mean alpha, orthogonality of R. Written as ``<layer>/<metric>`` columns.

    The random-rotation control applies a fixed Haar-random R1 (x) R2 to the *initial* latent weights: any
    such rotation already flips ~50% of signs, so RBNN's ~50% flip rate must be read against it.

    The saved weights (``init``, ``prev``) live on the device of the layer they belong to, also after a
    checkpoint saved on one device is loaded onto another (``load_state_dict`` moves them there).
    """

    def __init__(self, model: nn.Module, seed: int = 0) -> None:
        self.layers = binary_modules(model)
        self.init: dict[str, torch.Tensor] = {}
        self.prev: dict[str, torch.Tensor] = {}
        self.random_flip: dict[str, float] = {}
        self.seed = seed

    @torch.no_grad()
    def on_train_start(self, model: nn.Module) -> None:
        g = torch.Generator().manual_seed(12345 + self.seed)
        for name, m in self.layers:
            if name not in self.init:
                self.init[name] = m.weight.detach().clone()
            if name not in self.prev:
                self.prev[name] = self._binary(m)
            if name not in self.random_flip:
                w = m.latent_weight().detach().cpu()
                n1, n2 = factorize(w[0].numel())
                R1, R2 = haar_orthogonal(n1, g, w.dtype), haar_orthogonal(n2, g, w.dtype)
                rotated = rotate(w.reshape(-1, n1, n2), R1, R2).reshape(w.shape)
                self.random_flip[name] = flip_rate(w, rotated)

    @staticmethod
    @torch.no_grad()
    def _binary(m: BinaryMixin) -> torch.Tensor:
        w = m.mixed_weight().detach()
        return torch.where(w >= 0, 1, -1).to(torch.int8)

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        out: dict[str, float] = {}
        cos_mixed, cos_latent, flips, alphas = [], [], [], []
        for name, m in self.layers:
            latent = m.latent_weight().detach()
            mixed = m.mixed_weight().detach()
            b = torch.where(mixed >= 0, 1, -1).to(torch.int8)
            cm, cl = float(cos_to_sign(mixed).mean()), float(cos_to_sign(latent).mean())
            out[f"{name}/cos_mixed"] = cm
            out[f"{name}/cos_latent"] = cl
            out[f"{name}/qerr"] = float(quantization_error(mixed).mean())
            out[f"{name}/flip_init"] = flip_rate(self.init[name], b.float())
            out[f"{name}/flip_random_rotation"] = self.random_flip[name]
            out[f"{name}/flip_epoch"] = float((b != self.prev[name]).double().mean())
            self.prev[name] = b
            cos_mixed.append(cm)
            cos_latent.append(cl)
            flips.append(out[f"{name}/flip_init"])
            a = m.alpha()
            if a is not None:
                out[f"{name}/alpha"] = float(a.detach().mean())
                alphas.append(out[f"{name}/alpha"])
            if m.recipe.rotation:
                out[f"{name}/orth_err"] = max(orthogonality_error(m.R1), orthogonality_error(m.R2))
        if self.layers:
            out["cos_mixed"] = sum(cos_mixed) / len(cos_mixed)
            out["cos_latent"] = sum(cos_latent) / len(cos_latent)
            out["flip_init"] = sum(flips) / len(flips)
        if alphas:
            out["alpha"] = sum(alphas) / len(alphas)
        return out

    def state_dict(self) -> dict:
        return {"init": {k: v.cpu() for k, v in self.init.items()}, "prev": {k: v.cpu() for k, v in self.prev.items()},
                "random_flip": self.random_flip}

    def load_state_dict(self, state: dict) -> None:
        devices = {name: m.weight.device for name, m in self.layers}
        self.init = {k: v.to(devices.get(k, v.device)) for k, v in state.get("init", {}).items()}
        self.prev = {k: v.to(devices.get(k, v.device)) for k, v in state.get("prev", {}).items()}
        self.random_flip = dict(state.get("random_flip", {}))
