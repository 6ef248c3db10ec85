"""`rbnn ablate`: run several methods x seeds at the same budget; write a markdown table and a CSV.

The ablation file is a normal training config plus a top-level ``methods:`` list (and optionally ``seeds:``).
Finished runs (with a summary.json) are reused, so an interrupted ablation continues where it stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import statistics
from pathlib import Path
from typing import Any

import yaml

from .atomic import atomic_write_text
from .config import Config, _apply, apply_model_defaults, apply_overrides, validate
from .errors import ConfigError
from .methods import METHODS
from .train.engine import train

DEFAULT_METHODS = ["fp", "xnor", "irnet", "rbnn-B", "rbnn-BR", "rbnn-BT", "rbnn-BTR", "rbnn"]


def load_ablation(path: str | Path | None, overrides: list[str]) -> tuple[Config, list[str], int | None]:
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"ablation config {p} not found")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"ablation config {p}: expected a mapping")
    methods = data.pop("methods", DEFAULT_METHODS)
    seeds = data.pop("seeds", None)
    rest = []
    for o in overrides:
        key = o.split("=", 1)[0]
        if key == "methods":
            methods = [m for m in o.split("=", 1)[1].split(",") if m]
        else:
            rest.append(o)
    if not isinstance(methods, list) or not methods:
        raise ConfigError("ablation key 'methods': expected a non-empty list of method names")
    cfg = Config()
    for k, v in data.items():
        _apply(cfg, [str(k)], v, str(k))
    apply_overrides(cfg, rest)
    apply_model_defaults(cfg, [*map(str, data), *(o.split("=", 1)[0].strip() for o in rest)])
    return validate(cfg), [str(m) for m in methods], seeds


def run_ablation(cfg: Config, methods: list[str], seeds: int, out: Path, overwrite: bool = False,
                 train_seeds: set[int] | None = None) -> list[dict]:
    """Train every (method, seed index < ``seeds``) run into OUT/METHOD-sSEED (finished runs are reused) and write
    results.md / results.csv. ``train_seeds``: train only these seed indices and take the others from disk when
    present, so several processes can share one ablation (e.g. ``--only-seeds 0,1`` and ``--only-seeds 2``)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"ablation: unknown method(s) {', '.join(unknown)}; available: {', '.join(METHODS)}")
    out.mkdir(parents=True, exist_ok=True)
    results = []
    # seed-major: after the first pass every method has one comparable result, so a cut-short run still answers
    for seed in range(seeds):
        for method in methods:
            run_dir = out / f"{method}-s{seed}"
            summary_file = run_dir / "summary.json"
            if summary_file.is_file() and not (overwrite and (train_seeds is None or seed in train_seeds)):
                summary = json.loads(summary_file.read_text())
            elif train_seeds is not None and seed not in train_seeds:
                continue  # another process trains this one
            else:
                run_cfg = Config(**{**cfg.__dict__})
                run_cfg.method = dataclasses.replace(cfg.method, name=method, recipe=dict(cfg.method.recipe))
                run_cfg.seed = cfg.seed + seed
                run_cfg.out = str(run_dir)
                # an interrupted run continues where it stopped; a finished one is re-run from scratch
                resume = (run_dir / "last.pt").is_file() and not summary_file.is_file()
                summary = train(validate(run_cfg), resume=resume, overwrite=not resume)
            results.append({"method": method, "seed": seed, "test_acc": summary["test_acc"],
                            "best_test_acc": summary["best_test_acc"], "train_seconds": summary["train_seconds"],
                            "train_img_per_s": summary.get("train_img_per_s")})
            write_tables(results, out, cfg)
    return results


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def write_tables(results: list[dict], out: Path, cfg: Config) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(results[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(results)
    atomic_write_text(out / "results.csv", buf.getvalue())
    lines = [f"Ablation: model `{cfg.model}`, data `{cfg.data.name}` (subset {cfg.data.subset or 'all'}), "
             f"{cfg.epochs} epochs, batch {cfg.batch_size}, optimizer {cfg.optim.name} lr {cfg.optim.lr}",
             "", "| method | seeds | final test acc (%) | best test acc (%) | train s/run | train img/s |",
             "|---|---|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in results):
        rs = [r for r in results if r["method"] == method]
        ips = [r["train_img_per_s"] for r in rs if r["train_img_per_s"]]
        lines.append(f"| {method} | {len(rs)} | {_mean_std([r['test_acc'] for r in rs])} | "
                     f"{_mean_std([r['best_test_acc'] for r in rs])} | "
                     f"{statistics.mean(r['train_seconds'] for r in rs):.0f} | "
                     f"{statistics.mean(ips) if ips else float('nan'):.0f} |")
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
