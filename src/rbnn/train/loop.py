"""The epoch loop of one run: a :class:`Trainer` holds the loop's state in named fields (no closures), and each
method does one job: the step, the sync point, the checkpoint writer, the end of an epoch.

What the loop changes besides the model, optimizer and callbacks is :class:`TrainState`; a checkpoint stores
it, so a resumed run continues exactly (see ``docs/reliability.md``).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..checkpoint import save_checkpoint
from ..config import Config, to_dict
from ..data import DatasetInfo
from ..errors import RbnnError
from ..nn.layers import auxiliary_losses
from . import distributed as dist_utils
from .callbacks import Callback, RotationUpdate
from .logging import MetricsLog, progress
from .optim import lr_factor, set_lr
from .steps import StepWindow, finite_weights, resolve_every

log = logging.getLogger("rbnn")


class TrainingDiverged(RbnnError):
    pass


class Interrupted(RbnnError):
    """SIGTERM/SIGINT: a consistent ``last.pt`` was written; the CLI exits with 128 + the signal number."""

    def __init__(self, message: str, signum: int = signal.SIGTERM) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


def _autocast(device: torch.device, amp: str):
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: str = "none",
             progress_enabled: bool | None = None) -> dict[str, float]:
    model.eval()
    sums, n = torch.zeros(3, dtype=torch.float64, device=device), 0.0  # on the device: no sync per batch
    for x, y in progress(loader, len(loader), "eval", progress_enabled):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, amp):
            out = model(x)
        out = out.float()
        top = out.topk(min(5, out.shape[1]), dim=1).indices
        sums += torch.stack([F.cross_entropy(out, y, reduction="sum").double(), (top[:, 0] == y).sum().double(),
                             (top == y[:, None]).any(1).sum().double()])
        n += y.numel()
    loss_sum, correct, correct5, n = dist_utils.all_reduce_sum([*sums.tolist(), n], device)
    n = max(n, 1.0)
    return {"loss": loss_sum / n, "acc": correct / n, "top5": correct5 / n, "n": n}


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """-sum softmax(teacher/T) log_softmax(student/T) * T^2 (ReActNet/ReBNN's distribution loss)."""
    t = temperature
    return -(F.softmax(teacher / t, 1) * F.log_softmax(student / t, 1)).sum(1).mean() * t * t


def _reenter_epoch(cb: Callback, epoch: int, total_epochs: int) -> None:
    """Resuming a mid-epoch checkpoint: its epoch-start work already happened before the checkpoint was
    written (and its effects, such as R1/R2, are in the restored state). A callback may define
    ``on_epoch_resume``; otherwise ``on_epoch_start`` is re-run (it must then be a pure function of the
    epoch, as the schedules are), except the rotation update, which would recompute R from mid-epoch weights."""
    hook = getattr(cb, "on_epoch_resume", None)
    if hook is not None:
        hook(epoch, total_epochs)
    elif not isinstance(cb, RotationUpdate):
        cb.on_epoch_start(epoch, total_epochs)


class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop writes a checkpoint at the next step boundary and exits."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


@dataclass
class TrainState:
    """What the loop changes besides the model, optimizer and callbacks (all of it goes into a checkpoint)."""

    epoch: int = 0  # epochs completed
    best_acc: float = -1.0
    best_epoch: int = -1
    train_seconds: float = 0.0
    in_epoch: dict[str, Any] | None = None  # position inside epoch ``epoch``, from a SIGTERM checkpoint


@dataclass(eq=False)
class Trainer:
    """The parts of a run the loop works on, built by :func:`rbnn.train.engine.train`, and its state."""

    cfg: Config
    device: torch.device
    run_dir: Path
    info: DatasetInfo
    model: nn.Module  # the module that is trained and checkpointed
    train_model: nn.Module  # ``model``, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    callbacks: list[Callback]
    teacher: nn.Module | None
    train_loader: Any
    test_loader: Any
    metrics: MetricsLog
    state: TrainState
    world: int = field(init=False)
    main: bool = field(init=False)
    steps: int = field(init=False)
    sync_every: int = field(init=False)
    window: StepWindow = field(init=False)
    stop: _StopFlag = field(init=False)
    aux_losses: list[Callable[[], torch.Tensor]] = field(init=False)

    def __post_init__(self) -> None:
        self.world = dist_utils.world_size()
        self.main = dist_utils.rank() == 0
        self.aux_losses = auxiliary_losses(self.model)
        self.steps = len(self.train_loader)
        self.stop = _StopFlag()

    def run(self, end_epoch: int) -> None:
        """Epochs ``state.epoch`` .. ``end_epoch - 1``; SIGTERM/SIGINT end it with a checkpoint."""
        cfg, info = self.cfg, self.info
        log.info("run %s: %s / %s on %s, %d train / %d test images, %d epochs", self.run_dir, cfg.model,
                 cfg.method.name, info.name, info.train_size, info.test_size, cfg.epochs)
        self.sync_every = resolve_every(cfg.sync_every, self.device, 50)
        self.window = StepWindow(self.sync_every, self.device)
        with self.stop:
            for epoch in range(self.state.epoch, end_epoch):
                lr, epoch_seconds = self._train_epoch(epoch)
                self._end_epoch(epoch, lr, epoch_seconds, end_epoch)
        self.metrics.close()

    # -- checkpoints and decisions ---------------------------------------------------------------------------
    def checkpoint(self, epoch_done: int, name: str = "last.pt", in_epoch: dict[str, Any] | None = None) -> None:
        """``in_epoch`` (SIGTERM mid-epoch): batches done in epoch ``epoch_done`` and the partial sums."""
        if not self.main:
            return
        cfg, info, st = self.cfg, self.info, self.state
        state = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "epoch": epoch_done,
            "best_acc": st.best_acc, "best_epoch": st.best_epoch, "metrics": self.metrics.rows,
            "callbacks": [cb.state_dict() for cb in self.callbacks], "rng": torch.get_rng_state(),
            "config": to_dict(cfg), "model_name": cfg.model, "method": cfg.method.name,
            "dataset": {"name": info.name, "num_classes": info.num_classes, "input_size": list(info.input_size)},
            "train_seconds": st.train_seconds, "rbnn_version": __version__,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if in_epoch is not None:
            state["in_epoch"] = in_epoch
        save_checkpoint(state, self.run_dir / name)

    def agree(self, *flags: bool) -> list[bool]:
        """The same decision on every rank (any rank's True wins); free in a single process."""
        if self.world == 1:
            return list(flags)
        return [v > 0 for v in dist_utils.all_reduce_sum([float(f) for f in flags], self.device)]

    def diverged(self, epoch: int, b: int) -> TrainingDiverged:
        """Non-finite loss or weights, found at the sync point after batch ``b``; nothing is written."""
        last_pt = self.run_dir / "last.pt"
        kept = f"the last good checkpoint {last_pt} is unchanged" if last_pt.is_file() else "no checkpoint was written"
        first = self.window.first_bad
        what = (f"loss became {first[1]} at epoch {epoch + 1} batch {first[0] + 1}" if first is not None else
                f"a non-finite loss (on another rank) or weight was found at epoch {epoch + 1}")
        return TrainingDiverged(f"{what} (checked after batch {b + 1}, every {self.sync_every} steps); stopped, "
                                f"{kept} (lower optim.lr or check the data)")

    def stopped(self, where: str) -> Interrupted:
        signum = self.stop.signal or signal.SIGTERM
        name = signal.Signals(signum).name
        return Interrupted(f"stopped by {name} {where}; wrote {self.run_dir / 'last.pt'} "
                           f"(continue with --resume)", signum)

    # -- one epoch -------------------------------------------------------------------------------------------
    def _start_epoch(self, epoch: int) -> tuple[int, float]:
        """Epoch-start callbacks, or re-entry into the epoch a SIGTERM checkpoint stopped in; returns the
        batches already done and their seconds."""
        self.window.start_epoch()
        resumed, self.state.in_epoch = self.state.in_epoch, None
        if resumed is None:
            for cb in self.callbacks:
                cb.on_epoch_start(epoch, self.cfg.epochs)
            return 0, 0.0
        for cb in self.callbacks:
            _reenter_epoch(cb, epoch, self.cfg.epochs)
        if self.main:  # rank 0 carries the (all-reduced) partial sums, the others restart theirs at 0
            self.window.start_epoch(resumed["sums"])
        return int(resumed["batches_done"]), float(resumed["seconds"])

    def _train_epoch(self, epoch: int) -> tuple[float, float]:
        """The batches of one epoch; returns the last learning rate and the epoch's training seconds."""
        cfg, steps = self.cfg, self.steps
        skip, seconds_before = self._start_epoch(epoch)
        self.train_loader.set_epoch(epoch)
        self.model.train()
        t0 = time.perf_counter()
        first, lr = 0, cfg.optim.lr
        if skip and hasattr(self.train_loader, "skip_batches"):  # image folders: do not decode skipped batches
            self.train_loader.skip_batches(skip)
            first = skip
        for b, (x, y) in enumerate(progress(self.train_loader, steps - first, f"epoch {epoch + 1}/{cfg.epochs}",
                                            cfg.progress and self.main), start=first):
            lr = cfg.optim.lr * lr_factor(epoch, b, steps, cfg.epochs, cfg.schedule)
            if b < skip:  # in-memory loaders replay the skipped batches (cheap; keeps the augment RNG exact)
                continue
            self._step(epoch, b, lr, x, y)
            self._sync_point(epoch, b, seconds_before, t0)
        return lr, seconds_before + time.perf_counter() - t0

    def _step(self, epoch: int, b: int, lr: float, x: torch.Tensor, y: torch.Tensor) -> None:
        """One optimizer step on batch ``b``; its values are recorded on the device (no host sync)."""
        cfg, device = self.cfg, self.device
        set_lr(self.optimizer, lr)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, cfg.amp):
            out = self.train_model(x)
            task = F.cross_entropy(out.float(), y)
            if self.teacher is not None:
                with torch.no_grad():
                    t_out = self.teacher(x).float()
                kd = kd_loss(out.float(), t_out, cfg.distill.temperature)
                task = (1 - cfg.distill.weight) * task + cfg.distill.weight * kd
            aux = sum((term() for term in self.aux_losses), torch.zeros((), device=device))
        loss = task + aux
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for cb in self.callbacks:
            cb.on_after_backward(self.model)
        if cfg.optim.clip_grad_norm > 0:  # after DDP's all-reduce and the hooks: the same on every rank
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad_norm, foreach=True)
        self.optimizer.step()
        for cb in self.callbacks:
            cb.on_step_end(epoch, b)
        self.window.record(b, loss, task, aux, (out.argmax(1) == y).sum(), y.numel())

    def _sync_point(self, epoch: int, b: int, seconds_before: float, t0: float) -> None:
        """Every ``sync_every`` steps (and at the epoch's end): stop on a non-finite loss or weight, or write a
        mid-epoch checkpoint and stop on a signal."""
        # the stop flag is free to read in one process; under DDP it waits for the next sync point
        here = self.world == 1 and self.stop.signal is not None
        if not (here or self.window.full() or b + 1 == self.steps):
            return
        bad, stop_now = self.window.sync(self.stop.signal is not None)  # the one host sync of these steps
        if bad or ((stop_now or b + 1 == self.steps) and not finite_weights(self.model)):
            raise self.diverged(epoch, b)
        if stop_now:
            sums = dist_utils.all_reduce_sum(self.window.sums, self.device)
            self.checkpoint(epoch, in_epoch={"batches_done": b + 1, "sums": sums,
                                             "seconds": seconds_before + time.perf_counter() - t0})
            raise self.stopped(f"after batch {b + 1}/{self.steps} of epoch {epoch + 1}")

    def _epoch_row(self, epoch: int, lr: float, epoch_seconds: float) -> tuple[dict[str, Any], dict[str, float]]:
        """Evaluate and build the epoch's metrics row (the same on every rank: all values are all-reduced);
        returns the row and the evaluation."""
        loss_sum, aux_sum, correct, seen = dist_utils.all_reduce_sum(self.window.sums, self.device)
        if self.world > 1:  # each rank's BatchNorm saw its own last half-batch: evaluate rank 0's statistics
            dist_utils.broadcast_batchnorm_stats(self.model)
        ev = evaluate(self.model, self.test_loader, self.device, self.cfg.amp, self.cfg.progress and self.main)
        row: dict[str, Any] = {
            "epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / seen, "train_acc": correct / seen,
            "test_loss": ev["loss"], "test_acc": ev["acc"], "test_top5": ev["top5"],
            "epoch_seconds": epoch_seconds, "train_img_per_s": seen / epoch_seconds,
        }
        if self.aux_losses:
            row["aux_loss"] = aux_sum / seen
        for cb in self.callbacks:
            row.update(cb.on_epoch_end(epoch))
        return row, ev

    def _end_epoch(self, epoch: int, lr: float, epoch_seconds: float, end_epoch: int) -> None:
        """Metrics row, best and last checkpoints, then metrics.csv (never ahead of last.pt); a signal that
        arrived during evaluation stops here."""
        st, cfg = self.state, self.cfg
        st.train_seconds += epoch_seconds
        row, ev = self._epoch_row(epoch, lr, epoch_seconds)
        self.metrics.rows.append(row)
        if ev["acc"] > st.best_acc:
            st.best_acc, st.best_epoch = ev["acc"], epoch + 1
            self.checkpoint(epoch + 1, "best.pt")
        saved = (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs
        if saved:
            self.checkpoint(epoch + 1)
        if self.main:  # after the checkpoint: metrics.csv is never ahead of last.pt
            self.metrics.flush()
        st.epoch = epoch + 1
        if epoch + 1 < end_epoch and self.agree(self.stop.signal is not None)[0]:  # signal during eval
            if not saved:
                self.checkpoint(epoch + 1)
            raise self.stopped(f"at the end of epoch {epoch + 1}")
        log.info("epoch %d/%d  train loss %.4f acc %.4f  test loss %.4f acc %.4f  (%.0f img/s)", epoch + 1,
                 cfg.epochs, row["train_loss"], row["train_acc"], ev["loss"], ev["acc"], row["train_img_per_s"])
