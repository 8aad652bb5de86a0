"""The delaying TCP relay of the network tests (tests/delayproxy.py), on loopback."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from tests.delayproxy import DelayProxy
from tests.testutil import wait_until

DELAY_S = 0.2


@pytest.fixture
def target() -> Iterator[socket.socket]:
    """A listening loopback socket the relay forwards to (the test accepts on it)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    with listener:
        yield listener


def through(proxy: DelayProxy, target: socket.socket) -> tuple[socket.socket, socket.socket]:
    """(the client's end, the target's end) of one new connection through ``proxy``."""
    client = socket.create_connection(proxy.address, timeout=5)
    server, _ = target.accept()
    server.settimeout(5)
    return client, server


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        assert more, f"end of stream after {len(data)} of {size} bytes"
        data += more
    return data


def test_each_direction_is_delayed(target: socket.socket) -> None:
    """A message reaches the target no sooner than the delay after it was sent, the answer
    reaches the client no sooner than the delay after that, the relay's own per-chunk
    figures say the same, and it knows which client an outgoing connection serves."""
    with DelayProxy(target.getsockname(), DELAY_S) as proxy:
        client, server = through(proxy, target)
        with client, server:
            sent = time.monotonic()
            client.sendall(b"ping")
            assert recv_exactly(server, 4) == b"ping"
            arrived = time.monotonic()
            server.sendall(b"pong")
            assert recv_exactly(client, 4) == b"pong"
            back = time.monotonic()
            origin = proxy.origin("{}:{}".format(*server.getpeername()))
            assert origin == "{}:{}".format(*client.getsockname())
    assert DELAY_S <= arrived - sent < DELAY_S + 1
    assert DELAY_S <= back - arrived < DELAY_S + 1
    for direction in ("up", "down"):
        latency = proxy.latency[direction]
        assert latency.count == 1
        assert DELAY_S <= latency.least <= latency.most < DELAY_S + 1


def test_bytes_and_order_kept_and_a_full_relay_pushes_back(target: socket.socket) -> None:
    """While the target reads nothing, a sender meets back-pressure (its sends block well
    before all is sent: the relay holds a bounded amount); once the target reads, it gets
    every byte in order, then the end of stream."""
    payload = os.urandom(32 << 20)
    with DelayProxy(target.getsockname(), 0.01, queue_chunks=4) as proxy:
        client, server = through(proxy, target)
        with client, server:
            client.settimeout(1)
            view = memoryview(payload)
            while view:
                try:
                    view = view[client.send(view[: 1 << 20]) :]
                except TimeoutError:
                    break  # nothing could be sent for a second: the whole chain is full
            # socket buffers on both sides of the relay plus its 4 chunks: ~6 MiB here
            blocked_at = len(payload) - len(view)
            assert 0 < blocked_at < len(payload) // 2, blocked_at

            def send_rest() -> None:
                client.settimeout(30)
                client.sendall(view)
                client.shutdown(socket.SHUT_WR)

            sender = threading.Thread(target=send_rest)
            sender.start()
            digest, size = hashlib.sha256(), 0
            while chunk := server.recv(1 << 20):
                digest.update(chunk)
                size += len(chunk)
            sender.join()
    assert size == len(payload)
    assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()


def test_an_end_of_stream_is_passed_on_after_the_data(target: socket.socket) -> None:
    """A client's FIN reaches the target as an end of stream after the data sent before it
    and no sooner than the delay; the target can still answer (half close), and its own
    FIN reaches the client."""
    with DelayProxy(target.getsockname(), DELAY_S) as proxy:
        client, server = through(proxy, target)
        with client, server:
            client.sendall(b"last words")
            closed = time.monotonic()
            client.shutdown(socket.SHUT_WR)
            assert recv_exactly(server, 10) == b"last words"
            assert server.recv(10) == b""
            assert time.monotonic() - closed >= DELAY_S
            server.sendall(b"reply")
            server.shutdown(socket.SHUT_WR)
            assert recv_exactly(client, 5) == b"reply"
            assert client.recv(10) == b""
        wait_until(lambda: proxy.connections() == 0, 5, "the relayed connection to end")


def test_a_reset_is_passed_on_as_a_reset(target: socket.socket) -> None:
    """A client that aborts its connection (RST) makes the target's end see a reset, not a
    clean end of stream."""
    with DelayProxy(target.getsockname(), DELAY_S) as proxy:
        client, server = through(proxy, target)
        with server:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            with pytest.raises(ConnectionResetError):
                server.recv(10)
        wait_until(lambda: proxy.connections() == 0, 5, "the relayed connection to end")


def test_leaving_the_context_ends_everything(target: socket.socket) -> None:
    """Leaving the proxy's context with a connection still open resets that connection,
    stops listening and joins every thread the relay started."""
    before = set(threading.enumerate())
    with DelayProxy(target.getsockname(), DELAY_S) as proxy:
        client, server = through(proxy, target)
        client.sendall(b"x")
        assert recv_exactly(server, 1) == b"x"
        assert len(set(threading.enumerate()) - before) == 5  # acceptor + 2 per direction
    with client, server:
        assert set(threading.enumerate()) - before == set()
        with pytest.raises(ConnectionResetError):
            server.recv(10)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(proxy.address, timeout=5).close()
