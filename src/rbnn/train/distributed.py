"""Distributed helpers that are no-ops in a single process.

The process group comes from the environment, exactly as ``torchrun`` sets it (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); ``rbnn train nproc=N`` (``rbnn.train.launch``) runs
torchrun's launcher for the N processes. Backend: ``nccl`` when the run uses CUDA (one device per
process, ``cuda:LOCAL_RANK``), ``gloo`` otherwise.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import ConfigError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", rank()))


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (torchrun / ``rbnn train nproc=N``), 1 when unset."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"environment variable WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") \
            from None


def init_from_env(device_name: str, timeout_s: float = 600.0) -> bool:
    """Join the process group described by the environment when ``WORLD_SIZE > 1``.

    Returns True when this call created the group (the caller then destroys it with :func:`destroy`), False
    when there is nothing to do (one process, or a group that already exists).
    """
    if is_distributed() or env_world_size() <= 1:
        return False
    if not dist.is_available():  # pragma: no cover
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but environment variable {key} is not "
                              "set; start with `torchrun --nproc_per_node N -m rbnn train ...` or "
                              "`rbnn train nproc=N`")
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://",
                            timeout=timedelta(seconds=timeout_s))
    return True


def destroy() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_(t: torch.Tensor, src: int = 0) -> None:
    """``t`` of rank ``src`` on every rank, in place. ``t`` must be contiguous on every backend, also in a
    single process: NCCL refuses anything else, and gloo (the CPU tests' backend) would not say so."""
    if not t.is_contiguous():
        raise ValueError(f"broadcast_: tensor of shape {tuple(t.shape)} and strides {t.stride()} is not "
                         "contiguous (NCCL refuses it)")
    if is_distributed():
        dist.broadcast(t, src)


def broadcast_batchnorm_stats(model: torch.nn.Module, src: int = 0) -> None:
    """Rank ``src``'s BatchNorm running statistics on every rank. DDP broadcasts buffers *before* each forward,
    so after the last training step every rank holds its own half-batch's update; evaluating (and exporting)
    with those would give each rank a different model."""
    if not is_distributed():
        return
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            for buf in (m.running_mean, m.running_var, m.num_batches_tracked):
                if buf is not None:
                    broadcast_(buf, src)


def all_reduce_sum(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (any picklable value; used for small decisions)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def wrap_ddp(model: torch.nn.Module, device: torch.device, sync_bn: bool = False) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` (optionally converting BatchNorm to SyncBatchNorm).

    ``convert_sync_batchnorm`` replaces the BatchNorm children in place, so ``model`` (and every reference the
    callbacks hold to its binary layers) stays the module that is trained. PyTorch's SyncBatchNorm only runs
    on GPUs, so ``sync_bn=true`` with a CPU device is refused.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    if sync_bn:
        if device.type == "cpu":
            raise ConfigError("config key 'sync_bn': true needs CUDA devices (torch's SyncBatchNorm does not "
                              "run on CPU); use sync_bn=false with device=cpu")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (for MASTER_PORT of a local launch)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
