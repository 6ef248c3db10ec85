"""Weight-oscillation metrics (ReBNN, spec §4.2) for every binary layer, as a training callback.

Per binary layer, per epoch (metrics.csv columns):

- ``<layer>/osc_seq``: the *sequential oscillation ratio*: the fraction of the layer's weights whose sign
  changed in one optimizer step (sign(w) after the step vs before it), averaged over the epoch's steps;
- ``<layer>/osc_epoch``: the *epoch-wise oscillation ratio*: the fraction of weights whose sign differs
  between the end of the previous epoch (or the start of training) and the end of this epoch (inferred
  definition, spec §4.2);
- ``<layer>/gamma_mean``, ``<layer>/gamma_max`` (ReBNN layers only): the mean over the epoch's steps of the
  layer's mean γ, and the largest per-channel γ seen in the epoch;

plus ``osc_seq`` / ``osc_epoch`` / ``gamma_mean`` averaged over the layers. Signs use +1 at 0. Everything is
accumulated on the weights' device (no host sync per step) and the state needed for exact resume is in
``state_dict``.

Sampling (``every`` = config key ``diagnostics_every``): a layer's sign needs its whole weight path (for RBNN
the standardization and both rotation matmuls), about a fifth of a ResNet-18 step's operators when done every
step. With ``every = N`` only every N-th optimizer step is measured: the signs are taken after step kN - 1 and
after step kN, so each sample is still an exact one-step flip fraction, and ``osc_seq`` / ``gamma_mean`` /
``gamma_max`` are the mean (max) over the sampled steps of the epoch (an unbiased estimate at 2/N of the cost).
``every = 1`` measures every step exactly. ``osc_epoch`` is exact for any N.

The engine calls ``on_train_start``, ``on_step_end`` (after ``optimizer.step()``) and ``on_epoch_end``; the
class implements the whole callback protocol itself so ``diagnostics`` does not import ``train``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn.layers import binary_modules


def _sign(w: torch.Tensor) -> torch.Tensor:
    return torch.where(w >= 0, 1, -1).to(torch.int8)


def sign_flip_fraction(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Fraction of entries whose sign (int8 ±1 tensors, or real tensors) differs, as a 0-d tensor."""
    if a.dtype != torch.int8:
        a = _sign(a)
    if b.dtype != torch.int8:
        b = _sign(b)
    return (a != b).to(torch.float32).mean()


class OscillationMonitor:
    """Callback measuring sign oscillation of every binary layer's latent weight (see module docstring)."""

    def __init__(self, model: nn.Module, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.layers = binary_modules(model)
        self.every = int(every)
        self.total_steps = 0  # optimizer steps since the start of training (decides which steps are sampled)
        self.prev_step: dict[str, torch.Tensor] = {}
        self.prev_epoch: dict[str, torch.Tensor] = {}
        self._reset_sums()

    def _reset_sums(self) -> None:
        self.steps = 0  # sampled steps of this epoch
        self.seq_sum: dict[str, torch.Tensor] = {}
        self.gamma_sum: dict[str, torch.Tensor] = {}
        self.gamma_max: dict[str, torch.Tensor] = {}

    @staticmethod
    def _weight(m) -> torch.Tensor:
        return m.mixed_weight().detach()

    # ---- callback protocol -------------------------------------------------------------------
    @torch.no_grad()
    def on_train_start(self, model: nn.Module) -> None:
        for name, m in self.layers:
            s = _sign(self._weight(m))
            self.prev_step.setdefault(name, s)
            self.prev_epoch.setdefault(name, s.clone())

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        self._reset_sums()

    def on_after_backward(self, model: nn.Module) -> None: ...

    @torch.no_grad()
    def on_step_end(self, epoch: int, batch: int) -> None:
        self.total_steps += 1
        if self.total_steps % self.every == 0:
            self._sample()
        elif (self.total_steps + 1) % self.every == 0:  # the sign before the next (sampled) step
            for name, m in self.layers:
                self.prev_step[name] = _sign(self._weight(m))

    def _sample(self) -> None:
        self.steps += 1
        for name, m in self.layers:
            s = _sign(self._weight(m))
            prev = self.prev_step.get(name)
            if prev is None:
                f = torch.zeros((), device=s.device)
            else:
                f = sign_flip_fraction(prev.to(s.device), s)
            self.seq_sum[name] = self.seq_sum[name] + f if name in self.seq_sum else f
            self.prev_step[name] = s
            g = getattr(m, "gamma", None)
            if isinstance(g, torch.Tensor):
                gm, gx = g.float().mean(), g.float().max()
                self.gamma_sum[name] = self.gamma_sum[name] + gm if name in self.gamma_sum else gm
                old = self.gamma_max.get(name)
                self.gamma_max[name] = gx if old is None else torch.maximum(old, gx)

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        out: dict[str, float] = {}
        seqs, epochs, gammas = [], [], []
        n = max(self.steps, 1)
        for name, m in self.layers:
            s = _sign(self._weight(m))
            prev = self.prev_epoch.get(name)
            if name in self.seq_sum:
                out[f"{name}/osc_seq"] = float(self.seq_sum[name]) / n
                seqs.append(out[f"{name}/osc_seq"])
            if prev is not None:
                out[f"{name}/osc_epoch"] = float(sign_flip_fraction(prev.to(s.device), s))
                epochs.append(out[f"{name}/osc_epoch"])
            self.prev_epoch[name] = s
            if name in self.gamma_sum:
                out[f"{name}/gamma_mean"] = float(self.gamma_sum[name]) / n
                out[f"{name}/gamma_max"] = float(self.gamma_max[name])
                gammas.append(out[f"{name}/gamma_mean"])
        for key, vals in (("osc_seq", seqs), ("osc_epoch", epochs), ("gamma_mean", gammas)):
            if vals:
                out[key] = sum(vals) / len(vals)
        return out

    def on_epoch_resume(self, epoch: int, total_epochs: int) -> None:
        """Mid-epoch resume: keep the restored partial sums (on_epoch_start would zero them)."""

    def state_dict(self) -> dict:
        def cpu(d: dict) -> dict:
            return {k: v.cpu() for k, v in d.items()}

        return {"prev_step": cpu(self.prev_step), "prev_epoch": cpu(self.prev_epoch), "steps": self.steps,
                "total_steps": self.total_steps,
                "seq_sum": cpu(self.seq_sum), "gamma_sum": cpu(self.gamma_sum), "gamma_max": cpu(self.gamma_max)}

    def load_state_dict(self, state: dict) -> None:
        """Every tensor goes to its layer's device, whatever device the checkpoint was loaded onto."""
        devices = {name: m.weight.device for name, m in self.layers}

        def here(d: dict) -> dict:
            return {k: v.to(devices.get(k, v.device)) for k, v in d.items()}

        self.prev_step = here(state.get("prev_step", {}))
        self.prev_epoch = here(state.get("prev_epoch", {}))
        self.steps = int(state.get("steps", 0))
        self.total_steps = int(state.get("total_steps", 0))
        self.seq_sum = here(state.get("seq_sum", {}))
        self.gamma_sum = here(state.get("gamma_sum", {}))
        self.gamma_max = here(state.get("gamma_max", {}))


def oscillation_callbacks(model: nn.Module, cfg=None, every: int = 1) -> list[OscillationMonitor]:
    """``[OscillationMonitor(model, every)]`` if the model has binary layers and diagnostics are on, else
    ``[]``."""
    if cfg is not None and not getattr(cfg, "diagnostics", True):
        return []
    return [OscillationMonitor(model, every)] if binary_modules(model) else []
