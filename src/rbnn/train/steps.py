"""Per-step bookkeeping of the training loop without a host sync per step.

On a GPU every ``float(tensor)`` / ``bool(tensor)`` makes the host wait until the device has finished all
queued work, so the next step cannot be queued behind the current one. The loop therefore records each
step's loss, task loss, auxiliary loss and correct count into a small device buffer and reads the buffer
back every ``every`` steps in ONE copy (a *sync point*). At a sync point it also learns whether any loss or
any weight became non-finite and, under DDP, whether any rank received a stop signal: those flags travel in
one all-reduce. The host then adds the steps' values to its running sums in step order, with exactly the
float64 arithmetic of adding ``float(task) * n`` step by step (resume stays bit-exact).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from . import distributed as dist_utils


def resolve_every(value: int, device: torch.device, cuda_default: int) -> int:
    """A ``*_every`` config value: 0 means ``cuda_default`` on CUDA and 1 elsewhere (host syncs cost
    nothing on CPU, and every step keeps its exact check)."""
    if value > 0:
        return value
    return cuda_default if device.type == "cuda" else 1


class StepWindow:
    """Device-side records of up to ``every`` steps plus the host-side running sums of the epoch."""

    COLUMNS = 4  # loss, task, aux, correct

    def __init__(self, every: int, device: torch.device) -> None:
        self.every = int(every)
        self.buf = torch.zeros(self.every, self.COLUMNS, dtype=torch.float64, device=device)
        self.batches: list[int] = []
        self.sizes: list[int] = []
        self.sums = [0.0, 0.0, 0.0, 0.0]  # task loss * n, aux * n, correct, seen
        self.first_bad: tuple[int, float] | None = None  # (batch, loss) of the first non-finite loss seen

    def start_epoch(self, sums: list[float] | None = None) -> None:
        self.batches, self.sizes = [], []
        self.sums = [float(v) for v in sums] if sums is not None else [0.0, 0.0, 0.0, 0.0]

    def record(self, batch: int, loss: torch.Tensor, task: torch.Tensor, aux: torch.Tensor,
               correct: torch.Tensor, n: int) -> None:
        """Queue this step's values on the device (no sync)."""
        row = torch.stack([loss.detach().double(), task.detach().double(), aux.detach().double(),
                           correct.double()])
        self.buf[len(self.batches)].copy_(row)
        self.batches.append(batch)
        self.sizes.append(int(n))

    def full(self) -> bool:
        return len(self.batches) >= self.every

    def sync(self, stop: bool) -> tuple[bool, bool]:
        """The sync point: read the records back (one copy), add them to the sums, and agree across ranks on
        (a loss of these steps was non-finite on some rank, some rank wants to stop)."""
        k = len(self.batches)
        rows = self.buf[:k]
        bad = (~torch.isfinite(rows[:, 0])).any().double()
        # torch.full, not torch.tensor: a fill kernel instead of a copy from pageable host memory (a sync)
        flags = torch.stack([bad, torch.full((), float(stop), dtype=torch.float64, device=rows.device)])
        if dist_utils.world_size() > 1:
            dist.all_reduce(flags)  # one collective for both decisions: every rank stops at the same step
        values = torch.cat([flags, rows.reshape(-1)]).tolist()  # the one host sync of these k steps
        any_bad, any_stop = values[0] > 0, values[1] > 0
        for j in range(k):
            loss, task, aux, correct = values[2 + 4 * j: 6 + 4 * j]
            if self.first_bad is None and not math.isfinite(loss):
                self.first_bad = (self.batches[j], loss)
            n = self.sizes[j]
            self.sums[0] += task * n
            self.sums[1] += aux * n
            self.sums[2] += correct
            self.sums[3] += n
        self.batches, self.sizes = [], []
        return any_bad, any_stop


@torch.no_grad()
def finite_weights(model: nn.Module) -> bool:
    """Every parameter finite (one host sync). Checked before a checkpoint is written: a loss check that runs
    every N steps lets up to N - 1 optimizer steps run first. Identical on every DDP rank (same weights)."""
    flags = [torch.isfinite(p).all() for p in model.parameters()]
    return bool(torch.stack(flags).all()) if flags else True
