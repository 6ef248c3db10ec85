"""`rbnn export`, `rbnn predict` and `rbnn verify`: commands on the packed 1-bit model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..atomic import check_file_target
from ..errors import ConfigError


def _test_arrays(data_name: str | None, data_root: str | None, run_cfg=None, limit: int = 0):
    """The test split of a dataset as (x float32 NCHW normalized, y int64) NumPy arrays."""
    import numpy as np

    from ..config import DataConfig
    from ..data import build_loaders

    cfg = DataConfig() if run_cfg is None else run_cfg.data
    if data_name:
        cfg.name = data_name
    if data_root:
        cfg.root = data_root
    if limit:
        cfg.test_subset = limit
    cfg.subset = cfg.subset or 0
    _, test_loader, info = build_loaders(cfg, 256, 256, 0)
    xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in test_loader))
    return np.concatenate(xs), np.concatenate(ys), info


def _cmd_export(args: argparse.Namespace) -> int:
    from ..export import export, export_onnx
    from ..train import load_run_model

    out = Path(args.output or (Path(args.run) / ("model.onnx" if args.format == "onnx" else "model.rbnn")))
    if args.output:
        check_file_target(out)  # before the model is built
    model, cfg, state = load_run_model(args.run)
    model.eval()
    shape = tuple(state.get("dataset", {}).get("input_size", (1, 28, 28)))
    check_file_target(out)
    if args.format == "onnx":
        export_onnx(model, out, shape)
    else:
        export(model, out, input_shape=shape)
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import json
    import time

    from ..runtime import load

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit < 0:
        raise ConfigError(f"--limit must be >= 0 (0 = all test images), got {args.limit}")
    packed = load(args.model, backend=args.backend)
    x, y, info = _test_arrays(args.data, args.data_root, limit=args.limit)
    t0 = time.perf_counter()
    logits = packed.predict(x, batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    acc = float((logits.argmax(1) == y).mean())
    print(json.dumps({"model": str(args.model), "dataset": info.name, "images": int(len(y)), "accuracy": acc,
                      "backend": args.backend, "seconds": seconds, "img_per_s": len(y) / seconds}, indent=2))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    import json

    from ..export import export, verify
    from ..runtime import load
    from ..train import load_run_model

    if args.images < 1:
        raise ConfigError(f"--images must be >= 1, got {args.images}")
    model, cfg, state = load_run_model(args.run)
    model.eval()
    run = Path(args.run)
    path = run / "model.rbnn" if run.is_dir() else run.with_suffix(".rbnn")
    if args.packed:
        path = Path(args.packed)
    elif not path.is_file():
        export(model, path, input_shape=tuple(state["dataset"]["input_size"]))
    x, _, _ = _test_arrays(None, args.data_root, run_cfg=cfg, limit=args.images)
    report = verify(model, load(path, backend=args.backend), x)
    layers = report.pop("layers", {})
    report["layers_checked"] = len(layers)
    report["layers_mismatched"] = [n for n, r in layers.items() if not r.get("equal")]
    report["file"] = str(path)
    print(json.dumps(report, indent=2, default=str))
    return 0 if report.get("ok") else 1


def add_commands(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="write the packed 1-bit model (.rbnn) or ONNX of a run/checkpoint")
    e.add_argument("run", help="run directory or checkpoint")
    e.add_argument("-o", "--output", help="output file (default RUN_DIR/model.rbnn or model.onnx)")
    e.add_argument("--format", choices=("rbnn", "onnx"), default="rbnn")
    e.set_defaults(func=_cmd_export)

    p = sub.add_parser("predict", help="accuracy of a packed .rbnn model on a dataset's test split")
    p.add_argument("model")
    p.add_argument("--data", default="fashion-mnist", help="dataset name (as data.name)")
    p.add_argument("--data-root")
    p.add_argument("--backend", choices=("fast", "reference"), default="fast")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=0, help="first N test images (0 = all)")
    p.set_defaults(func=_cmd_predict)

    v = sub.add_parser("verify", help="check the packed model of a run against its torch graph")
    v.add_argument("run", help="run directory or checkpoint")
    v.add_argument("--packed", help=".rbnn file (default RUN_DIR/model.rbnn, exported if missing)")
    v.add_argument("--images", type=int, default=256, help="test images to compare")
    v.add_argument("--data-root")
    v.add_argument("--backend", choices=("fast", "reference"), default="fast")
    v.set_defaults(func=_cmd_verify)
