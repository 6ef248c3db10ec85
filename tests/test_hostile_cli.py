"""Hostile command lines, config files, checkpoints and disk faults.

Every case is refused with exactly one ``error:`` line that names the culprit (key, file or directory), a
non-zero exit status, and nothing on disk changes except inside the run's own directory. Commands run
in-process (``rbnn.cli.main``) with the working directory set to the test's temp dir.
"""

import contextlib
import errno
import gzip
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from rbnn import atomic
from rbnn.cli import main
from rbnn.config import load_config
from rbnn.train import engine

SYN = ["threads=1", "data=synthetic", "data.subset=128", "data.test_subset=64", "batch_size=64", "export=false",
       "model=smallnet", "method=xnor", "diagnostics=false", "device=cpu", "progress=false"]


def _tree(d: Path) -> dict[str, bytes | None]:
    """Every path under ``d`` with its bytes (None for directories): what 'nothing was touched' compares."""
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


def _refused(capsys, *argv, culprit: str, code: int = 2) -> str:
    rc = main(list(argv))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == code, err
    assert len(lines) == 1 and len([ln for ln in err.splitlines() if ln.strip()]) <= 2, err
    assert culprit in lines[0], lines[0]
    if os.environ.get("RBNN_HOSTILE_LOG"):  # collect the messages for docs/reliability.md
        with open(os.environ["RBNN_HOSTILE_LOG"], "a") as f:
            f.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '').split(' ')[0]}\t{lines[0]}\n")
    return lines[0]


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- config values torch would reject later (each refused before anything is written) ---------------------
@pytest.mark.parametrize("override,culprit", [
    ("device=tpu", "device"), ("device=cuda:x", "device"), ("device=", "device"),
    ("optim.betas=[1.5,0.9]", "optim.betas"), ("optim.betas=[0.9,-0.1]", "optim.betas"),
    ("optim.betas=[0.9]", "optim.betas"), ("optim.momentum=-1", "optim.momentum"),
    ("seed=-1", "seed"), ("seed=99999999999999999999999", "seed"), ("checkpoint_every=0", "checkpoint_every"),
    ("threads=-2", "threads"), ("schedule.gamma=0", "schedule.gamma"), ("schedule.min_lr=-1", "schedule.min_lr"),
    ("data.workers=-2", "data.workers"), ("data.image_size=-5", "data.image_size"),
    ("optim.nesterov=true", "optim.nesterov"), ("epochs=0", "epochs"), ("batch_size=0", "batch_size"),
    ("eval_batch_size=-1", "eval_batch_size"), ("optim.lr=0", "optim.lr"), ("optim.weight_decay=-1", "optim"),
    ("amp=fp8", "amp"), ("model_init=xavier", "model_init"), ("schedule=exp", "schedule.name"),
    ("optim=rmsprop", "optim.name"), ("method=nope", "nope"), ("model=nope", "nope"),
    ("distill.weight=2", "distill.weight"), ("distill.temperature=0", "distill.temperature"),
    ("data.subset=-3", "data.subset"), ("batch_size=1.5", "batch_size"), ("export=perhaps", "export"),
    ("optim.lr=[1]", "optim.lr"), ("no_such_key=1", "no_such_key"), ("optim.lr.x=1", "optim.lr.x"),
    ("schedule.warmup_epochs=-1", "schedule.warmup_epochs"),
])
def test_bad_value_is_one_line_and_writes_nothing(capsys, here, override, culprit):
    _refused(capsys, "train", *SYN, "out=run", override, culprit=culprit)
    assert _tree(here) == {}


@pytest.mark.parametrize("content,culprit", [
    (os.urandom(200) + b"\xff\xfe", "not UTF-8"),
    (b"- a\n- b\n", "mapping"),
    (b"model: [unclosed\n", "not valid YAML"),
    (b"epochs: many\n", "epochs"),
    (b"optim:\n  lr: -1\n", "optim.lr"),
    (b"modle: smallnet\n", "modle"),
])
def test_bad_config_file(capsys, here, content, culprit):
    (here / "c.yaml").write_bytes(content)
    before = _tree(here)
    _refused(capsys, "train", "--config", "c.yaml", *SYN, "out=run", culprit=culprit)
    assert _tree(here) == before


def test_missing_config_file(capsys, here):
    _refused(capsys, "train", "--config", "nope.yaml", *SYN, "out=run", culprit="nope.yaml")
    assert _tree(here) == {}


@pytest.mark.skipif(shutil.which("tensorboard") is not None, reason="tensorboard is installed here")
def test_missing_tensorboard_extra_before_the_run_directory(capsys, here):
    pytest.importorskip("torch")
    with contextlib.suppress(ImportError):
        import tensorboard  # noqa: F401
        pytest.skip("tensorboard is installed here")
    _refused(capsys, "train", *SYN, "out=run", "tensorboard=true", culprit="tensorboard")
    assert _tree(here) == {}


# --- run directories -----------------------------------------------------------------------------------------
def test_out_under_a_file(capsys, here):
    (here / "afile").write_text("x")
    _refused(capsys, "train", *SYN, "out=afile/run", culprit="afile")
    assert _tree(here) == {"afile": b"x"}


def test_out_is_a_file(capsys, here):
    (here / "afile").write_text("x")
    _refused(capsys, "train", *SYN, "out=afile", culprit="afile")


@pytest.mark.parametrize("name", ["a" * 300, "d/" + "b" * 256])
def test_out_too_long(capsys, here, name):
    _refused(capsys, "train", *SYN, f"out={name}", culprit="longer than 255 bytes")
    assert _tree(here) == {}


@contextlib.contextmanager
def _tmpfs(where: Path, size: str, *options: str):
    """A small tmpfs at ``where`` (root only); skips the test where mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    opts = ",".join((f"size={size}", *options))
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:
        yield None
        return
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_out_on_a_read_only_file_system(capsys, here):
    with _tmpfs(here / "ro", "1m", "ro") as mnt:
        if mnt is None:
            pytest.skip("cannot mount a read-only tmpfs here")
        _refused(capsys, "train", *SYN, f"out={mnt / 'run'}", culprit="not writable")


def test_out_in_a_read_only_directory_as_a_user(capsys, here):
    if os.geteuid() == 0:
        pytest.skip("root writes through directory permissions (the read-only file system case covers root)")
    (here / "ro").mkdir(mode=0o555)
    _refused(capsys, "train", *SYN, "out=ro/run", culprit="not writable")


# --- data ----------------------------------------------------------------------------------------------------
def _write_idx(path: Path, arr: np.ndarray) -> None:
    magic = 0x0803 if arr.ndim == 3 else 0x0801
    raw = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw))


@pytest.mark.parametrize("n_train,n_test,extra,culprit", [(0, 8, [], "0 training"), (8, 0, [], "0 test"),
                                                          (8, 8, ["data.subset=100"], "subset")])
def test_dataset_without_enough_images(capsys, here, n_train, n_test, extra, culprit):
    root = here / "fm"
    root.mkdir()
    for split, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(root / f"{split}-images-idx3-ubyte.gz", np.zeros((n, 28, 28)))
        _write_idx(root / f"{split}-labels-idx1-ubyte.gz", np.zeros(n))
    before = _tree(here)
    _refused(capsys, "train", "model=smallnet", "method=xnor", "threads=1", "export=false", "data=idx",
             f"data.root={root}", "batch_size=4", "out=run", *extra, culprit=culprit)
    assert _tree(here) == before


# --- checkpoints ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def half_run(tmp_path_factory) -> Path:
    """Epoch 1 of a 2-epoch xnor run: a run directory that --resume continues."""
    out = tmp_path_factory.mktemp("ck") / "half"
    engine.train(load_config(None, [*SYN, "epochs=2", "seed=1", f"out={out}"]), stop_after_epochs=1)
    return out


@pytest.fixture(scope="module")
def done_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ck") / "done"
    engine.train(load_config(None, [*SYN, "epochs=1", "seed=1", f"out={out}"]))
    return out


def _copy(src: Path, here: Path, edit=None) -> Path:
    run = here / "run"
    shutil.copytree(src, run)
    if edit is not None:
        state = torch.load(run / "last.pt", weights_only=True)
        edit(state)
        torch.save(state, run / "last.pt")
    return run


@pytest.mark.parametrize("override,culprit", [
    ("batch_size=32", "batch_size"), ("optim.lr=0.01", "optim.lr"), ("data.subset=64", "data.subset"),
    ("seed=2", "seed"), ("schedule=constant", "schedule.name"), ("method.act_estimator=ste", "act_estimator"),
])
def test_resume_with_a_different_config_is_refused(capsys, here, half_run, override, culprit):
    run = _copy(half_run, here)
    before = _tree(here)
    msg = _refused(capsys, "train", "--resume", *SYN, "epochs=2", "seed=1", f"out={run}", override,
                   culprit=culprit)
    assert "config differs" in msg
    assert _tree(here) == before


def test_resume_may_change_where_it_runs(capsys, here, half_run):
    run = _copy(half_run, here)
    rc = main(["train", "--resume", *SYN, "epochs=2", "seed=1", f"out={run}", "threads=2", "checkpoint_every=3"])
    assert rc == 0, capsys.readouterr().err
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2


def test_resume_of_a_finished_run_says_so_and_changes_nothing(capsys, here, done_run):
    run = _copy(done_run, here)
    before = _tree(here)
    _refused(capsys, "train", "--resume", *SYN, "epochs=1", "seed=1", f"out={run}", culprit="finished")
    assert _tree(here) == before


def _nan_weights(state):
    k = next(k for k, v in state["model"].items() if v.is_floating_point() and v.dim() > 1)
    state["model"][k] = torch.full_like(state["model"][k], float("nan"))


def test_resume_from_nan_weights(capsys, here, half_run):
    run = _copy(half_run, here, _nan_weights)
    before = _tree(here)
    _refused(capsys, "train", "--resume", *SYN, "epochs=2", "seed=1", f"out={run}", culprit="loss became nan")
    assert _tree(here) == before


def test_export_of_nan_weights_is_refused(capsys, here, half_run):
    run = _copy(half_run, here, _nan_weights)
    _refused(capsys, "export", str(run), "-o", "m.rbnn", culprit="NaN or inf")
    assert not (here / "m.rbnn").exists() and not list(here.glob(".m.rbnn*"))


def _set(key, value):
    def edit(state):
        state[key] = value
    return edit


def _drop(key):
    def edit(state):
        del state[key]
    return edit


@pytest.mark.parametrize("edit,culprit", [
    (_set("config", "smallnet"), "'config'"), (_set("config", {"epochs": "x"}), "config"),
    (_drop("epoch"), "'epoch'"), (_set("epoch", "1"), "'epoch'"), (_set("epoch", -1), "'epoch'"),
    (_set("rng", [1, 2, 3]), "'rng'"), (_set("rng", torch.zeros(3)), "'rng'"), (_set("metrics", {}), "'metrics'"),
    (_set("callbacks", None), "'callbacks'"), (_set("best_acc", "high"), "'best_acc'"),
    (_drop("optimizer"), "'optimizer'"), (_set("in_epoch", {"batches_done": "3"}), "'in_epoch'"),
    (_set("model", {"conv1.weight": [1.0]}), "conv1.weight"), (_set("dataset", "fm"), "'dataset'"),
])
def test_resume_from_a_malformed_checkpoint(capsys, here, half_run, edit, culprit):
    run = _copy(half_run, here, edit)
    before = _tree(here)
    _refused(capsys, "train", "--resume", *SYN, "epochs=2", "seed=1", f"out={run}", culprit=culprit)
    assert _tree(here) == before


@pytest.mark.parametrize("edit,culprit", [
    (_set("config", ["a"]), "'config'"), (_set("dataset", {"num_classes": "ten"}), "num_classes"),
    (_set("dataset", {"num_classes": 10, "input_size": [1, 28]}), "input_size"),
])
def test_eval_of_a_malformed_checkpoint(capsys, here, half_run, edit, culprit):
    run = _copy(half_run, here, edit)
    _refused(capsys, "eval", str(run), culprit=culprit)


# --- export / predict / verify arguments ---------------------------------------------------------------------
def test_export_into_a_missing_directory(capsys, here, done_run):
    _refused(capsys, "export", str(done_run), "-o", "nowhere/m.rbnn", culprit="nowhere")
    assert _tree(here) == {}


@pytest.mark.parametrize("fmt", ["rbnn", "onnx"])
def test_export_onto_a_directory(capsys, here, done_run, fmt):
    (here / "d").mkdir()
    _refused(capsys, "export", str(done_run), "-o", "d", "--format", fmt, culprit="is a directory")
    assert _tree(here) == {"d": None}


@pytest.mark.parametrize("argv,culprit", [
    (["--batch-size", "0"], "--batch-size"), (["--batch-size", "-5"], "--batch-size"), (["--limit", "-1"], "--limit"),
])
def test_predict_bad_arguments(capsys, here, done_run, argv, culprit):
    from rbnn.deploy import export

    model, _, _ = engine.load_run_model(done_run)
    export(model.eval(), here / "m.rbnn", input_shape=(1, 28, 28))
    _refused(capsys, "predict", "m.rbnn", "--data", "synthetic", *argv, culprit=culprit)


def test_verify_zero_images(capsys, here, done_run):
    _refused(capsys, "verify", str(done_run), "--images", "0", culprit="--images")


# --- disk faults ---------------------------------------------------------------------------------------------
def _enospc_on_fsync(monkeypatch):
    def fail(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(atomic.os, "fsync", fail)


def test_disk_full_while_writing_the_first_checkpoint(capsys, here, monkeypatch):
    """On a 400 KB tmpfs (root) or with ENOSPC injected: one line, no temp file, metrics.csv not ahead."""
    with _tmpfs(here / "small", "400k") as mnt:
        if mnt is None:
            _enospc_on_fsync(monkeypatch)
            mnt = here / "small"
        run = mnt / "run"
        _refused(capsys, "train", *SYN, "epochs=1", f"out={run}", culprit="No space left on device")
        assert not list(run.glob(".*.tmp")) if run.exists() else True
        assert not (run / "metrics.csv").exists() and not (run / "last.pt").exists()


def test_disk_full_keeps_the_previous_checkpoint_and_metrics(capsys, here, half_run, monkeypatch):
    run = _copy(half_run, here)
    before = {n: (run / n).read_bytes() for n in ("last.pt", "metrics.csv")}
    _enospc_on_fsync(monkeypatch)
    _refused(capsys, "train", "--resume", *SYN, "epochs=2", "seed=1", f"out={run}",
             culprit="No space left on device")
    assert {n: (run / n).read_bytes() for n in ("last.pt", "metrics.csv")} == before
    assert not list(run.glob(".*.tmp"))


def test_disk_full_while_exporting(capsys, here, done_run, monkeypatch):
    with _tmpfs(here / "small", "64k") as mnt:
        if mnt is None:
            _enospc_on_fsync(monkeypatch)
            mnt = here / "small"
        _refused(capsys, "export", str(done_run), "-o", str(mnt / "m.rbnn"), culprit="No space left on device")
        assert list(mnt.iterdir()) == []
