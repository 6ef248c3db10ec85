"""`rbnn train` and `rbnn ablate`: commands that train runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError


def _cmd_train(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..train import train
    from ..train.distributed import env_world_size

    cfg = load_config(args.config, args.overrides)
    if cfg.nproc > 1 and env_world_size() <= 1:  # under torchrun (WORLD_SIZE set) this process is one rank
        from ..train.launch import launch_distributed

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


def _cmd_ablate(args: argparse.Namespace) -> int:
    from ..ablate import load_ablation, run_ablation

    cfg, methods, seeds = load_ablation(args.config, args.overrides)
    seeds = args.seeds if args.seeds is not None else (seeds or 1)
    out = Path(args.out or (Path("runs") / f"ablate-{cfg.model}"))
    only = None
    if args.only_seeds:
        try:
            only = {int(v) for v in args.only_seeds.split(",") if v.strip()}
        except ValueError:
            raise ConfigError(f"--only-seeds {args.only_seeds!r}: expected comma-separated seed indices") from None
    run_ablation(cfg, methods, seeds, out, overwrite=args.overwrite, train_seeds=only)
    from ..diagnostics.report import write_ablation_report

    print((out / "results.md").read_text())
    print(f"comparison plots: {write_ablation_report(out)}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a model (key=value overrides after the options)")
    t.add_argument("--config", "-c", help="YAML config file")
    t.add_argument("--resume", action="store_true", help="continue the run in out=DIR from its last.pt")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. method=xnor data.subset=2000")
    t.set_defaults(func=_cmd_train)

    a = sub.add_parser("ablate", help="run methods x seeds at one budget; markdown + CSV table")
    a.add_argument("--config", "-c", help="ablation YAML: a train config plus a 'methods:' list")
    a.add_argument("--seeds", type=int, help="seeds per method (default: the file's 'seeds', else 1)")
    a.add_argument("--out", help="output folder (default runs/ablate-<model>)")
    a.add_argument("--overwrite", action="store_true", help="re-run finished runs")
    a.add_argument("--only-seeds", help="train only these seed indices (e.g. 2 or 0,1); others are read from "
                   "disk when finished, so processes can split one ablation")
    a.add_argument("overrides", nargs="*", help="key=value overrides; methods=a,b,c")
    a.set_defaults(func=_cmd_ablate)
