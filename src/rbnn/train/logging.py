"""Run logging: metrics.csv (rewritten atomically each epoch, so a crash never truncates it), optional
TensorBoard, and tqdm bars that stay quiet when stdout is not a terminal."""

from __future__ import annotations

import csv
import importlib.util
import io
import sys
from pathlib import Path

from tqdm import tqdm

from ..atomic import atomic_write_text
from ..errors import ConfigError


class MetricsLog:
    """Per-epoch rows, in memory (they go into every checkpoint) and in ``metrics.csv``.

    The loop adds a row, writes the checkpoint, then :meth:`flush` es the CSV: the file is never ahead of
    ``last.pt`` (a failed checkpoint write leaves both at the previous epoch)."""

    def __init__(self, path: Path, rows: list[dict] | None = None, tensorboard_dir: Path | None = None) -> None:
        self.path = path
        self.rows: list[dict] = list(rows or [])
        self.tb = None
        if tensorboard_dir is not None:
            check_tensorboard()
            from torch.utils.tensorboard import SummaryWriter  # the optional extra, checked above

            self.tb = SummaryWriter(str(tensorboard_dir))

    def append(self, row: dict) -> None:
        """Add ``row`` and write the CSV now."""
        self.rows.append(row)
        self.flush()

    def flush(self) -> None:
        """Write every row so far to ``metrics.csv`` (atomically), and the last one to TensorBoard."""
        if not self.rows:
            return
        columns: list[str] = []
        for r in self.rows:
            for k in r:
                if k not in columns:
                    columns.append(k)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        atomic_write_text(self.path, buf.getvalue())
        if self.tb is not None:
            row = self.rows[-1]
            for k, v in row.items():
                if isinstance(v, int | float) and k != "epoch":
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def check_tensorboard() -> None:
    """tensorboard=true needs the optional extra: say so before anything is written."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("config key 'tensorboard': true needs the tensorboard extra "
                          "(pip install 'rbnn[tensorboard]'), which is not installed")


def progress(iterable, total: int, desc: str, enabled: bool | None):
    show = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(iterable, total=total, desc=desc, disable=not show, leave=False, dynamic_ncols=True)
