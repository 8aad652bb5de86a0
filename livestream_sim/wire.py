"""The simulator's HTTP/1.1 on raw sockets: reading a request, the query rules of a stream
GET, chunked framing and noticing how a client went away.

Hand-written rather than an HTTP server library: the simulator must control, and observe,
exactly how each connection is written and closed (FIN, RST, a chunk cut in half).
"""

from __future__ import annotations

import contextlib
import select
import socket
import typing
from urllib.parse import parse_qs

__all__ = [
    "MAX_HEAD",
    "Ended",
    "Request",
    "check_peer",
    "chunk",
    "codings",
    "read_request",
    "stream_name",
    "stream_params",
]

MAX_HEAD = 65536
# /api/2 is the path of Live Stream's 2026 API version; both serve the same stream here.
STREAM_PREFIXES = ("/api/1/stream/", "/api/2/stream/")
# Adobe's pages spell the two reset values either way; each pair means the same.
RESET_OLDEST = ("smallest", "earliest")
RESET_NEWEST = ("largest", "latest")


class Request(typing.NamedTuple):
    method: str  # empty for a request that could not be parsed
    target: str
    version: str
    headers: dict[str, str]
    body: bytes


class Ended(Exception):
    def __init__(self, reason: str, *, ghost: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.ghost = reason, ghost


def read_request(sock: socket.socket, buf: bytes) -> tuple[Request | None, bytes]:
    """The next request on ``sock`` and the bytes after it; None at EOF."""
    bad = Request("", "", "", {}, b"")
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD:
            return bad, b""
        if not (data := sock.recv(65536)):
            return None, b""
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            return bad, b""
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    start, length = lines[0].split(" "), headers.get("content-length", "0")
    if len(start) != 3 or not length.isdigit() or int(length) > 1 << 20:
        return bad, b""
    while len(rest) < int(length):
        if not (data := sock.recv(65536)):
            return None, b""
        rest += data
    return Request(start[0], start[1], start[2], headers, rest[: int(length)]), rest[int(length) :]


def codings(header: str) -> set[str]:
    """The content codings an Accept-Encoding value allows (q=0 means refused)."""
    allowed = set()
    for item in header.split(","):
        name, *params = (p.strip() for p in item.split(";"))
        q = next((v for k, _, v in (p.partition("=") for p in params) if k.strip() == "q"), "1")
        with contextlib.suppress(ValueError):
            if name and float(q) > 0:
                allowed.add(name.lower())
    return allowed


def stream_params(query: str, allowed: int) -> tuple[int, str | None]:
    """(maxConnections, reset) from the query; ValueError describes a bad parameter."""
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    raw = params.get("maxConnections", "1")
    if not raw.isdigit() or not 1 <= int(raw) <= 8:
        raise ValueError("maxConnections must be an integer from 1 to 8")
    if int(raw) > allowed:
        raise ValueError(f"maxConnections={raw} exceeds the {allowed} provisioned for this stream")
    if params.get("reset", "smallest") not in (*RESET_OLDEST, *RESET_NEWEST):
        raise ValueError("reset must be smallest, earliest, largest or latest")
    if params.get("beta", "false") not in ("true", "false"):
        raise ValueError("beta must be true or false")
    if params.get("smoothing", "0") not in ("0", "1", "true", "false"):
        raise ValueError("smoothing must be 0 or 1")
    size = params.get("smoothingBucketSize", "270")
    if not size.isdigit() or not 1 <= int(size) <= 7200:
        raise ValueError("smoothingBucketSize must be an integer from 1 to 7200")
    return int(raw), params.get("reset")


def stream_name(path: str) -> str | None:
    """The stream a ``/api/<1|2>/stream/<name>`` path names (None for any other path)."""
    for prefix in STREAM_PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix) :]
    return None


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def check_peer(sock: socket.socket) -> None:
    """Raise Ended if the client closed (FIN: clean) or reset (RST alone: vanished)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return
    try:
        data = sock.recv(65536)  # whatever a client sends on a stream is ignored
    except ConnectionResetError:
        raise Ended("client vanished (connection reset)", ghost=True) from None
    if not data:
        raise Ended("client closed cleanly (FIN)")
