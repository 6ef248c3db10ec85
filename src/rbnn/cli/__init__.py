"""`rbnn` command line: thin wrappers that parse arguments and call library functions, one module per
group of subcommands (:mod:`.train`, :mod:`.evaluate`, :mod:`.deploy`); each imports the library lazily, so
``rbnn --help`` starts fast.

Errors caused by user input print one line (``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..errors import RbnnError
from . import deploy, evaluate, train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rbnn", description="Train, export and run binary neural networks.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    for group in (train, evaluate, deploy):
        group.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may be interleaved with options (argparse stops collecting them at an option)
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    rank = int(os.environ.get("RANK", "0") or 0)  # torchrun / nproc=N children: only rank 0 talks
    level = logging.DEBUG if args.verbose else logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except RbnnError as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        else:  # every rank usually hits the same error; rank 0 reports it, the others say they stopped
            print(f"rank {rank} stopped: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 2))
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


