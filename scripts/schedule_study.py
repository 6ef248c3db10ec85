"""Summarise the schedule study (docs/rbnn.md): an ``rbnn ablate`` folder of long runs next to the 2-epoch table.

    python scripts/schedule_study.py RUNS_DIR [--short docs/results/ablation_fashion_r20_10k.csv] [--out FILE.md]

Writes markdown: final test accuracy (mean ± std over seeds, per seed) at the long schedule beside the short
one; paired gaps (same seed) rbnn − irnet, (B+T+R) − (B+T) and irnet-rot − irnet at both; test accuracy per
epoch (mean ± std); and at the last epoch, averaged over layers, the flip rate against the random-rotation
control, cos of the angle to the binary vertex and RBNN's α. Runs still in progress are counted with the
epochs they have and marked, so a cut-short study still reads honestly.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

ORDER = ["fp", "xnor", "rbnn-B", "rbnn-BR", "rbnn-BT", "rbnn-BTR", "rbnn", "irnet", "irnet-rot"]
GAPS = [("rbnn", "irnet"), ("rbnn-BTR", "rbnn-BT"), ("irnet-rot", "irnet"), ("rbnn", "xnor")]


def _float(v: str) -> float | None:
    try:
        return float(v)
    except ValueError:
        return None


def read_runs(runs_dir: Path) -> dict[str, dict[int, list[dict[str, str]]]]:
    """{method: {seed: metrics rows}} for every METHOD-sSEED/metrics.csv under ``runs_dir``."""
    runs: dict[str, dict[int, list[dict[str, str]]]] = {}
    for path in sorted(runs_dir.glob("*-s*/metrics.csv")):
        method, _, seed = path.parent.name.rpartition("-s")
        with path.open() as f:
            rows = list(csv.DictReader(f))
        if rows and seed.isdigit():
            runs.setdefault(method, {})[int(seed)] = rows
    rank = {m: i for i, m in enumerate(ORDER)}
    return dict(sorted(runs.items(), key=lambda kv: (rank.get(kv[0], len(ORDER)), kv[0])))


def read_short(path: Path) -> dict[str, dict[int, float]]:
    """{method: {seed: final test acc}} from an ``rbnn ablate`` results.csv."""
    out: dict[str, dict[int, float]] = {}
    with path.open() as f:
        for r in csv.DictReader(f):
            out.setdefault(r["method"], {})[int(r["seed"])] = float(r["test_acc"])
    return out


def mean_std(values: list[float], scale: float = 100.0) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{scale * values[0]:.2f} (n=1)"
    return f"{scale * statistics.mean(values):.2f} ± {scale * statistics.stdev(values):.2f}"


def layer_mean(row: dict[str, str], metric: str) -> float | None:
    vals = [_float(v) for k, v in row.items() if k.endswith("/" + metric)]
    vals = [v for v in vals if v is not None]
    return statistics.mean(vals) if vals else None


def final_table(long: dict, short: dict, epochs: int) -> list[str]:
    lines = [f"| method | {epochs} epochs: final test acc (%) | per seed | 2 epochs (%) | per seed |",
             "|---|---|---|---|---|"]
    for method, seeds in long.items():
        finals = {s: float(rows[-1]["test_acc"]) for s, rows in sorted(seeds.items())}
        partial = [s for s, rows in seeds.items() if len(rows) < epochs]
        per_seed = " / ".join(f"{100 * v:.2f}" + ("*" if s in partial else "") for s, v in finals.items())
        sh = short.get(method, {})
        lines.append(f"| {method} | {mean_std([v for s, v in finals.items() if s not in partial])} | {per_seed} | "
                     f"{mean_std(list(sh.values()))} | {' / '.join(f'{100 * v:.2f}' for v in sh.values()) or '–'} |")
    return lines


def gap_table(long: dict, short: dict, epochs: int) -> list[str]:
    lines = ["| gap (paired by seed) | 2 epochs (pp) | per seed | "
             f"{epochs} epochs (pp) | per seed |", "|---|---|---|---|---|"]
    for a, b in GAPS:
        cells = []
        for table in (short, {m: {s: float(r[-1]["test_acc"]) for s, r in v.items() if len(r) >= epochs}
                              for m, v in long.items()}):
            sa, sb = table.get(a, {}), table.get(b, {})
            diffs = [sa[s] - sb[s] for s in sorted(set(sa) & set(sb))]
            cells += [mean_std(diffs), " / ".join(f"{100 * d:+.2f}" for d in diffs) or "–"]
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    return lines


def curve_table(long: dict, epochs: int) -> list[str]:
    methods = list(long)
    lines = ["| epoch | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for e in range(epochs):
        cells = []
        for m in methods:
            vals = [float(rows[e]["test_acc"]) for rows in long[m].values() if len(rows) > e]
            cells.append(mean_std(vals).replace(" (n=1)", ""))
        lines.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    return lines


def _last_mean(rows: list[dict[str, str]], key: str, per_layer: bool = False) -> float | None:
    """Mean over ``rows`` of ``key`` (its mean over layers when ``per_layer``); None when no row has it."""
    vals = [layer_mean(r, key) if per_layer else _float(r.get(key, "")) for r in rows]
    vals = [v for v in vals if v is not None]
    return statistics.mean(vals) if vals else None


def diagnostics_table(long: dict, epochs: int) -> list[str]:
    lines = ["| method | flip rate vs init (%) | random-rotation control (%) | cos∠ mixed | cos∠ latent | α |",
             "|---|---|---|---|---|---|"]
    for method, seeds in long.items():
        last = [rows[-1] for rows in seeds.values() if len(rows) >= epochs]  # finished runs only
        if not last:
            continue
        pct = [_last_mean(last, "flip_init"), _last_mean(last, "flip_random_rotation", per_layer=True)]
        raw = [_last_mean(last, k) for k in ("cos_mixed", "cos_latent", "alpha")]
        cells = [("–" if v is None else f"{100 * v:.1f}") for v in pct] + \
                [("–" if v is None else f"{v:.4f}") for v in raw]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs_dir", type=Path)
    p.add_argument("--short", type=Path, default=Path("docs/results/ablation_fashion_r20_10k.csv"))
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    long = read_runs(a.runs_dir)
    if not long:
        print(f"error: {a.runs_dir}: no METHOD-sSEED/metrics.csv found", file=sys.stderr)
        return 1
    short = read_short(a.short) if a.short.is_file() else {}
    text = "\n".join([
        f"Schedule study: {a.runs_dir} ({a.epochs} epochs) beside {a.short} (2 epochs); * = run not finished "
        "(its last epoch so far, left out of the mean)", "", *final_table(long, short, a.epochs), "",
        "Paired gaps (same seed), percentage points:", "", *gap_table(long, short, a.epochs), "",
        "Test accuracy per epoch (%), mean ± std over the seeds that reached it:", "", *curve_table(long, a.epochs), "",
        "Last epoch of the finished runs, mean over binary layers and seeds:", "",
        *diagnostics_table(long, a.epochs), ""])
    if a.out:
        a.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
