"""Training engine, callbacks, checkpoints, logging and distributed helpers."""

from ..run import build_model, load_run_model
from .engine import evaluate, train

__all__ = ["build_model", "evaluate", "load_run_model", "train"]
