"""A small HTTP server for probes and scrapes that idle or slow clients cannot exhaust.

``http.server.ThreadingHTTPServer`` starts a thread per connection and waits on each for
as long as the client likes, so a few hundred half-sent requests (slow-loris) pile up as
many threads and the liveness probe queues behind them. Here one thread accepts and reads
request heads without blocking: a waiting connection costs a socket, not a thread. A head
must be complete within ``timeout_s`` of the accept (a total deadline, so trickling a byte
at a time does not extend it), and beyond ``max_pending`` waiting connections the oldest is
dropped, so a new probe always gets in. Complete requests go to a fixed pool of worker
threads, which answer once and close (no keep-alive: a probe opens a connection anyway).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus

__all__ = ["BoundedHttpServer", "Responder"]

# (path) -> (status, body, content type)
Responder = Callable[[str], tuple[HTTPStatus, bytes, str]]

MAX_HEAD_BYTES = 8192
_log = logging.getLogger("bridge.http")


class BoundedHttpServer:
    """Serves GET/HEAD through ``respond`` with a fixed number of threads."""

    def __init__(
        self,
        host: str,
        port: int,
        respond: Responder,
        *,
        workers: int = 4,
        max_pending: int = 128,
        timeout_s: float = 5.0,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=128)
        self._listener.setblocking(False)
        self._respond = respond
        self._timeout_s, self._max_pending = timeout_s, max_pending
        # Insertion order is accept order, and every deadline is accept time + timeout_s,
        # so the first entry is always the next to expire.
        self._pending: dict[socket.socket, tuple[float, bytearray]] = {}
        self._ready: queue.Queue[tuple[socket.socket, bytes] | None] = queue.Queue(workers * 8)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._accept_loop, name="http", daemon=True)]
        self._threads += [
            threading.Thread(target=self._work, name=f"http-worker-{i}", daemon=True)
            for i in range(workers)
        ]

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake_w.send(b"x")
        started = [t for t in self._threads if t.ident is not None]
        if started:
            self._threads[0].join(timeout=5)
            for _ in started[1:]:
                self._ready.put(None)
            for thread in started[1:]:
                thread.join(timeout=self._timeout_s + 1)
        else:
            self._close_all()
        self._wake_r.close()
        self._wake_w.close()

    # -- the accepting thread --------------------------------------------------------------

    def _accept_loop(self) -> None:
        sel = self._selector
        sel.register(self._listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                for key, _ in sel.select(timeout=self._until_next_expiry()):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is not self._wake_r and key.fileobj in self._pending:
                        # Not pending any more: dropped earlier in this same batch (the
                        # oldest makes room for a new one), so its event is stale.
                        self._read_safely(key.fileobj)
                self._expire()
        finally:
            self._close_all()

    def _until_next_expiry(self) -> float | None:
        if not self._pending:
            return None
        deadline, _ = next(iter(self._pending.values()))
        return max(0.0, deadline - time.monotonic())

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. out of file descriptors: try again on the next event
                return
            conn.setblocking(False)
            if len(self._pending) >= self._max_pending:
                self._drop(next(iter(self._pending)))
            self._pending[conn] = (time.monotonic() + self._timeout_s, bytearray())
            self._selector.register(conn, selectors.EVENT_READ)

    def _read_safely(self, conn: socket.socket) -> None:
        # One odd connection must never end the accepting thread: the probes depend on it.
        try:
            self._read(conn)
        except Exception as exc:
            _log.warning("http.read_error", extra={"fields": {"error": type(exc).__name__}})
            self._drop(conn)

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        head = self._pending[conn][1]
        head += data
        if b"\r\n\r\n" in head or b"\n\n" in head:
            self._selector.unregister(conn)
            del self._pending[conn]
            try:
                self._ready.put_nowait((conn, bytes(head)))
            except queue.Full:  # every worker busy and a backlog waiting: shed this one
                conn.close()
        elif len(head) > MAX_HEAD_BYTES:
            self._drop(conn)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._pending:
            conn, (deadline, _) = next(iter(self._pending.items()))
            if deadline > now:
                return
            self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        if self._pending.pop(conn, None) is None:
            return  # dropped already
        with contextlib.suppress(KeyError, ValueError):  # ValueError: its fd is gone
            self._selector.unregister(conn)
        conn.close()

    def _close_all(self) -> None:
        for conn in list(self._pending):
            self._drop(conn)
        self._selector.close()
        self._listener.close()

    # -- the workers -----------------------------------------------------------------------

    def _work(self) -> None:
        while (item := self._ready.get()) is not None:
            conn, head = item
            try:
                conn.settimeout(self._timeout_s)  # a client that never reads cannot hold us
                conn.sendall(self._answer(head))
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the client went away; nothing to tell it
            finally:
                conn.close()

    def _answer(self, head: bytes) -> bytes:
        parts = head.split(b"\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _response(HTTPStatus.BAD_REQUEST, b"", "text/plain")
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            return _response(HTTPStatus.METHOD_NOT_ALLOWED, b"", "text/plain")
        try:
            status, body, ctype = self._respond(target.split("?", 1)[0])
        except Exception as exc:  # a broken page must not take the worker with it
            _log.warning("http.error", extra={"fields": {"error": type(exc).__name__}})
            status, body, ctype = HTTPStatus.INTERNAL_SERVER_ERROR, b"", "text/plain"
        return _response(status, body if method == "GET" else b"", ctype, len(body))


def _response(status: HTTPStatus, body: bytes, ctype: str, length: int | None = None) -> bytes:
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        f"Content-Type: {ctype}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n"
        + ("Allow: GET, HEAD\r\n" if status == HTTPStatus.METHOD_NOT_ALLOWED else "")
        + "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
