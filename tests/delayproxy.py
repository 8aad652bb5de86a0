"""A TCP relay that holds every segment for a fixed time in each direction: the delay half
of a slow link, for kernels without ``sch_netem`` (where ``tc ... netem delay`` is refused).

``DelayProxy(target, delay_s)`` listens on ``listen`` and, for each connection it accepts,
opens one to ``target``; whatever either side sends is passed on to the other ``delay_s``
after it was read, in order. Each direction holds at most ``queue_chunks`` reads of up to
``chunk`` bytes: when that is full the relay stops reading, so a fast sender meets TCP's
own back-pressure instead of the relay's memory growing (which also caps a direction's
throughput at ``queue_chunks * chunk / delay_s``: 20 MiB/s with the defaults and 200 ms).
An end of stream is passed on as an end of stream (FIN, after the same delay, so data sent
before it still arrives first), a reset as a reset (SO_LINGER 0), and a peer that cannot be
written to any more resets both.

``netns`` is a context manager factory (e.g. ``lambda: in_namespace(member)``): the
listening socket and every connection to ``target`` are made inside it, so the relay sits
in that namespace while its threads run anywhere. Use the proxy as a context manager:
leaving it aborts the connections still open, closes every socket and joins every thread.

``latency`` holds, per direction ("up": client to target, "down": back), the count, least
and most of the time each chunk spent in the relay (read to written), so a test can show
the delay was in effect; ``origin(address)`` maps the relay's outgoing ``host:port``, as
``target`` sees it, to the client it relays for.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType

POLL_S = 0.1  # how often a blocked thread looks at its stop flag
CONNECT_TIMEOUT_S = 5.0

FIN, RST = "fin", "rst"  # queue items that are not data (data is bytes)
Item = tuple[float, bytes | str]  # (monotonic time it was read, data or a marker)


@dataclass
class Latency:
    """How long chunks of one direction stayed in the relay (seconds)."""

    count: int = 0
    least: float = float("inf")
    most: float = 0.0

    def add(self, held: float) -> None:
        self.count += 1
        self.least = min(self.least, held)
        self.most = max(self.most, held)


class DelayProxy:
    """See the module docstring."""

    def __init__(
        self,
        target: tuple[str, int],
        delay_s: float,
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        queue_chunks: int = 64,
        chunk: int = 65536,
        netns: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        self.target = target
        self.delay_s = delay_s
        self._listen_at = listen
        self._queue_chunks = queue_chunks
        self._chunk = chunk
        self._netns = netns
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._origins: dict[str, str] = {}
        self.latency = {"up": Latency(), "down": Latency()}
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.address: tuple[str, int] = ("", 0)

    def __enter__(self) -> DelayProxy:
        with self._netns():
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(self._listen_at)
                listener.listen(16)
                listener.settimeout(POLL_S)
            except OSError:
                listener.close()
                raise
        self._listener = listener
        host, port = listener.getsockname()[:2]
        self.address = (host, port)
        self._acceptor = threading.Thread(target=self._accept, name="delayproxy-accept")
        self._acceptor.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Abort the open connections (reset), close every socket, join every thread."""
        self._stop.set()
        if self._acceptor is not None:
            self._acceptor.join()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.abort()
        for link in links:
            link.join()

    def origin(self, address: str) -> str:
        """The client behind the relay's outgoing ``host:port`` (``address`` if unknown)."""
        with self._lock:
            return self._origins.get(address, address)

    def connections(self) -> int:
        """How many relayed connections are still open."""
        with self._lock:
            return sum(1 for link in self._links if not link.done.is_set())

    def _accept(self) -> None:
        assert self._listener is not None
        # outgoing connections are made on this thread, which is kept in the namespace
        with self._netns():
            while not self._stop.is_set():
                try:
                    client, peer = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    if self._stop.is_set():
                        return
                    raise
                self._relay(client, _hostport(peer))

    def _relay(self, client: socket.socket, peer: str) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT_S)
        except OSError:
            _reset(client)  # the client sees what it would see from a refused target
            return
        try:
            outgoing = _hostport(upstream.getsockname())
            link = _Link(self, client, upstream)
        except OSError:  # the client is gone already
            _reset(client)
            _reset(upstream)
            return
        with self._lock:
            self._links = [old for old in self._links if not old.done.is_set()]
            self._links.append(link)
            self._origins[outgoing] = peer
        link.start()


def _hostport(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a reset rather than a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Link:
    """One relayed connection: a reader and a writer per direction, over a bounded queue."""

    def __init__(self, proxy: DelayProxy, client: socket.socket, upstream: socket.socket):
        self.proxy = proxy
        self.client, self.upstream = client, upstream
        for sock in (client, upstream):
            sock.settimeout(POLL_S)
            # the relay adds its delay and nothing else: no Nagle coalescing on top
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stop = threading.Event()
        self.done = threading.Event()
        self._reset = False
        self._lock = threading.Lock()
        self._running = 4
        up: queue.Queue[Item] = queue.Queue(proxy._queue_chunks)
        down: queue.Queue[Item] = queue.Queue(proxy._queue_chunks)
        self.threads = [
            threading.Thread(target=self._guard, args=(self._read, client, up), name="dp-up-r"),
            threading.Thread(
                target=self._guard, args=(self._write, up, upstream, "up"), name="dp-up-w"
            ),
            threading.Thread(target=self._guard, args=(self._read, upstream, down), name="dp-dn-r"),
            threading.Thread(
                target=self._guard, args=(self._write, down, client, "down"), name="dp-dn-w"
            ),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join()

    def abort(self) -> None:
        """End the connection with a reset on both sides."""
        self._reset = True
        self.stop.set()

    def _guard(self, body: Callable[..., None], *args: object) -> None:
        try:
            body(*args)
        except OSError:
            self.abort()  # either peer is gone in a way a FIN does not express
        finally:
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:
                self._close()

    def _close(self) -> None:
        for sock in (self.client, self.upstream):
            if self._reset:
                _reset(sock)
            else:
                sock.close()
        self.done.set()

    def _read(self, src: socket.socket, out: queue.Queue[Item]) -> None:
        while not self.stop.is_set():
            try:
                data = src.recv(self.proxy._chunk)
            except TimeoutError:
                continue
            except OSError:
                self._put(out, RST)
                return
            self._put(out, data or FIN)
            if not data:
                return

    def _put(self, out: queue.Queue[Item], item: bytes | str) -> None:
        read_at = time.monotonic()
        while not self.stop.is_set():
            try:
                # a full queue blocks here, and so the reading: back-pressure, not memory
                out.put((read_at, item), timeout=POLL_S)
                return
            except queue.Full:
                continue

    def _write(self, src: queue.Queue[Item], dst: socket.socket, direction: str) -> None:
        delay = self.proxy.delay_s
        while not self.stop.is_set():
            try:
                read_at, item = src.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if self.stop.wait(max(0.0, read_at + delay - time.monotonic())):
                return
            if item == RST:
                self.abort()
                return
            if item == FIN:
                dst.shutdown(socket.SHUT_WR)
                return
            assert isinstance(item, bytes)
            self._send(dst, item)
            with self.proxy._lock:
                self.proxy.latency[direction].add(time.monotonic() - read_at)

    def _send(self, dst: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view and not self.stop.is_set():
            try:
                sent = dst.send(view)
            except TimeoutError:
                continue  # nothing was sent: the peer's window is full
            view = view[sent:]
