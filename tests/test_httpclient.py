"""The HTTP client factory: Live Stream's client against a real loopback server.

These pin what ``bridge.httpclient`` relies on inside httpx and httpcore (the pool it
replaces, the stream it wraps): an upgrade that changes them fails here first.
"""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from bridge.config import LivestreamSettings
from bridge.httpclient import UpstreamHttp, token_client, with_params
from tests.testutil import wait_until


class LoopbackServer:
    """Answers every request with a small keep-alive 200, or never answers (``mute``)."""

    def __init__(self, *, mute: bool = False) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/x"
        self.mute = mute
        self.peers: list[int] = []  # client port of every request
        self.targets: list[str] = []  # request target (path and query) of every request
        self.closed = threading.Event()  # a mute connection saw the client close
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, addr = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, addr[1]), daemon=True).start()

    def _serve(self, conn: socket.socket, port: int) -> None:
        buf = b""
        try:
            while data := conn.recv(65536):
                buf += data
                while b"\r\n\r\n" in buf:
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    self.targets.append(head.split(b" ")[1].decode("latin-1"))
                    self.peers.append(port)
                    if not self.mute:
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            pass
        conn.close()
        self.closed.set()

    def close(self) -> None:
        self.listener.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def settings() -> LivestreamSettings:
    return LivestreamSettings(url="http://127.0.0.1/x", connect_timeout_s=3.0, stall_timeout_s=60.0)


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    srv = LoopbackServer()
    yield srv
    srv.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_every_request_gets_a_fresh_connection(
    settings: LivestreamSettings, server: LoopbackServer
) -> None:
    """The server offers keep-alive, yet each request comes from a new client port."""
    http = UpstreamHttp(settings)
    try:
        for _ in range(3):
            http.arm()
            with http.client.stream("GET", server.url) as response:
                assert response.read() == b"ok"
        assert len(server.peers) == 3 and len(set(server.peers)) == 3
    finally:
        http.close()


def test_client_settings_follow_the_stream_rules(settings: LivestreamSettings) -> None:
    """No redirects followed by httpx, the read timeout is the stall watchdog, and the
    token client does not follow redirects either."""
    http = UpstreamHttp(settings)
    try:
        assert http.client.follow_redirects is False
        assert http.client.timeout.read == 60.0
        assert http.client.timeout.connect == 3.0
    finally:
        http.close()
    with token_client() as client:
        assert client.follow_redirects is False


def test_cancel_ends_a_request_waiting_for_headers(settings: LivestreamSettings) -> None:
    """cancel() from another thread ends a request whose headers never come, at once."""
    mute = LoopbackServer(mute=True)
    http = UpstreamHttp(settings)
    outcome: list[BaseException] = []

    def request() -> None:
        try:
            http.client.get(mute.url)
        except BaseException as exc:
            outcome.append(exc)

    try:
        http.arm()
        thread = threading.Thread(target=request, daemon=True)
        thread.start()
        wait_until(lambda: mute.peers, 5, "the request to reach the server")
        cut = time.monotonic()
        assert http.cancel() is True
        thread.join(2.0)
        assert not thread.is_alive()
        assert time.monotonic() - cut < 1.0
        assert outcome and isinstance(outcome[0], httpx.TransportError)
        assert mute.closed.wait(1.0)
    finally:
        http.close()
        mute.close()


def test_cancel_refuses_new_connections_until_armed(
    settings: LivestreamSettings, server: LoopbackServer
) -> None:
    """After cancel() no connection is made until the next arm()."""
    http = UpstreamHttp(settings)
    try:
        http.arm()
        assert http.cancel() is False  # nothing open
        with pytest.raises(httpx.ConnectError):
            http.client.get(server.url)
        assert server.peers == []
        http.arm()
        assert http.client.get(server.url).content == b"ok"
    finally:
        http.close()


def test_no_descriptor_outlives_its_connection(
    settings: LivestreamSettings, server: LoopbackServer
) -> None:
    """The descriptor kept to cancel a connection is closed with it: no leak, and no
    connection kept open by it."""
    http = UpstreamHttp(settings)
    try:
        http.arm()
        http.client.get(server.url).read()  # warm up whatever httpx opens once
        # Earlier tests' unreachable sockets would otherwise be closed by the collector
        # in the middle of this count (one was, in CI: 22 open against 23 before).
        gc.collect()
        before = open_fds()
        for _ in range(5):
            http.arm()
            with http.client.stream("GET", server.url) as response:
                response.read()
        # the server closes its side when it sees ours
        wait_until(lambda: open_fds() == before, 5, "the connections' descriptors to close")
        assert http.backend.cancel() is False  # nothing is tracked any more
    finally:
        http.close()


@pytest.mark.parametrize(
    "url,params,expected",
    [
        (
            "https://h/api/2/stream/s?beta=true",
            {"maxConnections": "1"},
            "beta=true&maxConnections=1",
        ),
        (
            "https://h/s?maxConnections=7&beta=true",
            {"maxConnections": "2"},
            "beta=true&maxConnections=2",
        ),
        (
            "https://h/s?flag&q=%C3%A9&r=a+b",
            {"reset": "latest"},
            "flag&q=%C3%A9&r=a+b&reset=latest",
        ),
        ("https://h/s?max%43onnections=5", {"maxConnections": "1"}, "maxConnections=1"),
        (
            "https://h/s",
            {"maxConnections": "1", "reset": "earliest"},
            "maxConnections=1&reset=earliest",
        ),
        ("https://h/s?beta=true", {}, "beta=true"),
    ],
)
def test_with_params_keeps_the_urls_own_query(
    url: str, params: dict[str, str], expected: str
) -> None:
    """The URL's own parameters stay as written and in order; ours are appended, and one
    of ours already in the URL (however percent-encoded) is replaced, never doubled."""
    assert with_params(httpx.URL(url), params).query.decode() == expected


def test_stream_get_carries_the_configured_urls_query(server: LoopbackServer) -> None:
    """On the wire, the stream GET to a /api/2/stream/<name>?beta=true URL keeps ?beta=true
    with maxConnections and reset (sent as configured) merged in."""
    url = server.url.replace("/x", "/api/2/stream/acme?beta=true")
    http = UpstreamHttp(LivestreamSettings(url=url, max_connections=2, reset="earliest"))
    try:
        http.arm()
        response = http.open("token-1", "client-1")
        assert response.read() == b"ok"
        response.close()
    finally:
        http.close()
    assert server.targets == ["/api/2/stream/acme?beta=true&maxConnections=2&reset=earliest"]
