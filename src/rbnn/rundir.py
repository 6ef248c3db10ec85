"""Run directories: where a run may write, and what ``--overwrite`` may delete.

A directory becomes a run directory when rbnn creates it for a run: the first file written is the marker
``.rbnn-run``. ``--overwrite`` replaces only a marked directory, and even there deletes only the files a run
writes (:data:`RUN_FILES` and the temp files of its atomic writes); anything else in it is left alone.
It never touches the current directory, a parent of it, the home directory, the file system root, or a
data root (or a parent of one), marked or not.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from . import __version__
from .errors import RbnnError

log = logging.getLogger("rbnn")

MARKER = ".rbnn-run"
# every name a run (train, report, export into the run directory) writes at the top of its directory
RUN_FILES = frozenset({
    MARKER, "config.yaml", "metrics.csv", "last.pt", "best.pt", "summary.json", "model.rbnn", "tb",
    "index.html", "curves.png", "flip_rate.png", "angle_qerr.png", "alpha.png", "histograms.png",
    "surrogates.png", "oscillation.png", "report",
})


class RunDirError(RbnnError):
    pass


def is_run_file(name: str) -> bool:
    """A name rbnn writes in a run directory: one of RUN_FILES or the temp file of an atomic write of one."""
    if name in RUN_FILES:
        return True
    return name.endswith(".tmp") and any(name.startswith(f".{f}.") for f in RUN_FILES)


def is_marked(run_dir: Path) -> bool:
    return (run_dir / MARKER).is_file()


def _protected(run_dir: Path, data_roots: Iterable[str | Path]) -> str | None:
    """Why ``run_dir`` may never be replaced, or None."""
    target = run_dir.resolve()
    cwd = Path.cwd().resolve()
    if target == Path(target.anchor):
        return "it is the file system root"
    if target == cwd:
        return "it is the current directory"
    if target in cwd.parents:
        return "it is a parent of the current directory"
    home = Path.home().resolve()
    if target == home or target in home.parents:
        return "it is the home directory or a parent of it"
    for root in data_roots:
        r = Path(root).resolve()
        if target == r or target in r.parents:
            return f"it holds the data root {root}"
    return None


def _check_writable(run_dir: Path) -> None:
    """The directory can be created (or exists) and written to, and its name fits the file system."""
    for part in run_dir.parts:
        if len(os.fsencode(part)) > 255:
            raise RunDirError(f"run directory {str(run_dir)[:60]}...: a path component is longer than 255 bytes")
    if len(os.fsencode(run_dir.absolute())) > 4000:
        raise RunDirError(f"run directory {str(run_dir)[:60]}...: the path is longer than 4000 bytes")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} exists and is not a directory")
    existing = run_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RunDirError(f"run directory {run_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(f"run directory {run_dir}: {existing} is not writable")


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool, data_roots: Iterable[str | Path] = ()) -> None:
    """Raise unless this run may use ``run_dir`` as asked; changes nothing on disk."""
    _check_writable(run_dir)
    if resume:
        if not (run_dir / "last.pt").is_file():
            raise RunDirError(f"cannot resume: {run_dir / 'last.pt'} not found")
        return
    occupied = run_dir.exists() and any(run_dir.iterdir())
    if not occupied:
        return
    if not overwrite:
        raise RunDirError(f"run directory {run_dir} already exists and is not empty; "
                          "pass --resume to continue it or --overwrite to replace it")
    why = _protected(run_dir, data_roots)
    if why is not None:
        raise RunDirError(f"--overwrite refused for {run_dir}: {why}; choose another out=")
    if not is_marked(run_dir):
        raise RunDirError(f"--overwrite refused for {run_dir}: it is not an rbnn run directory (no {MARKER} "
                          "file); rbnn replaces only directories it created. Choose another out=")


def create_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Rank 0 only, after :func:`check_run_dir`: create and mark the directory; with ``overwrite``, first delete
    what an earlier run wrote there (nothing else); on resume, drop temp files a killed writer left behind."""
    if resume:
        for tmp in run_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        return
    if overwrite and run_dir.is_dir() and is_marked(run_dir):
        _delete_run_files(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not is_marked(run_dir):
        (run_dir / MARKER).write_text(json.dumps({"rbnn": __version__, "created": time.time()}) + "\n")


def _delete_run_files(run_dir: Path) -> None:
    kept = []
    for entry in run_dir.iterdir():
        if entry.name == MARKER:
            continue
        if not is_run_file(entry.name):
            kept.append(entry.name)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    if kept:
        log.warning("--overwrite kept %d file(s) in %s that rbnn did not write: %s", len(kept), run_dir,
                    ", ".join(sorted(kept)[:5]) + (" ..." if len(kept) > 5 else ""))


def remove_if_no_result(run_dir: Path) -> bool:
    """Undo :func:`create_run_dir` for a run that failed before its first checkpoint, so rerunning the same
    command is not blocked by a directory that holds no result. Only a marked directory holding nothing but
    run files (and no checkpoint) is removed. Returns whether it was."""
    try:
        names = {e.name for e in run_dir.iterdir()}
    except OSError:
        return False
    if MARKER not in names or names & {"last.pt", "best.pt", "summary.json"} or not all(map(is_run_file, names)):
        return False
    _delete_run_files(run_dir)
    (run_dir / MARKER).unlink(missing_ok=True)
    try:
        os.rmdir(run_dir)
    except OSError:
        return False
    return True
