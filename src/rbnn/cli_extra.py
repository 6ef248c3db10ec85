"""Subcommands beyond train/eval/summary: report, ablate, export, predict, verify."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_report(args: argparse.Namespace) -> int:
    from .diagnostics.report import write_report

    index = write_report(args.run_dir, args.out)
    print(f"report: {index}")
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from .ablate import load_ablation, run_ablation

    cfg, methods, seeds = load_ablation(args.config, args.overrides)
    seeds = args.seeds if args.seeds is not None else (seeds or 1)
    out = Path(args.out or (Path("runs") / f"ablate-{cfg.model}"))
    run_ablation(cfg, methods, seeds, out, overwrite=args.overwrite)
    print((out / "results.md").read_text())
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Registered by cli.build_parser."""
    r = sub.add_parser("report", help="PNG plots + index.html of a run's diagnostics")
    r.add_argument("run_dir")
    r.add_argument("--out", help="output folder (default RUN_DIR/report)")
    r.set_defaults(func=_cmd_report)

    a = sub.add_parser("ablate", help="run methods x seeds at one budget; markdown + CSV table")
    a.add_argument("--config", "-c", help="ablation YAML: a train config plus a 'methods:' list")
    a.add_argument("--seeds", type=int, help="seeds per method (default: the file's 'seeds', else 1)")
    a.add_argument("--out", help="output folder (default runs/ablate-<model>)")
    a.add_argument("--overwrite", action="store_true", help="re-run finished runs")
    a.add_argument("overrides", nargs="*", help="key=value overrides; methods=a,b,c")
    a.set_defaults(func=_cmd_ablate)

    try:
        from .deploy import cli as deploy_cli
    except ImportError:
        return
    deploy_cli.add_commands(sub)
