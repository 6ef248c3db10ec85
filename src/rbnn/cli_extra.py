"""Subcommands beyond train/eval/summary: export, predict, verify, report, ablate, bench."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Registered by cli.build_parser; each command lives with the library code it calls."""
