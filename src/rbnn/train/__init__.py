"""Training engine, callbacks, checkpoints, logging and distributed helpers."""

from .engine import build_model, evaluate, load_run_model, train

__all__ = ["build_model", "evaluate", "load_run_model", "train"]
