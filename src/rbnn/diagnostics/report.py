"""`rbnn report RUN_DIR`: PNG plots of a run's diagnostics and an index.html that shows them with the summary.

Plots (paper figure they mirror):
- curves.png          loss and accuracy per epoch
- flip_rate.png       per-layer flip rate vs initial weights, beside the random-rotation control (Fig. 7)
- angle_qerr.png      angle to the binary vertex and quantization error over epochs (Fig. 2)
- alpha.png           RBNN's mean alpha = |sin theta| per layer over epochs (Fig. 4c)
- histograms.png      latent and mixed weight histograms of a few binary layers (Fig. 6)
- surrogates.png      RBNN's F and F' at several t, with STE/ApproxSign/EDE for reference (Fig. 5)
- oscillation.png     epoch-wise and sequential oscillation ratios, when the run logged them (ReBNN)

For an ``rbnn ablate`` folder: compare.png, one curve per method (mean ± std over seeds) of test accuracy,
oscillation ratios, flip rate, cos angle and gamma, beside the results table.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..atomic import atomic_write_text  # noqa: E402
from ..errors import RbnnError  # noqa: E402
from ..functional.surrogates import approx_sign_grad, ede_grad, rbnn_forward, rbnn_grad  # noqa: E402
from ..nn.layers import binary_modules  # noqa: E402
from ..run import load_run_model, read_metrics  # noqa: E402


def _layer_columns(rows: list[dict], metric: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for key in rows[0]:
        if key.endswith("/" + metric):
            out[key[: -len(metric) - 1]] = [r.get(key) for r in rows]
    return out


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(rows, out: Path) -> Path:
    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].plot(ep, [r["train_loss"] for r in rows], "o-", label="train")
    ax[0].plot(ep, [r["test_loss"] for r in rows], "o-", label="test")
    ax[0].set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax[1].plot(ep, [100 * r["train_acc"] for r in rows], "o-", label="train")
    ax[1].plot(ep, [100 * r["test_acc"] for r in rows], "o-", label="test")
    ax[1].set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for a in ax:
        a.legend()
        a.grid(alpha=0.3)
    p = out / "curves.png"
    _save(fig, p)
    return p


def plot_flip_rate(rows, out: Path) -> Path | None:
    flips = _layer_columns(rows, "flip_init")
    if not flips:
        return None
    control = _layer_columns(rows, "flip_random_rotation")
    names = list(flips)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names) + 2), 3.8))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [100 * flips[n][-1] for n in names], 0.4, label="learned (final vs init)")
    if control:
        ax.bar([x + 0.2 for x in xs], [100 * control[n][-1] for n in names], 0.4, label="random rotation control")
    ax.axhline(50, color="gray", lw=0.8, ls="--")
    ax.set_xticks(list(xs), [n.replace(".", "\n", 1) for n in names], fontsize=7, rotation=60)
    ax.set(ylabel="weight flip rate (%)", title="sign flips of binary weights vs initial latent weights")
    ax.legend(fontsize=8)
    p = out / "flip_rate.png"
    _save(fig, p)
    return p


def plot_angle_qerr(rows, out: Path) -> Path | None:
    cos_m, cos_l, q = (_layer_columns(rows, m) for m in ("cos_mixed", "cos_latent", "qerr"))
    if not cos_m:
        return None
    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    deg = lambda c: float(torch.rad2deg(torch.arccos(torch.tensor(min(max(c, -1.0), 1.0)))))  # noqa: E731
    for n in cos_m:
        line, = ax[0].plot(ep, [deg(c) for c in cos_m[n]], "-", lw=1)
        if cos_l[n] != cos_m[n]:
            ax[0].plot(ep, [deg(c) for c in cos_l[n]], ":", lw=1, color=line.get_color())
        ax[1].plot(ep, q[n], "-", lw=1, color=line.get_color(), label=n)
    ax[0].set(xlabel="epoch", ylabel="degrees", title="angle(w, sign w): mixed (solid), unrotated (dotted)")
    ax[1].set(xlabel="epoch", ylabel="||w||² sin²θ / n", title="quantization error")
    if len(q) <= 12:
        ax[1].legend(fontsize=6)
    p = out / "angle_qerr.png"
    _save(fig, p)
    return p


def plot_alpha(rows, out: Path) -> Path | None:
    alphas = _layer_columns(rows, "alpha")
    if not alphas:
        return None
    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for n, v in alphas.items():
        ax.plot(ep, v, "-", lw=1, label=n)
    ax.set(xlabel="epoch", ylabel="mean |sin θ|", title="RBNN alpha per layer", ylim=(0, 1.05))
    if len(alphas) <= 12:
        ax.legend(fontsize=6)
    p = out / "alpha.png"
    _save(fig, p)
    return p


def plot_oscillation(rows, out: Path) -> Path | None:
    ep_ratio, seq = _layer_columns(rows, "osc_epoch"), _layer_columns(rows, "osc_seq")
    if not ep_ratio and not seq:
        return None
    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for n, v in ep_ratio.items():
        ax[0].plot(ep, v, "-", lw=1, label=n)
    for n, v in seq.items():
        ax[1].plot(ep, v, "-", lw=1, label=n)
    ax[0].set(xlabel="epoch", ylabel="fraction", title="epoch-wise oscillation ratio")
    ax[1].set(xlabel="epoch", ylabel="fraction", title="sequential (per-iteration) oscillation ratio")
    p = out / "oscillation.png"
    _save(fig, p)
    return p


def plot_histograms(run_dir: Path, out: Path, max_layers: int = 4) -> Path | None:
    try:
        model, _, _ = load_run_model(run_dir)
    except RbnnError:
        return None
    layers = binary_modules(model)
    if not layers:
        return None
    pick = layers if len(layers) <= max_layers else [layers[i * (len(layers) - 1) // (max_layers - 1)]
                                                      for i in range(max_layers)]
    fig, axes = plt.subplots(1, len(pick), figsize=(3.2 * len(pick), 3.2), squeeze=False)
    with torch.no_grad():
        for ax, (name, m) in zip(axes[0], pick):
            latent = m.latent_weight().flatten()
            mixed = m.mixed_weight().flatten()
            ax.hist(latent.numpy(), bins=80, alpha=0.6, density=True, label="latent")
            if not torch.equal(latent, mixed):
                ax.hist(mixed.numpy(), bins=80, alpha=0.6, density=True, label="mixed (rotated)")
            ax.set_title(name, fontsize=8)
            ax.legend(fontsize=6)
    p = out / "histograms.png"
    _save(fig, p)
    return p


def plot_surrogates(out: Path) -> Path:
    x = torch.linspace(-2, 2, 801)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for t in (0.1, 0.5, 1.0, 3.0, 10.0):
        k = max(1 / t, 1)
        ax[0].plot(x, rbnn_forward(x, t, k), lw=1, label=f"t={t}")
        ax[1].plot(x, rbnn_grad(x, t, k), lw=1, label=f"RBNN t={t}")
    ax[1].plot(x, approx_sign_grad(x), "k--", lw=1, label="ApproxSign")
    ax[1].plot(x, ede_grad(x, 1.0, 1.0), "k:", lw=1, label="EDE t=1")
    ax[1].plot(x, (x.abs() <= 1).float(), color="gray", lw=1, label="clipped STE")
    ax[0].set(title="RBNN F(x) (forward uses exact sign)", xlabel="x", ylim=(-1.6, 1.6))
    ax[1].set(title="F'(x): surrogate gradients", xlabel="x", ylim=(0, 5))
    ax[0].legend(fontsize=7)
    ax[1].legend(fontsize=6)
    p = out / "surrogates.png"
    _save(fig, p)
    return p


def _method_runs(ablation_dir: Path) -> dict[str, list[list[dict]]]:
    """{method: [metrics rows of each seed's run]} of an ``rbnn ablate`` folder (runs named METHOD-sSEED)."""
    runs: dict[str, list[list[dict]]] = {}
    for metrics in sorted(ablation_dir.glob("*-s*/metrics.csv")):
        method = metrics.parent.name.rsplit("-s", 1)[0]
        rows = read_metrics(metrics)
        if rows:
            runs.setdefault(method, []).append(rows)
    return runs


def _mean_curve(seed_rows: list[list[dict]], key: str) -> tuple[list[int], list[float], list[float]] | None:
    """Epochs, mean and std over seeds of column ``key`` (only epochs every seed reached and logged)."""
    if not all(key in rows[0] for rows in seed_rows):
        return None
    n = min(len(rows) for rows in seed_rows)
    vals = torch.tensor([[float(rows[i][key]) for i in range(n)] for rows in seed_rows], dtype=torch.float64)
    std = vals.std(0) if len(seed_rows) > 1 else torch.zeros(n, dtype=torch.float64)
    return [int(seed_rows[0][i]["epoch"]) for i in range(n)], vals.mean(0).tolist(), std.tolist()


def plot_ablation_compare(ablation_dir: Path, out: Path) -> list[Path]:
    """One curve per method (mean over seeds, band = ±1 std): test accuracy, and the model-mean oscillation
    ratios and RBNN diagnostics wherever runs logged them."""
    runs = _method_runs(ablation_dir)
    panels = [("test_acc", "test accuracy", 100.0), ("osc_seq", "sequential oscillation ratio", 1.0),
              ("osc_epoch", "epoch-wise oscillation ratio", 1.0), ("flip_init", "flip rate vs initial weights", 1.0),
              ("cos_mixed", "cos angle(w, sign w) of the binarized weight", 1.0), ("gamma_mean", "mean gamma", 1.0)]
    panels = [p for p in panels if any(_mean_curve(r, p[0]) for r in runs.values())]
    if not panels:
        return []
    cols = min(3, len(panels))
    rows_n = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.6 * cols, 3.6 * rows_n), squeeze=False)
    color = {m: f"C{i % 10}" for i, m in enumerate(runs)}  # one color per method across panels
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (key, title, mul) in zip(axes.flat, panels):
        for method, seed_rows in runs.items():
            c = _mean_curve(seed_rows, key)
            if c is None:
                continue
            ep, mean, std = c
            m = [mul * v for v in mean]
            ax.plot(ep, m, "o-", ms=3, lw=1.2, color=color[method], label=f"{method} (n={len(seed_rows)})")
            ax.fill_between(ep, [a - mul * b for a, b in zip(m, std)], [a + mul * b for a, b in zip(m, std)],
                            color=color[method], alpha=0.15)
        ax.set(xlabel="epoch", title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    p = out / "compare.png"
    _save(fig, p)
    return [p]


def write_ablation_report(ablation_dir: str | Path, out: str | Path | None = None) -> Path:
    """Comparison plots and index.html for an ``rbnn ablate`` folder (results.md + one run per method/seed)."""
    ablation_dir = Path(ablation_dir)
    out = Path(out) if out else ablation_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    plots = plot_ablation_compare(ablation_dir, out)
    table = (ablation_dir / "results.md").read_text() if (ablation_dir / "results.md").is_file() else ""
    return _write_index(out, f"rbnn ablation: {ablation_dir.name}", f"<pre>{html.escape(table)}</pre>", plots)


def _write_index(out: Path, title: str, head_html: str, plots: list[Path]) -> Path:
    """index.html: a title, ``head_html`` (summary table), then every plot."""
    imgs = "".join(f'<h2>{p.stem}</h2><img src="{p.name}" style="max-width:100%">' for p in plots)
    name = html.escape(title)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{name}</title></head><body><h1>{name}</h1>"
            f"{head_html}{imgs}</body></html>")
    index = out / "index.html"
    atomic_write_text(index, page)
    return index


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the plots and index.html into ``out`` (default RUN_DIR/report); returns the index path.
    An ``rbnn ablate`` folder (it has results.csv) gets the cross-method comparison report instead."""
    run_dir = Path(run_dir)
    if (run_dir / "results.csv").is_file() and not (run_dir / "metrics.csv").is_file():
        return write_ablation_report(run_dir, out)
    metrics = run_dir / "metrics.csv"
    if not metrics.is_file():
        raise RbnnError(f"{run_dir}: no metrics.csv (is this an rbnn run directory?)")
    rows = read_metrics(metrics)
    if not rows:
        raise RbnnError(f"{metrics} has no epochs yet")
    out = Path(out) if out else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    plots = [plot_curves(rows, out), plot_flip_rate(rows, out), plot_angle_qerr(rows, out),
             plot_alpha(rows, out), plot_oscillation(rows, out), plot_histograms(run_dir, out),
             plot_surrogates(out)]
    plots = [p for p in plots if p is not None]
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    rows_html = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                        for k, v in summary.items() if not isinstance(v, list | dict))
    return _write_index(out, f"rbnn report: {run_dir.name}", f"<table border=1 cellpadding=3>{rows_html}</table>",
                        plots)
