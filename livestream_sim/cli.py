"""The simulator's command line: ``livestream-sim``, ``python -m livestream_sim`` and the
``livestream-bridge simulate`` subcommand (which imports this module only when it runs)."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
import typing
from collections.abc import Sequence
from typing import Any

from livestream_sim.config import SimulatorConfig
from livestream_sim.server import Simulator

__all__ = ["add_arguments", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per SimulatorConfig field (``--ghost-s``, ``--no-split-records``, ...)."""
    hints = typing.get_type_hints(SimulatorConfig)
    for f in dataclasses.fields(SimulatorConfig):
        flag, kind = "--" + f.name.replace("_", "-"), hints[f.name]
        text = f.metadata.get("help", f.name.replace("_", " ")) + " (default: %(default)s)"
        if kind is bool:
            action = argparse.BooleanOptionalAction
            parser.add_argument(flag, action=action, default=f.default, help=text)
        else:
            convert = kind if kind in (int, float, str) else int
            parser.add_argument(flag, type=convert, default=f.default, help=text)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; prints the stream, token and admin URLs, one a line."""
    fields = dataclasses.fields(SimulatorConfig)
    cfg = SimulatorConfig(**{f.name: getattr(args, f.name) for f in fields})
    done = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: done.set())
    try:
        with Simulator(cfg) as sim:
            sys.stdout.write(f"{sim.stream_url}\n{sim.token_url}\n{sim.base_url}/admin/state\n")
            sys.stdout.flush()
            while not done.wait(0.5):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``livestream-sim [flags]``: the same flags and output as ``livestream-bridge simulate``."""
    parser = argparse.ArgumentParser(
        prog="livestream-sim", description="A loopback Adobe Live Stream simulator."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
