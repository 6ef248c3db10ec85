"""Checkpoints: atomic writes (temp file, fsync, rename) and safe loads (``weights_only=True``)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write_bytes, atomic_write_text
from .errors import CheckpointError

__all__ = ["atomic_write_bytes", "atomic_write_text", "check_resume_state", "load_checkpoint", "save_checkpoint"]


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """torch.save to a temp file in the same directory, fsync, then rename over ``path``.

    The state is serialized in memory first: torch's zip writer reports a full disk as a RuntimeError
    ("unexpected pos"), while a plain write reports it as ENOSPC, which becomes one clear line."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getbuffer())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True`` (never unpickles code); any failure is a one-line CheckpointError."""
    path = Path(path)
    if path.is_dir():
        for name in ("last.pt", "best.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path}: no last.pt or best.pt in this run directory")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message suggests weights_only=False, which would run the file's code: never do that here
        found = [ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        detail = found[0][:160] if found else "it holds objects other than tensors and plain data"
        raise CheckpointError(f"checkpoint {path} was refused: it is not plain tensor data ({detail})") from None
    except Exception as e:  # noqa: BLE001 - turn any other read failure into one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} could not be read ({first[:200]})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"checkpoint {path} is not an rbnn checkpoint (expected keys 'model' and 'config')")
    for key, expected in (("model", (dict,)), ("config", (dict,)), ("dataset", (dict,))):
        if key in state and not isinstance(state[key], expected):
            raise _type_error(path, key, state[key], expected)
    return state


# what ``--resume`` reads from last.pt, with the types it needs
_RESUME_SCHEMA: dict[str, tuple[type, ...]] = {
    "model": (dict,), "optimizer": (dict,), "config": (dict,), "epoch": (int,), "best_acc": (int, float),
    "best_epoch": (int,), "metrics": (list,), "callbacks": (list,), "rng": (torch.Tensor,),
}


def _type_error(path: Path, key: str, value: Any, expected: tuple[type, ...]) -> CheckpointError:
    names = " or ".join(t.__name__ for t in expected)
    return CheckpointError(f"checkpoint {path}: key '{key}' is {type(value).__name__}, expected {names}")


def check_resume_state(state: dict[str, Any], path: str | Path) -> None:
    """Every key ``--resume`` reads has the right type (a malformed checkpoint is one line, not a traceback)."""
    path = Path(path)
    for key, expected in _RESUME_SCHEMA.items():
        if key not in state:
            raise CheckpointError(f"checkpoint {path}: key '{key}' is missing; it cannot be resumed")
        value = state[key]
        if not isinstance(value, expected) or isinstance(value, bool):
            raise _type_error(path, key, value, expected)
    if state["rng"].dtype != torch.uint8 or state["rng"].dim() != 1:
        raise CheckpointError(f"checkpoint {path}: key 'rng' is a {state['rng'].dtype} tensor of shape "
                              f"{tuple(state['rng'].shape)}, expected a 1-d uint8 RNG state")
    bad = next((k for k, v in state["model"].items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"checkpoint {path}: model entry '{bad}' is not a tensor")
    if state["epoch"] < 0:
        raise CheckpointError(f"checkpoint {path}: key 'epoch' is {state['epoch']}, expected >= 0")
    in_epoch = state.get("in_epoch")
    if in_epoch is not None:
        ok = (isinstance(in_epoch, dict) and isinstance(in_epoch.get("batches_done"), int)
              and isinstance(in_epoch.get("sums"), list | tuple) and len(in_epoch["sums"]) == 4
              and isinstance(in_epoch.get("seconds"), int | float))
        if not ok:
            raise CheckpointError(f"checkpoint {path}: key 'in_epoch' is malformed (expected batches_done, "
                                  "four sums and seconds)")
