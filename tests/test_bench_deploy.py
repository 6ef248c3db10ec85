"""benchmarks/bench_deploy.py's worker protocol: an engine in its own spawned process answers timed blocks and
the profile, and stops cleanly; a worker that cannot load its engine is an error with no process left behind."""

from __future__ import annotations

import importlib
import multiprocessing
import sys
from pathlib import Path

import pytest
from test_deploy_helpers import tiny

import rbnn.deploy as deploy

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """The script as a module; benchmarks/ stays on sys.path so spawned workers (which get this sys.path) can
    import it and its ``machine`` helper."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("bench_deploy")
    finally:
        sys.path.remove(str(BENCHMARKS))


def _artifacts(bench, tmp: Path, rbnn_path: Path):
    return bench.Artifacts("unused", rbnn_path, tmp / "fp32.onnx", tmp / "int8.onnx", tmp / "fp32.pt")


def test_packed_worker_times_profiles_and_stops(bench, tmp_path: Path) -> None:
    path = tmp_path / "tiny.rbnn"
    deploy.export(tiny("xnor"), path, input_shape=(3, 32, 32))
    with bench.Workers(_artifacts(bench, tmp_path, path), threads=1, engines=("packed",)) as w:
        proc = w.procs["packed"]
        secs = w.ask("packed", "time", 2, 3)
        medians, per_round = w.time(batch=2, repeats=2, rounds=3)
        split = w.profile(batch=1, repeats=2)
    assert len(secs) == 3 and all(0 < s < 10 for s in secs)
    assert list(medians) == ["packed"] and 0 < medians["packed"] < 10
    assert len(per_round) == 3 and all(list(r) == ["packed"] and 0 < r["packed"] < 10 for r in per_round)
    assert "binary conv" in split and sum(split.values()) > 0
    assert not proc.is_alive() and proc.exitcode == 0  # stopped by its command, not terminated
    assert multiprocessing.active_children() == []


def test_worker_that_cannot_load_is_an_error_and_exits(bench, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="packed worker failed"):
        with bench.Workers(_artifacts(bench, tmp_path, tmp_path / "missing.rbnn"), threads=1, engines=("packed",)):
            pass
    assert multiprocessing.active_children() == []
