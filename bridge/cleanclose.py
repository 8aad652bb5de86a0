"""The clean close of one Live Stream connection: our FIN at once, the server's awaited.

Adobe frees a slot at once only when a client closes with a real FIN and reads until the
server's (KA-16598); an RST, or a socket closed with bytes unread, holds it for the grace.
So a close first half-closes (``shutdown(SHUT_WR)``), the reader keeps delivering what
still arrives (Live Stream counts it as delivered), and only if the server has not closed
within the linger is the close forced (``shutdown(SHUT_RDWR)`` wakes a blocked ``recv``).

``StreamClose`` holds that state for the ``Upstream``: the socket being read, whether the
reader is inside the sink, why a close was asked for, and the linger timer. Any thread may
ask for the close; the reader attaches and detaches the socket.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

from bridge.cancel import Cancel
from bridge.httpclient import shutdown
from bridge.logs import EventLog

__all__ = ["StreamClose"]

log = EventLog("bridge.livestream")


class StreamClose:
    """Closing the stream being read (or the attempt still connecting), from any thread."""

    def __init__(self, cancel_pending: Callable[[], bool]) -> None:
        # Ends a connection still being made or waiting for headers; True if there was one.
        self._cancel_pending = cancel_pending
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None  # the socket of the stream being read
        self._in_sink = False  # the reader is inside sink.chunk, not in recv
        self._reason: str | None = None  # why we are closing the current stream
        self._forced = False  # the linger ran out: the close was abortive, not clean
        self._linger: threading.Timer | None = None

    def reset(self, arm: Callable[[], None]) -> None:
        """A new attempt begins: no close asked for yet. ``arm`` (re-arming the pending
        connection's cancel) runs under the same lock, so a concurrent ``request`` lands
        wholly before it (and the caller sees its stop fired) or wholly after."""
        with self._lock:
            self._reason, self._forced = None, False
            arm()

    def request(self, reason: str, linger_s: float) -> bool:
        """Close now (the first reason is kept); True if there was something to close.

        With a stream attached: our FIN, then a forced close after ``linger_s`` unless the
        stream ends first. Before one: the pending connection is cut at once. Idempotent.
        """
        with self._lock:
            if self._reason is None:
                self._reason = reason
            sock = self._sock
            if sock is None:
                # A cancel between attempts is harmless: the next attempt re-arms.
                return self._cancel_pending()
            if self._linger is not None:
                return False  # already closing
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            self._linger = threading.Timer(linger_s, self._force, (sock, linger_s))
            self._linger.daemon = True
            self._linger.start()
        return True

    def why_ending(self, stop: Cancel) -> str | None:
        """Why the current attempt is to end (a request, or ``stop``), if it is. ``stop``
        is asked too: it may have fired with its callbacks (our request) still to run."""
        with self._lock:
            return self._reason or stop.reason

    def attach(self, sock: socket.socket | None, stop: Cancel) -> str | None:
        """The response headers are in: from now on a request half-closes ``sock``.
        Returns why the stream must instead end unread (a close came first), if so."""
        with self._lock:
            closing = self._reason or stop.reason
            if closing is None:
                self._sock = sock
        return closing

    def entering_sink(self, deliver: bool) -> bool:
        """The reader is about to hand a chunk over (``deliver``) or skip it; False when a
        close was asked for and there is no socket to half-close: just stop reading."""
        with self._lock:
            if self._reason is not None and self._sock is None:
                return False
            self._in_sink = deliver
        return True

    def left_sink(self) -> None:
        with self._lock:
            self._in_sink = False

    def detach(self) -> tuple[str | None, bool]:
        """The stream has ended: (the close asked for, if any; whether it was forced)."""
        with self._lock:
            self._sock = None
            requested, forced, linger = self._reason, self._forced, self._linger
            self._linger = None
        if linger is not None:
            linger.cancel()
        return requested, forced

    def _force(self, sock: socket.socket, linger_s: float) -> None:
        with self._lock:
            if self._sock is not sock:
                return  # that stream ended in time
            self._forced = True
            shutdown(sock)
            if self._in_sink:  # not in recv: closing cannot race a read of the fd
                sock.close()
        log.warning("upstream.close_forced", linger_s=linger_s)
