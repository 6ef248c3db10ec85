"""``rbnn train ... nproc=N``: run the same command line as N local training processes with torch's elastic
launcher (``torch.distributed.run``, i.e. ``torchrun``), not a launcher of our own.

The launch is ``torchrun --nproc_per_node N --master_addr 127.0.0.1 --master_port <free> --no_python
python -m rbnn train <the same arguments>``, parsed and run by ``torch.distributed.run`` itself. It runs in
this process (``torch.distributed.run.config_from_args`` + ``elastic_launch``) rather than as a ``torchrun``
subprocess for one reason: the exit status. ``torchrun`` exits 1 whatever happened (and prints a traceback
on SIGTERM); here the launcher's answer is read from torch's own exception: the first failing rank's exit
status, or 128 + the signal number when the launcher was stopped by one.

What torch's launcher does: each rank gets ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_ADDR``/
``MASTER_PORT`` (the engine joins the group from them, ``rbnn.train.distributed.init_from_env``); when one rank
fails, the others are terminated (SIGTERM, SIGKILL after 30 s); SIGTERM / SIGINT sent to the launcher are
forwarded to every rank, which agree on the step at which they stop, rank 0 writes a mid-epoch checkpoint,
and all exit (see ``docs/reliability.md``).

What is added: each rank gets ``OMP_NUM_THREADS`` = its share of the CPUs (unless the caller's environment
sets it): torchrun's default of 1 leaves a CPU run on one core per rank, and a pool as wide as the machine in
every rank would oversubscribe the cores N-fold.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import elastic_launch
from torch.distributed.run import config_from_args, parse_args

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


def torchrun_args(cmd: list[str], nproc: int, port: int) -> list[str]:
    """The ``torchrun`` command line (without ``torchrun``) that runs ``cmd`` as ``nproc`` local ranks."""
    return ["--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1", "--master_port", str(port),
            "--no_python", *cmd]


def spawn(cmd: list[str], nproc: int, env: dict[str, str] | None = None) -> int:
    """Run ``cmd`` as ranks 0..nproc-1 of one process group on this machine with torch's elastic launcher;
    returns the first failure's exit status (0 when every rank succeeds, 128 + N when signal N stopped it)."""
    env = dict(os.environ if env is None else env)
    env.setdefault("OMP_NUM_THREADS", str(omp_threads(nproc)))
    config, entrypoint, entry_args = config_from_args(parse_args(torchrun_args(cmd, nproc, free_port())))
    with _environment(env), _handlers_restored():
        try:
            elastic_launch(config, entrypoint)(*entry_args)
        except ChildFailedError as e:
            return e.get_first_failure()[1].exitcode
        except SignalException as e:  # the ranks got the signal too and have exited
            return 128 + int(e.sigval)
    return 0


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """``env`` as this process's environment while the launcher runs: its ranks inherit it."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def _handlers_restored() -> Iterator[None]:
    """torch's launcher installs its own SIGTERM/SIGINT/SIGHUP/SIGQUIT handlers and leaves them in place."""
    sigs = [s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None),
                        getattr(signal, "SIGQUIT", None)) if s is not None]
    saved = {s: signal.getsignal(s) for s in sigs}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
