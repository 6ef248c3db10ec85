"""``rbnn train ... nproc=N``: start N local training processes, the way ``torchrun`` would.

Each child is ``python -m rbnn train <the same arguments>`` with ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/
``LOCAL_WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` set (a free local port); the engine joins the group from
those variables (``rbnn.train.distributed.init_from_env``), so a child is indistinguishable from a torchrun
worker. Subprocesses rather than ``torch.multiprocessing.spawn``: nothing has to be pickled, every rank starts
from a clean interpreter, and a child that dies (even ``kill -9``) is seen at once.

SIGTERM / SIGINT sent to the launcher are forwarded to every child; the children agree on the step at which
they stop, rank 0 writes a mid-epoch checkpoint, and all exit (see ``docs/reliability.md``). If one child
fails, the others are terminated. The exit status is the first failing child's (0 when all succeed).

Each child gets ``OMP_NUM_THREADS`` = its share of the CPUs (unless the caller's environment sets it): N
processes each opening an OpenMP pool as wide as the machine oversubscribe the cores N-fold (torchrun sets 1).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from ..config import load_config
from .distributed import free_port


def child_command(args: argparse.Namespace) -> list[str]:
    """``python -m rbnn train ...`` reproducing the parsed command line of the launcher."""
    cmd = [sys.executable, "-m", "rbnn"]
    if getattr(args, "verbose", False):
        cmd.append("--verbose")
    cmd.append("train")
    if args.config:
        cmd += ["--config", str(args.config)]
    if args.resume:
        cmd.append("--resume")
    if args.overwrite:
        cmd.append("--overwrite")
    return cmd + list(args.overrides)


def launch_distributed(args: argparse.Namespace, nproc: int | None = None) -> int:
    """Run the parsed ``rbnn train`` command line in ``nproc`` (default: the config's) local processes."""
    if nproc is None:
        nproc = load_config(args.config, args.overrides).nproc
    return spawn(child_command(args), nproc)


def omp_threads(nproc: int, cpus: int | None = None) -> int:
    """Intra-op threads per rank: the CPUs this process may use divided among ``nproc`` ranks (at least 1)."""
    if cpus is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, nproc))


def spawn(cmd: list[str], nproc: int, env: dict[str, str] | None = None) -> int:
    """Run ``cmd`` as ranks 0..nproc-1 of one process group on this machine; returns the first failure's
    exit status (0 when every rank succeeds)."""
    port = free_port()
    procs: list[subprocess.Popen] = []
    base = dict(os.environ if env is None else env, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc), GROUP_RANK="0", NODE_RANK="0")
    base.setdefault("OMP_NUM_THREADS", str(omp_threads(nproc)))
    for r in range(nproc):
        env = dict(base, RANK=str(r), LOCAL_RANK=str(r))
        procs.append(subprocess.Popen(cmd, env=env))

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = 0
        while True:
            states = [p.poll() for p in procs]
            failed = [c for c in states if c not in (None, 0)]
            if failed and code == 0:
                code = failed[0]
                # a dead rank leaves the others blocked in a collective: stop them
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
                deadline = time.monotonic() + 30
                for p in procs:
                    try:
                        p.wait(timeout=max(0.1, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
            if all(p.poll() is not None for p in procs):
                break
            time.sleep(0.05)
        return code
    finally:
        for s, h in old.items():
            signal.signal(s, h)
