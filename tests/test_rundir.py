"""--overwrite deletes only what an rbnn run wrote: never a user's files, the current directory, a parent of it,
the home directory or a data root. A run that fails before its first checkpoint leaves nothing behind."""

import os
from pathlib import Path

import pytest

from rbnn.cli import main
from rbnn.rundir import MARKER, is_run_file

SYN = ["threads=1", "data=synthetic", "data.subset=128", "data.test_subset=64", "batch_size=64",
       "export=false", "model=smallnet", "method=xnor", "diagnostics=false", "device=cpu", "epochs=1",
       "progress=false"]


def _train(capsys, *argv) -> tuple[int, str]:
    code = main(["train", *argv, *SYN])
    return code, capsys.readouterr().err


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _refused(capsys, out, *extra, why: str) -> None:
    code, err = _train(capsys, "--overwrite", f"out={out}", *extra)
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert code == 2 and len(lines) == 1, err
    assert "--overwrite refused" in lines[0] and why in lines[0], lines[0]


def test_user_directory_is_not_deleted(capsys, tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work")
    (d / "config.yaml").write_text("my own config")  # a name rbnn also writes: still not rbnn's
    before = _files(d)
    _refused(capsys, d, why="not an rbnn run directory")
    assert _files(d) == before


def test_current_directory_is_never_replaced_even_if_marked(capsys, tmp_path, monkeypatch):
    (tmp_path / MARKER).write_text("{}")
    (tmp_path / "notes.txt").write_text("keep")
    monkeypatch.chdir(tmp_path)
    _refused(capsys, ".", why="current directory")
    _refused(capsys, tmp_path, why="current directory")
    assert (tmp_path / "notes.txt").read_text() == "keep"


def test_parent_of_current_directory_is_refused(capsys, tmp_path, monkeypatch):
    (tmp_path / MARKER).write_text("{}")
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    _refused(capsys, "../..", why="parent of the current directory")
    assert sub.is_dir()


def test_home_directory_is_refused(capsys, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / MARKER).write_text("{}")
    (home / ".bashrc").write_text("x")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    _refused(capsys, home, why="home directory")
    assert (home / ".bashrc").is_file()


@pytest.mark.parametrize("where", ["root", "parent"])
def test_data_root_is_refused(capsys, tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data" / "fm"
    data.mkdir(parents=True)
    (data / "train-images-idx3-ubyte.gz").write_bytes(b"images")
    out = data if where == "root" else data.parent
    (out / MARKER).write_text("{}")  # even a marked directory that holds the data is never replaced
    before = _files(tmp_path / "data")
    code = main(["train", "--overwrite", f"out={out}", "data=idx", f"data.root={data}", "threads=1",
                 "export=false", "model=smallnet", "epochs=1"])
    err = capsys.readouterr().err
    assert code == 2 and "holds the data root" in err, err
    assert _files(tmp_path / "data") == before


def test_overwrite_of_a_run_replaces_only_run_files(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert _train(capsys, f"out={out}")[0] == 0
    assert (out / MARKER).is_file() and (out / "last.pt").is_file()
    (out / "my_notes.md").write_text("keep me")
    (out / ".last.pt.abc123.tmp").write_bytes(b"stale temp")
    old = (out / "last.pt").read_bytes()
    code, err = _train(capsys, "--overwrite", f"out={out}", "seed=5")
    assert code == 0, err
    assert (out / "my_notes.md").read_text() == "keep me"
    assert not (out / ".last.pt.abc123.tmp").exists()
    assert (out / "last.pt").read_bytes() != old  # a new run (other seed) replaced the old one


def test_failed_run_does_not_block_rerunning(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "diverged"
    code, err = _train(capsys, f"out={out}", "optim.lr=inf")
    assert code != 0 and "loss became nan" in err.lower(), err
    assert not out.exists()
    code, err = _train(capsys, f"out={out}")  # the same command without the bad lr, no --overwrite needed
    assert code == 0, err


@pytest.mark.parametrize("name,expected", [
    ("last.pt", True), (".last.pt.x1y2.tmp", True), ("metrics.csv", True), ("tb", True), (MARKER, True),
    ("last.pt.bak", False), (".bashrc", False), ("notes.tmp", False), (".notes.x.tmp", False), ("data", False),
])
def test_is_run_file(name, expected):
    assert is_run_file(name) is expected


def test_marker_is_written_first_and_run_dir_is_marked(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _train(capsys, f"out={tmp_path / 'r'}")[0] == 0
    assert all(is_run_file(p.name) for p in (tmp_path / "r").iterdir())
    assert os.path.getsize(tmp_path / "r" / MARKER) > 0
