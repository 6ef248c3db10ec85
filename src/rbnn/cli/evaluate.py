"""`rbnn eval`, `rbnn summary` and `rbnn report`: commands that read a run or a model and describe it."""

from __future__ import annotations

import argparse
import json

from ..errors import RbnnError


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..config import DataConfig
    from ..data import build_loaders
    from ..train import evaluate, load_run_model
    from ..train.engine import resolve_device

    device = resolve_device(args.device)
    model, cfg, state = load_run_model(args.checkpoint, device)
    data_cfg: DataConfig = cfg.data
    if args.data_root:
        data_cfg.root = args.data_root
    _, test_loader, _ = build_loaders(data_cfg, cfg.batch_size, cfg.eval_batch_size, cfg.seed, device=device)
    ev = evaluate(model, test_loader, device)
    print(json.dumps({"checkpoint": str(args.checkpoint), "epoch": state["epoch"], "test_loss": ev["loss"],
                      "test_acc": ev["acc"], "test_top5": ev["top5"], "images": int(ev["n"])}, indent=2))
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..summary import format_summary, summarize
    from ..train import build_model

    cfg = load_config(args.config, args.overrides)
    size = tuple(args.input_size) if args.input_size else _default_input_size(cfg)
    model = build_model(cfg, args.num_classes, size)
    s = summarize(model, size)
    real = _real_size(model, size)
    if args.json:
        print(json.dumps({**s, "packed_file": real}, indent=2, default=str))
    else:
        print(f"{cfg.model} / {cfg.method.name}, input {size}")
        print(format_summary(s))
        if isinstance(real, list):
            from ..runtime.size import format_size_report

            print("\nexported .rbnn file (real bytes on disk):")
            print(format_size_report(real))
        elif real:
            print(f"\nexported .rbnn file: not available ({real})")
    return 0


def _real_size(model, size):
    """Per-layer bytes of the model actually exported to a .rbnn file (None for float models)."""
    if not getattr(model, "binarization", {}).get("binary_layers"):
        return None
    from ..export import size_report

    try:
        return size_report(model.eval(), input_shape=size)
    except RbnnError as e:
        return str(e)


DATASET_INPUT_SIZES = {"fashion-mnist": (1, 28, 28), "mnist": (1, 28, 28), "idx": (1, 28, 28),
                       "cifar10": (3, 32, 32), "imagenet": (3, 224, 224)}


def _default_input_size(cfg) -> tuple[int, int, int]:
    """The input size of the config's dataset, else the model's own default."""
    if cfg.data.name in DATASET_INPUT_SIZES:
        return DATASET_INPUT_SIZES[cfg.data.name]
    from .. import models

    return tuple(models.create(cfg.model, method=None).input_size)


def _cmd_report(args: argparse.Namespace) -> int:
    from ..diagnostics.report import write_report

    index = write_report(args.run_dir, args.out)
    print(f"report: {index}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="evaluate a checkpoint (or run directory) on its test set")
    e.add_argument("checkpoint")
    e.add_argument("--data-root", help="override the dataset root stored in the checkpoint")
    e.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    e.set_defaults(func=_cmd_eval)

    s = sub.add_parser("summary", help="per-layer binary/float, params, bytes, binary ops vs FLOPs")
    s.add_argument("--config", "-c")
    s.add_argument("--num-classes", type=int, default=10)
    s.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"))
    s.add_argument("--json", action="store_true")
    s.add_argument("overrides", nargs="*")
    s.set_defaults(func=_cmd_summary)

    r = sub.add_parser("report", help="PNG plots + index.html of a run's diagnostics")
    r.add_argument("run_dir")
    r.add_argument("--out", help="output folder (default RUN_DIR/report)")
    r.set_defaults(func=_cmd_report)
