"""The two primitives every kind of test here needs, written once: wait for a condition
with a deadline, and pick a free loopback port.

Import them from here (``from tests.testutil import free_port, wait_until``); the harness,
the Kubernetes helpers and the unit tests all share these, so a fix to either applies to
every test at once.
"""

from __future__ import annotations

import inspect
import socket
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import TypeVar

T = TypeVar("T")

_FIRST_PAUSE_S = 0.001
_SHOWN_CHARS = 200


def wait_until(
    predicate: Callable[[], T | None], timeout: float = 5.0, what: str = "", *, step: float = 0.1
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that value; once
    ``timeout`` seconds have passed, fail with an ``AssertionError`` naming ``what`` (or,
    when the caller gave no words, the predicate's own source) and the last value seen.

    The first poll is immediate, the pause between polls starts at 1 ms and doubles up to
    ``step``: a condition that holds within milliseconds (most in-process ones) is seen
    within milliseconds, while a long wait costs one poll per ``step``, which matters
    because a poll of a bridge process is an HTTP request or a read of a Kafka topic.
    """
    deadline = time.monotonic() + timeout
    pause = min(_FIRST_PAUSE_S, step)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            shown = repr(value)[:_SHOWN_CHARS]
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what or _describe(predicate)}"
                f" (last: {shown})"
            )
        time.sleep(pause)
        pause = min(pause * 2, step)


def _describe(predicate: Callable[[], object]) -> str:
    """What an unnamed wait waited for: a lambda's source text, else the callable's name."""
    if getattr(predicate, "__name__", "") == "<lambda>":
        try:
            source = inspect.getsource(predicate)
        except (OSError, TypeError):  # no source file (e.g. defined in a REPL)
            return repr(predicate)
        return " ".join(source.split())[:_SHOWN_CHARS]
    return str(getattr(predicate, "__qualname__", None) or repr(predicate))


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports the kernel just handed out.

    All are held open together while asking, so they differ from each other; they are free
    only at the time of asking, so bind them soon.
    """
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def free_port() -> int:
    """One loopback port the kernel just handed out (see ``free_ports``)."""
    return free_ports(1)[0]
