"""DDP on CPU (gloo, 2 real processes): rotation computed on rank 0 and broadcast, equal to a single process.

What is compared, and why. With BatchNorm in train mode each rank normalizes its own half-batch, so after any
DDP training step the weights legitimately differ from a single process that sees the whole global batch
(SyncBatchNorm would remove that, but torch's SyncBatchNorm does not run on CPU). The RBNN rotation, though,
is computed at epoch start from the weights alone. So: train epoch 1 in one process (stop after it), copy
the run, and continue epoch 2 both in one process and in 2 DDP processes from the *same* weights. The R1/R2
computed at the start of epoch 2 must then be identical on both ranks (broadcast from rank 0) and equal to
the single-process ones (<= 1e-6; they come from the same code on the same weights). The metrics every rank
returns (all-reduced) must equal what rank 0 wrote to metrics.csv, and only rank 0 writes files.
"""

import csv
import json
import math
import os
import shutil
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from rbnn.config import load_config
from rbnn.errors import ConfigError
from rbnn.train import engine
from rbnn.train.distributed import wrap_ddp
from rbnn.train.launch import child_command, spawn

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["threads=1", "data=synthetic", "data.subset=256", "data.test_subset=128", "batch_size=64",
          "export=false", "model=smallnet", "method=rbnn", "seed=5", "epochs=2", "device=cpu",
          "diagnostics=false", "deterministic=true"]

WORKER = textwrap.dedent('''
    import json, os, sys
    import torch
    from rbnn.config import load_config
    from rbnn.train import engine

    out, mode, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    rank = os.environ.get("RANK", "0")

    class DumpRotation(engine.Callback):
        def __init__(self, model):
            self.model = model
        def on_epoch_end(self, epoch):
            rs = {n: b.detach().cpu().clone() for n, b in self.model.named_buffers()
                  if n.endswith(("R1", "R2", "running_mean", "running_var"))}
            torch.save(rs, os.path.join(out, f"R_rank{rank}_epoch{epoch}.pt"))
            return {}

    original = engine.build_callbacks
    engine.build_callbacks = lambda model, cfg: original(model, cfg) + [DumpRotation(model)]
    summary = engine.train(load_config(None, overrides), resume=(mode == "resume"))
    with open(os.path.join(out, f"summary_rank{rank}.json"), "w") as f:
        json.dump(summary, f, default=str)
''')


def _rows(path):
    return list(csv.DictReader(open(path)))


def test_ddp_two_processes_rotation_broadcast_and_equal_to_single(tmp_path, monkeypatch):
    single, ddp, dumps = tmp_path / "single", tmp_path / "ddp", tmp_path / "dumps"
    dumps.mkdir()
    # epoch 1 in one process, then the same run continued in one process and in two
    engine.train(load_config(None, [*COMMON, f"out={single}"]), stop_after_epochs=1)
    shutil.copytree(single, ddp)
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    single_dumps = tmp_path / "single_dumps"
    single_dumps.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    # the single-process continuation runs through the same worker (same code path, no process group)
    import subprocess

    r = subprocess.run([sys.executable, str(worker), str(single_dumps), "resume", *COMMON, f"out={single}"],
                       env={k: v for k, v in env.items() if k not in ("WORLD_SIZE", "RANK")}, timeout=120)
    assert r.returncode == 0
    code = spawn([sys.executable, str(worker), str(dumps), "resume", *COMMON, f"out={ddp}"], 2, env=env)
    assert code == 0

    r0 = torch.load(dumps / "R_rank0_epoch1.pt", weights_only=True)
    r1 = torch.load(dumps / "R_rank1_epoch1.pt", weights_only=True)
    rs = torch.load(single_dumps / "R_rank0_epoch1.pt", weights_only=True)
    assert r0.keys() == r1.keys() == rs.keys() and len(r0) >= 2
    assert any(k.endswith("running_mean") for k in r0)
    for k in r0:
        # BatchNorm statistics too: each rank's last step updated them from its own half-batch, so they are
        # broadcast from rank 0 before evaluating (a model that differs per rank evaluates differently)
        assert torch.equal(r0[k], r1[k]), f"{k} differs between ranks"
        if k.endswith(("R1", "R2")):
            assert (r0[k] - rs[k]).abs().max() <= 1e-6, f"{k}: DDP rotation differs from the single-process one"
    # the rotation in rank 0's checkpoint is the broadcast one
    ck = torch.load(ddp / "last.pt", weights_only=True)
    for k in r0:
        assert torch.equal(ck["model"][k], r0[k]), k
    assert ck["epoch"] == 2

    # every rank returns the same (all-reduced) metrics, and they are what rank 0 wrote
    s0 = json.loads((dumps / "summary_rank0.json").read_text())
    s1 = json.loads((dumps / "summary_rank1.json").read_text())
    assert s0["world_size"] == s1["world_size"] == 2 and (s0["rank"], s1["rank"]) == (0, 1)
    for key in ("test_acc", "best_test_acc", "best_epoch", "final_train_loss"):
        assert s0[key] == s1[key], key
    last = _rows(ddp / "metrics.csv")[-1]
    assert float(last["test_acc"]) == pytest.approx(s1["test_acc"], rel=1e-5)
    assert float(last["train_loss"]) == pytest.approx(s1["final_train_loss"], rel=1e-5)
    assert json.loads((ddp / "summary.json").read_text())["world_size"] == 2
    # only rank 0 wrote: the run directory holds exactly the single-process file set, no stray temp files
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())


def test_nproc_launcher_reproduces_the_command_line():
    import argparse

    args = argparse.Namespace(config="c.yaml", resume=True, overwrite=False, verbose=False,
                              overrides=["nproc=2", "epochs=1"])
    cmd = child_command(args)
    assert cmd[1:] == ["-m", "rbnn", "train", "--config", "c.yaml", "--resume", "nproc=2", "epochs=1"]


def test_sync_bn_on_cpu_is_a_config_error():
    with pytest.raises(ConfigError, match="sync_bn"):
        wrap_ddp(torch.nn.Sequential(torch.nn.BatchNorm2d(2)), torch.device("cpu"), sync_bn=True)


def test_bf16_autocast_and_channels_last_on_cpu(tmp_path):
    """The GPU options run on CPU too (autocast bf16 is supported there): device-agnostic engine."""
    s = engine.train(load_config(None, ["threads=1", "data=synthetic", "data.subset=128",
                                        "data.test_subset=64", "batch_size=64", "export=false",
                                        "model=smallnet", "method=rbnn",
                                        "epochs=1", "amp=bf16", "channels_last=true", "device=cpu",
                                        f"out={tmp_path / 'r'}"]))
    assert s["device"] == "cpu" and math.isfinite(s["final_train_loss"])
    assert 0.0 <= s["test_acc"] <= 1.0


RANK_WORKER = textwrap.dedent("""
    import os, pathlib, signal, sys, time
    out, mode, rank = pathlib.Path(sys.argv[1]), sys.argv[2], os.environ["RANK"]
    signal.signal(signal.SIGTERM, lambda s, f: (out.joinpath("term" + rank).write_text(str(s)), sys.exit(128 + s)))
    out.joinpath("up" + rank).write_text("")
    if mode == "fail" and rank == "1":
        sys.exit(7)
    time.sleep(60)
""")


def test_launcher_ends_the_other_ranks_when_one_fails(tmp_path):
    t0 = time.monotonic()
    code = spawn([sys.executable, "-c", RANK_WORKER, str(tmp_path), "fail"], 2)
    assert code == 7  # the failing rank's own status, not torchrun's 1
    assert (tmp_path / "term0").read_text() == str(int(signal.SIGTERM))  # rank 0 was stopped, not waited for
    assert time.monotonic() - t0 < 30


def test_launcher_forwards_sigterm_to_every_rank(tmp_path):
    def send_when_up():
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"up{r}").exists() for r in range(2)) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=send_when_up, daemon=True).start()
    code = spawn([sys.executable, "-c", RANK_WORKER, str(tmp_path), "wait"], 2)
    assert code == 128 + signal.SIGTERM
    assert [(tmp_path / f"term{r}").read_text() for r in range(2)] == [str(int(signal.SIGTERM))] * 2
    assert signal.getsignal(signal.SIGTERM) is before  # torch's launcher handlers do not outlive the launch
