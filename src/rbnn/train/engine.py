"""The training pipeline: setup -> data -> model -> resume -> epochs (:mod:`rbnn.train.loop`) -> summary ->
export.

``train(cfg)`` is what ``rbnn train`` calls. Everything the loop changes on the model goes through callbacks;
everything needed to resume (model, optimizer, callback state, RNG, metrics so far) is in ``last.pt``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..atomic import atomic_write_text
from ..checkpoint import check_resume_state, load_checkpoint
from ..config import Config, dump_yaml, from_dict, to_dict
from ..data import build_loaders
from ..data.idx import FASHION_MNIST_ROOT
from ..diagnostics.oscillation import oscillation_callbacks
from ..errors import CheckpointError, ConfigError, DataError, RbnnError
from ..export import export, verify
from ..nn.layers import binary_modules
from ..run import build_model, load_run_model, one_line
from ..rundir import RunDirError, check_run_dir, create_run_dir, remove_if_no_result
from ..runtime import load
from . import distributed as dist_utils
from .callbacks import Callback, ModuleHooks, RotationUpdate, SurrogateSchedule, WeightDiagnostics
from .logging import MetricsLog, check_tensorboard
from .loop import Interrupted, Trainer, TrainingDiverged, TrainState, evaluate, kd_loss
from .optim import build_optimizer
from .steps import resolve_every

__all__ = ["Callback", "Interrupted", "TrainingDiverged", "build_callbacks", "build_model", "evaluate", "kd_loss",
           "load_run_model", "train"]

log = logging.getLogger("rbnn")


# ---------------------------------------------------------------------------------------------------------
def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device': {name!r} requested but CUDA is not available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"config key 'device': expected auto, cpu, cuda or cuda:N, got {name!r}") from None


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """cuDNN's autotuner picks the fastest convolution algorithms for the (fixed) shapes of a run, unless the
    run must be deterministic (the autotuner's choice may differ between runs)."""
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic


# ---------------------------------------------------------------------------------------------------------
def default_run_dir(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.model}-{cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_dir_of(cfg: Config) -> Path:
    return Path(cfg.out) if cfg.out else default_run_dir(cfg)


def data_roots(cfg: Config) -> list[Path]:
    """The directories the run reads data from: ``--overwrite`` must never delete them."""
    if cfg.data.root:
        return [Path(cfg.data.root)]
    return [Path(FASHION_MNIST_ROOT)] if cfg.data.name == "fashion-mnist" else []


def build_callbacks(model: nn.Module, cfg: Config) -> list[Callback]:
    cbs: list[Callback] = [SurrogateSchedule(model), RotationUpdate(model), ModuleHooks(model)]
    if cfg.diagnostics and binary_modules(model):
        cbs.append(WeightDiagnostics(model, seed=cfg.seed))
        device = next(model.parameters()).device
        cbs.extend(oscillation_callbacks(model, cfg, resolve_every(cfg.diagnostics_every, device, 20)))
    extra = getattr(model, "training_callbacks", None)
    if callable(extra):
        cbs.extend(extra(cfg))
    return cbs


def train(cfg: Config, resume: bool = False, overwrite: bool = False,
          stop_after_epochs: int | None = None) -> dict[str, Any]:
    """Train ``cfg``, then export the packed model (``cfg.export``); returns the summary (also written to
    ``summary.json`` in the run directory).

    ``stop_after_epochs`` ends this call early (after that many epochs) as a crash would, leaving a run that
    ``resume=True`` continues; the schedules still follow ``cfg.epochs``.

    Under ``torchrun`` (or ``rbnn train nproc=N``), ``WORLD_SIZE > 1`` in the environment: the process group
    is created here (gloo on CPU, nccl on CUDA with ``cuda:LOCAL_RANK``) before the loaders are built, and
    destroyed on the way out. Only rank 0 writes files; every rank returns the same summary.
    """
    created = dist_utils.init_from_env(cfg.device)
    cfg = dataclasses.replace(cfg, out=str(run_dir_of(cfg)))  # one name, even for the timestamped default
    try:
        trainer, summary = _train(cfg, resume, overwrite, stop_after_epochs)
        if trainer.main and cfg.export and summary["binary_layers"]:
            summary["export"] = export_and_verify(trainer.model, trainer.run_dir, trainer.test_loader,
                                                  trainer.device)
        if trainer.main:
            atomic_write_text(trainer.run_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
        return summary
    except RbnnError as e:
        # a run that failed before its first checkpoint leaves nothing that blocks rerunning the same command
        if not resume and not isinstance(e, (Interrupted, RunDirError)) and dist_utils.rank() == 0:
            remove_if_no_result(Path(cfg.out))
        raise
    finally:
        if created:
            dist_utils.destroy()


def _train(cfg: Config, resume: bool, overwrite: bool,
           stop_after_epochs: int | None) -> tuple[Trainer, dict[str, Any]]:
    """Setup, data, model, resume, the epoch loop, the summary: the training part of :func:`train`."""
    device = _setup(cfg)
    run_dir = run_dir_of(cfg)
    # check only; nothing on disk changes until the data and the model are known to be good
    _check_run(cfg, run_dir, resume, overwrite)
    train_loader, test_loader, info = _load_data(cfg, device)
    model, teacher, init_report = _build_models(cfg, info, device, resume)
    callbacks = build_callbacks(model, cfg)
    optimizer = build_optimizer(model, cfg.optim)
    train_model = dist_utils.wrap_ddp(model, device, cfg.sync_bn) if dist_utils.world_size() > 1 else model
    state, rows = TrainState(), []
    if resume:
        state, rows = _load_resume(run_dir / "last.pt", cfg, device, model, optimizer, callbacks)
    metrics = _open_run_dir(cfg, run_dir, resume, overwrite, rows)
    for cb in callbacks:
        cb.on_train_start(model)
    trainer = Trainer(cfg=cfg, device=device, run_dir=run_dir, info=info, model=model, train_model=train_model,
                      optimizer=optimizer, callbacks=callbacks, teacher=teacher, train_loader=train_loader,
                      test_loader=test_loader, metrics=metrics, state=state)
    start_epoch = state.epoch
    trainer.run(_end_epoch(cfg, state, stop_after_epochs))
    return trainer, summarize(trainer, start_epoch, init_report)


def _setup(cfg: Config) -> torch.device:
    """Threads, seeds, the device (one GPU per process under DDP) and its backends."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed, cfg.deterministic)
    device = resolve_device(cfg.device)
    world = dist_utils.world_size()
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist_utils.local_rank())  # one GPU per process
    configure_backends(device, cfg.deterministic)
    if world > 1 and cfg.sync_bn and device.type == "cpu":
        raise ConfigError("config key 'sync_bn': true needs CUDA devices (torch's SyncBatchNorm does not run "
                          "on CPU); use sync_bn=false with device=cpu")
    return device


def _check_run(cfg: Config, run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a run directory, batch size or tensorboard setting that cannot work, before anything is built."""
    world = dist_utils.world_size()
    check_run_dir(run_dir, resume, overwrite, data_roots(cfg))
    if cfg.batch_size % world:
        raise ConfigError(f"config key 'batch_size': {cfg.batch_size} is not divisible by {world} processes")
    if cfg.tensorboard and dist_utils.rank() == 0:
        check_tensorboard()


def _load_data(cfg: Config, device: torch.device):
    """This rank's training and test loaders and the dataset's description; refuses an empty split."""
    train_loader, test_loader, info = build_loaders(cfg.data, cfg.batch_size, cfg.eval_batch_size, cfg.seed,
                                                    rank=dist_utils.rank(), world_size=dist_utils.world_size(),
                                                    device=device)
    if len(train_loader) == 0 or info.test_size == 0:
        raise DataError(f"data {info.name}: {info.train_size} training and {info.test_size} test images; need "
                        f"at least one test image and one batch of {cfg.batch_size} (lower batch_size or raise "
                        "data.subset)")
    return train_loader, test_loader, info


def _build_models(cfg: Config, info, device: torch.device, resume: bool):
    """The model (same init on every rank), its ``init_from`` weights, and the distillation teacher."""
    torch.manual_seed(cfg.seed)  # identical model init on every rank (DDP also broadcasts rank 0's at wrap)
    model = build_model(cfg, info.num_classes, tuple(info.input_size)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    init_report = None
    if cfg.init_from and not resume:
        init_report = _init_from(model, cfg.init_from)
    teacher = None
    if cfg.distill.teacher:
        teacher, _, _ = load_run_model(cfg.distill.teacher, device)
        teacher.eval().requires_grad_(False)
    return model, teacher, init_report


def _open_run_dir(cfg: Config, run_dir: Path, resume: bool, overwrite: bool, rows: list[dict]) -> MetricsLog:
    """Rank 0 creates the run directory and its config.yaml once every rank has checked it; the metrics log
    continues ``rows`` (those of a resumed run)."""
    main = dist_utils.rank() == 0
    dist_utils.barrier()  # every rank has checked the run directory before rank 0 changes it
    if main:
        create_run_dir(run_dir, resume, overwrite)
        atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    dist_utils.barrier()  # ... and the other ranks start only once it exists
    return MetricsLog(run_dir / "metrics.csv", rows, run_dir / "tb" if (cfg.tensorboard and main) else None)


def _end_epoch(cfg: Config, state: TrainState, stop_after_epochs: int | None) -> int:
    """The epoch this call stops before: ``cfg.epochs``, or earlier with ``stop_after_epochs``; a mid-epoch
    checkpoint's epoch is always finished."""
    end_epoch = cfg.epochs if stop_after_epochs is None else min(cfg.epochs, state.epoch + stop_after_epochs)
    if state.in_epoch is not None and state.epoch < cfg.epochs:
        end_epoch = max(end_epoch, state.epoch + 1)
    return end_epoch


def summarize(trainer: Trainer, start_epoch: int, init_report: dict[str, list[str]] | None) -> dict[str, Any]:
    """The run's summary: last and best accuracy, throughput, what was binarized, where it ran."""
    cfg, info, model, st = trainer.cfg, trainer.info, trainer.model, trainer.state
    last = trainer.metrics.rows[-1] if trainer.metrics.rows else {}
    binarization = getattr(model, "binarization", {})
    summary: dict[str, Any] = {
        "model": cfg.model, "method": cfg.method.name, "dataset": info.name, "epochs": cfg.epochs,
        "test_acc": last.get("test_acc"), "best_test_acc": st.best_acc, "best_epoch": st.best_epoch,
        "final_train_loss": last.get("train_loss"), "train_seconds": st.train_seconds,
        "train_img_per_s": ((info.train_size * (cfg.epochs - start_epoch) / st.train_seconds)
                            if st.train_seconds else None),
        "params": sum(p.numel() for p in model.parameters()),
        "binary_layers": list(binarization.get("binary_layers", [])),
        "float_layers": list(binarization.get("float_layers", [])),
        "run_dir": str(trainer.run_dir), "device": str(trainer.device), "world_size": trainer.world,
        "rank": dist_utils.rank(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "rbnn": __version__,
    }
    if init_report is not None:
        summary["init_from"] = init_report
    return summary


# keys that may differ between a run and its resumption: where it runs and what it prints, not what it computes
RESUME_MAY_DIFFER = ("out", "threads", "progress", "device", "deterministic", "tensorboard", "export",
                     "checkpoint_every", "nproc", "init_from", "eval_batch_size", "data.root", "data.workers")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: Config, now: Config) -> list[str]:
    """The config keys whose values differ and would change what a resumed run computes."""
    a, b = _flat(to_dict(saved)), _flat(to_dict(now))
    keys = [*b, *(k for k in a if k not in b)]  # a recipe override set in only one of them is a difference too
    return [k for k in keys if k not in RESUME_MAY_DIFFER and a.get(k) != b.get(k)]


def _load_resume(ckpt: Path, cfg: Config, device: torch.device, model: nn.Module, optimizer,
                 callbacks: list[Callback]) -> tuple[TrainState, list[dict[str, Any]]]:
    """Restore model, optimizer, callbacks and RNG from ``ckpt``; refuse a checkpoint this config cannot
    continue exactly (another model, method or training key; a finished run; non-finite weights)."""
    state = load_checkpoint(ckpt, map_location=device)
    check_resume_state(state, ckpt)
    if state.get("model_name") != cfg.model or state.get("method") != cfg.method.name:
        raise CheckpointError(f"{ckpt} is from model '{state.get('model_name')}' method "
                              f"'{state.get('method')}', not '{cfg.model}' '{cfg.method.name}'")
    try:
        saved = from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"{ckpt}: its stored config is invalid ({e})") from None
    differ = config_differences(saved, cfg)
    if differ:
        shown = ", ".join(f"{k} ({_flat(to_dict(saved)).get(k)!r} -> {_flat(to_dict(cfg)).get(k)!r})"
                          for k in differ[:4])
        raise CheckpointError(f"cannot resume {ckpt}: the config differs in {shown}"
                              f"{' ...' if len(differ) > 4 else ''}; resume with the run's own config "
                              f"({ckpt.parent / 'config.yaml'}) or start a new run")
    in_epoch = state.get("in_epoch")
    if state["epoch"] >= cfg.epochs and in_epoch is None:
        raise CheckpointError(f"cannot resume {ckpt.parent}: the run is finished ({state['epoch']}/{cfg.epochs} "
                              f"epochs); evaluate it with `rbnn eval {ckpt.parent}` or train again with "
                              "--overwrite")
    bad = next((k for k, v in state["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()),
               None)
    if bad is not None:
        raise TrainingDiverged(f"cannot resume {ckpt}: the loss became nan before it was written (weight '{bad}' "
                               "is not finite); start a new run with a lower optim.lr")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for cb, cb_state in zip(callbacks, state["callbacks"]):
            cb.load_state_dict(cb_state)
        torch.set_rng_state(state["rng"].cpu())
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt} does not match model '{cfg.model}' with method "
                              f"'{cfg.method.name}' and this config: {one_line(e)}") from None
    return TrainState(epoch=state["epoch"], best_acc=float(state["best_acc"]), best_epoch=state["best_epoch"],
                      train_seconds=float(state.get("train_seconds", 0.0)), in_epoch=in_epoch), state["metrics"]


def _init_from(model: nn.Module, path: str) -> dict[str, list[str]]:
    """Load matching weights from a checkpoint non-strictly and report exactly which keys differ."""
    state = load_checkpoint(path)
    own = model.state_dict()
    src = state["model"]
    loadable = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
    report = {"new_keys": sorted(set(own) - set(loadable)),
              "unused_keys": sorted(k for k in src if k not in loadable)}
    model.load_state_dict(loadable, strict=False)
    log.info("init_from %s: loaded %d tensors; new (not in checkpoint): %s; unused: %s", path, len(loadable),
             ", ".join(report["new_keys"]) or "none", ", ".join(report["unused_keys"]) or "none")
    return report


def export_and_verify(model: nn.Module, run_dir: Path, test_loader, device: torch.device) -> dict[str, Any]:
    """Export the packed 1-bit model next to the checkpoints, check it against the torch graph, time it."""
    model = model.to("cpu").eval()
    x, _ = next(iter(test_loader))
    x = x[:128].cpu()
    path = run_dir / "model.rbnn"
    try:
        export(model, path, input_shape=tuple(x.shape[1:]))
        packed = load(path, backend="fast")
        report = dict(verify(model, packed, x.numpy()))
    except RbnnError as e:
        return {"error": str(e)}
    xn = x.numpy()
    packed.predict(xn)  # warm-up / compile
    with torch.no_grad():
        model(x)
    timing = _interleaved_timing(lambda: model(x), lambda: packed.predict(xn))
    report.update({"file": str(path), "file_bytes": path.stat().st_size,
                   "float32_state_dict_bytes": sum(t.numel() * 4 for t in model.state_dict().values()
                                                   if t.is_floating_point()),
                   "batch": int(x.shape[0]), **timing})
    return report


def _interleaved_timing(baseline, candidate, repeats: int = 7) -> dict[str, Any]:
    """Time ``baseline`` (torch eval) and ``candidate`` (the packed engine) in alternating pairs (ABBA order),
    so both see the same machine load; report medians and the spread of the per-pair ratios.

    One best-of-5 of each, taken one after the other, printed 21.8x on a busy machine where the engine's
    measured ratio is ~3x: only a ratio whose pairs agree means something, and the range says whether they do.
    """
    def once(fn) -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            fn()
        return time.perf_counter() - t0

    base, cand = [], []
    for r in range(repeats):
        if r % 2:
            cand.append(once(candidate))
            base.append(once(baseline))
        else:
            base.append(once(baseline))
            cand.append(once(candidate))
    ratios = sorted(b / c for b, c in zip(base, cand))
    return {"torch_fp_eval_seconds": float(np.median(base)), "packed_seconds": float(np.median(cand)),
            "speedup_vs_torch_eval": float(np.median(ratios)), "speedup_range": [ratios[0], ratios[-1]],
            "timing_pairs": repeats}
