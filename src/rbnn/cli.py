"""`rbnn` command line: thin wrappers that parse arguments and call library functions.

Errors caused by user input print one line (``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .errors import RbnnError


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import train
    from .train.distributed import env_world_size

    cfg = load_config(args.config, args.overrides)
    if cfg.nproc > 1 and env_world_size() <= 1:  # under torchrun (WORLD_SIZE set) this process is one rank
        from .train.launch import launch_distributed

        return launch_distributed(args, cfg.nproc)
    summary = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if summary.get("rank", 0) == 0:
        _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}%"

    print(f"run: {summary['run_dir']}")
    print(f"{summary['model']} / {summary['method']} on {summary['dataset']}: test acc {pct(summary['test_acc'])} "
          f"(best {pct(summary['best_test_acc'])} at epoch {summary['best_epoch']}), "
          f"{summary['train_seconds']:.0f} s training")
    exp = summary.get("export")
    if exp:
        if "error" in exp:
            print(f"export: not done ({exp['error']})")
        else:
            print(f"packed 1-bit model: {exp['file']} ({exp['file_bytes']:,} bytes, float32 weights "
                  f"{exp['float32_state_dict_bytes']:,} bytes); verified: integer pre-activations equal "
                  f"{exp.get('int_exact')}, argmax agreement {exp.get('argmax_agreement')}; "
                  f"{_speed(exp)}")


def _speed(exp: dict) -> str:
    """The packed engine's speed against torch eval: the median of interleaved pairs, with their range."""
    lo, hi = exp.get("speedup_range", (None, None))
    spread = f", range {lo:.2f}-{hi:.2f}x" if lo is not None else ""
    return (f"{exp['speedup_vs_torch_eval']:.2f}x the speed of torch fp32 eval at batch {exp['batch']} "
            f"(median of {exp.get('timing_pairs', 1)} interleaved pairs{spread})")


def _cmd_eval(args: argparse.Namespace) -> int:
    from .config import DataConfig
    from .data import build_loaders
    from .train import evaluate, load_run_model
    from .train.engine import resolve_device

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
    from .config import load_config
    from .summary import format_summary, summarize
    from .train import build_model

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
            from .runtime.size import format_size_report

            print("\nexported .rbnn file (real bytes on disk):")
            print(format_size_report(real))
        elif real:
            print(f"\nexported .rbnn file: not available ({real})")
    return 0


def _real_size(model, size):
    """Per-layer bytes of the model actually exported to a .rbnn file (None for float models)."""
    if not getattr(model, "binarization", {}).get("binary_layers"):
        return None
    from .export import size_report

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
    from . import models

    return tuple(models.create(cfg.model, method=None).input_size)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rbnn", description="Train, export and run binary neural networks.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (key=value overrides after the options)")
    t.add_argument("--config", "-c", help="YAML config file")
    t.add_argument("--resume", action="store_true", help="continue the run in out=DIR from its last.pt")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. method=xnor data.subset=2000")
    t.set_defaults(func=_cmd_train)

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

    from . import cli_extra

    cli_extra.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may be interleaved with options (argparse stops collecting them at an option)
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    rank = int(os.environ.get("RANK", "0") or 0)  # torchrun / nproc=N children: only rank 0 talks
    level = logging.DEBUG if args.verbose else logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except RbnnError as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        else:  # every rank usually hits the same error; rank 0 reports it, the others say they stopped
            print(f"rank {rank} stopped: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 2))
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


