"""The Live Stream client: reconnect policy, and Upstream against real loopback servers.

Two kinds of server are used: ``FakeLiveStream`` below, a few dozen lines of raw socket
code that answers each connection with a scripted action and notices at once when the
client closes (for statuses and timings the simulator cannot be made to produce), and the
project's simulator (``livestream_sim``) for the end-to-end cases.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import logging
import os
import random
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.cancel import Callback, Cancel
from bridge.config import AuthSettings, LivestreamSettings
from bridge.errors import AuthError, FatalUpstreamError, UpstreamLost
from bridge.livestream import ReconnectPolicy, RecordDecoder, Upstream
from bridge.observability import Metrics
from tests.testutil import free_port, wait_until

TOKEN = "bearer-token-do-not-log-4711"
SLACK = 0.05  # scheduling jitter tolerated on timing floors
READ_FILE = os.path.join("httpcore", "_backends", "sync.py")


def in_socket_read(thread: threading.Thread) -> bool:
    """Whether ``thread`` is inside httpcore's socket read right now (it blocks there)."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "read" and code.co_filename.endswith(READ_FILE):
            return True
        frame = frame.f_back
    return False


# -- ReconnectPolicy ------------------------------------------------------------------


def test_after_drop_is_exactly_grace() -> None:
    """After an established stream ends the wait is exactly the grace."""
    policy = ReconnectPolicy(60.0, 600.0, random.Random(1))
    for _ in range(3):
        policy.after_refusal()
    assert policy.after_drop() == 60.0


@pytest.mark.parametrize("grace,cap", [(60.0, 600.0), (1.0, 5.0), (0.0, 30.0), (5.0, 5.0)])
def test_refusal_delays_stay_between_grace_and_cap(grace: float, cap: float) -> None:
    """Every refusal delay lies in [grace, cap], however many refusals in a row."""
    for seed in range(50):
        policy = ReconnectPolicy(grace, cap, random.Random(seed))
        for _ in range(80):
            assert grace <= policy.after_refusal() <= cap


def test_refusal_windows_double_up_to_the_cap() -> None:
    """The jitter window is base * 2**n above the grace, capped at cap - grace."""

    class Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    policy = ReconnectPolicy(60.0, 600.0, Top())
    assert [policy.after_refusal() for _ in range(6)] == [120, 180, 300, 540, 600, 600]
    policy.reset()
    assert policy.after_refusal() == 120
    zero = ReconnectPolicy(0.0, 10.0, Top())
    assert [zero.after_refusal() for _ in range(5)] == [1, 2, 4, 8, 10]


def test_refusal_delays_grow_in_expectation() -> None:
    """The mean delay of the n-th refusal never decreases with n (full jitter)."""
    rng = random.Random(11)
    expected = [1.0 + min(19.0, 2.0**n) / 2 for n in range(7)]  # grace + window / 2
    assert expected == sorted(expected)
    for n, want in enumerate(expected):
        samples = []
        for _ in range(2000):
            policy = ReconnectPolicy(1.0, 20.0, rng)
            for _ in range(n):
                policy.after_refusal()
            samples.append(policy.after_refusal())
        assert abs(statistics.fmean(samples) - want) < 0.5  # > 4 standard errors


def test_policy_rejects_cap_below_grace() -> None:
    """A cap below the grace could never honour both bounds, so it is refused."""
    with pytest.raises(ValueError):
        ReconnectPolicy(10.0, 5.0)


# -- a scripted Live Stream stand-in ----------------------------------------------------


@dataclass
class Status:
    code: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # the body as sent, instead of ``body`` as JSON


@dataclass
class Stream:
    """A 200: send ``body`` (raw gzip bytes) in ``pieces`` chunks, then ``end``:
    ``hold`` (stay open and silent until the client's FIN, then close), ``drop`` (close the
    socket without finishing the chunked body), ``finish`` (terminating chunk, then close),
    ``deaf`` (ignore the client's FIN, stay silent), ``deaf_talking`` (ignore the FIN and
    keep sending empty gzip members, like a server that never reads its socket) or
    ``talk_after_fin`` (after the client's FIN send each of ``tail`` as its own gzip
    member, at the server's own pace, then the terminating chunk and FIN)."""

    body: bytes = b""
    pieces: int = 3
    end: str = "hold"
    tail: tuple[bytes, ...] = ()


@dataclass
class Mute:
    """Read the request and answer nothing until the client closes; with ``release`` and
    ``then``: answer nothing until ``release`` is set, then act as ``then``."""

    release: threading.Event | None = None
    then: Stream | None = None


@dataclass
class Seen:
    t: float
    request_line: str
    headers: dict[str, str]
    closed_at: float | None = None  # when the server saw the client's FIN (streams only)


class FakeLiveStream:
    """One scripted action per connection; remembers every request and every client close."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.tls = tls
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}/api/1/stream/test"
        self.script: list[Status | Stream | Mute] = []
        self.default: Status | Stream | Mute = Status(503)
        self.seen: list[Seen] = []
        self.dropped_at: list[float] = []  # when the server itself ended a stream
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.running = False
        self.listener.close()
        with self.lock:
            for conn in self.conns:
                with_suppress(conn.close)

    def _accept(self) -> None:
        while self.running:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head and (data := conn.recv(4096)):
                head += data
            lines = head.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
            pairs = (h.split(":", 1) for h in lines[1:] if ":" in h)
            with self.lock:
                seen = Seen(time.monotonic(), lines[0], {k.lower(): v.strip() for k, v in pairs})
                self.seen.append(seen)
                action = self.script.pop(0) if self.script else self.default
            if isinstance(action, Mute):
                self._mute(conn, action, seen)
            elif isinstance(action, Status):
                body = json.dumps(action.body).encode() if action.body is not None else b""
                body = action.raw if action.raw is not None else body
                extra = "".join(f"{k}: {v}\r\n" for k, v in action.headers.items())
                conn.sendall(
                    f"HTTP/1.1 {action.code} X\r\nContent-Type: application/json\r\n{extra}"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
            else:
                self._stream(conn, action, seen)
        conn.close()

    def _mute(self, conn: socket.socket, action: Mute, seen: Seen) -> None:
        if action.release is not None and action.then is not None:
            action.release.wait(10)
            self._stream(conn, action.then, seen)
            return
        try:
            while conn.recv(65536):  # until the client's FIN (or reset)
                pass
        finally:
            with self.lock:
                seen.closed_at = time.monotonic()

    def _stream(self, conn: socket.socket, action: Stream, seen: Seen) -> None:
        try:
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            step = max(1, -(-len(action.body) // action.pieces))
            for i in range(0, len(action.body), step):
                piece = action.body[i : i + step]
                conn.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            if action.end == "finish":
                conn.sendall(b"0\r\n\r\n")
            if action.end in ("finish", "drop"):
                with self.lock:
                    self.dropped_at.append(time.monotonic())
                return
            if action.end in ("hold", "talk_after_fin"):
                while conn.recv(65536):  # wait for the client's FIN (or reset)
                    pass
            if action.end == "talk_after_fin":
                with self.lock:
                    seen.closed_at = time.monotonic()
                for record in action.tail:
                    member = gzip.compress(record + b"\r\n")
                    conn.sendall(f"{len(member):x}\r\n".encode() + member + b"\r\n")
                    time.sleep(0.01)  # the server's own pace, not a test synchronisation
                conn.sendall(b"0\r\n\r\n")
                return
            while action.end.startswith("deaf") and self.running:
                if action.end == "deaf_talking":
                    conn.sendall(b"14\r\n" + gzip.compress(b"", mtime=0) + b"\r\n")
                time.sleep(0.02)  # the server's own pace, not a test synchronisation
        except OSError:
            pass
        finally:
            with self.lock:
                seen.closed_at = time.monotonic()


def with_suppress(fn: Callable[[], object]) -> None:
    with contextlib.suppress(OSError):
        fn()


def gz_records(*records: bytes) -> bytes:
    return gzip.compress(b"".join(r + b"\r\n" for r in records))


class RecordingSink:
    """A ChunkSink that keeps the compressed bytes as read, as the service's reader hands
    them on, and records what happened. Decoding is the consumer's side, as in the service:
    reading ``records`` (or ``corrupt``) decodes what arrived since, one decoder per
    connection; a consumer that finds a connection corrupt cuts it with ``disconnect``."""

    def __init__(self) -> None:
        self.chunks: list[tuple[int, bytes]] = []  # (connection id, compressed bytes)
        self.events: list[tuple[Any, ...]] = []
        self.is_ready = threading.Event()
        self.is_ready.set()
        self.gate: threading.Event | None = None  # when set up, chunk() blocks on it
        self.in_chunk = threading.Event()
        self.answer = True
        self.upstream: Upstream | None = None  # set by Runner: closed() notes last_close_clean
        self.lock = threading.RLock()  # reentrant: callers may hold it while reading records
        self._connection = 0
        self._decoders: dict[int, RecordDecoder] = {}
        self._decoded: list[bytes] = []
        self._corrupt: dict[int, str] = {}  # connection id -> what its decoder found
        self._taken = 0  # how many of ``chunks`` are decoded

    waiting = "waiting_kafka"

    def ready(self, timeout: float) -> bool:
        return self.is_ready.wait(timeout)

    def opened(self, connection_id: int) -> None:
        with self.lock:
            self._connection = connection_id
            self.events.append(("opened", connection_id, time.monotonic()))

    def chunk(self, data: bytes) -> bool:
        self.in_chunk.set()
        if self.gate is not None:
            self.gate.wait(10)
        with self.lock:
            self.chunks.append((self._connection, data))
        return self.answer

    def _decode(self) -> None:
        """Decode the chunks that arrived since the last call; the rest of a connection
        whose decoder failed cannot be decoded, as in the service's pump."""
        with self.lock:
            for connection, data in self.chunks[self._taken :]:
                if connection in self._corrupt:
                    continue
                decoder = self._decoders.setdefault(connection, RecordDecoder(1 << 20))
                try:
                    self._decoded.extend(decoder.feed(data))
                except UpstreamLost as exc:
                    self._corrupt[connection] = str(exc)
            self._taken = len(self.chunks)

    @property
    def records(self) -> list[bytes]:
        """Every record decoded from the bytes received so far, in order."""
        with self.lock:
            self._decode()
            return list(self._decoded)

    @property
    def corrupt(self) -> dict[int, str]:
        """Connection id -> why its bytes could not be decoded."""
        with self.lock:
            self._decode()
            return dict(self._corrupt)

    def closed(self, connection_id: int, reason: str) -> None:
        clean = self.upstream.last_close_clean if self.upstream is not None else None
        with self.lock:
            self.events.append(("closed", connection_id, time.monotonic(), reason, clean))

    def closes(self) -> list[tuple[Any, ...]]:
        with self.lock:
            return [e for e in self.events if e[0] == "closed"]


class CountingTokens:
    """A TokenProvider whose every fetch yields a new token."""

    renewable = True

    def __init__(self, fail: BaseException | None = None) -> None:
        self.fetches = 0
        self.invalidations = 0
        self.current: str | None = None
        self.fail = fail

    def token(self) -> str:
        if self.fail is not None:
            raise self.fail
        if self.current is None:
            self.fetches += 1
            self.current = f"{TOKEN}-{self.fetches}"
        return self.current

    def invalidate(self) -> None:
        self.invalidations += 1
        self.current = None


class Runner:
    """Upstream.run on its own thread; ``finish`` stops it and returns what it raised."""

    def __init__(
        self,
        upstream: Upstream,
        sink: RecordingSink,
        first_delay: float = 0.0,
        stop: Cancel | None = None,
    ):
        self.upstream, self.sink = upstream, sink
        sink.upstream = upstream
        self.stop = stop or Cancel()
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(first_delay,), daemon=True)
        self.started = time.monotonic()
        self.thread.start()

    def _run(self, first_delay: float) -> None:
        try:
            self.upstream.run(self.sink, self.stop, first_delay=first_delay)
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def finish(self, timeout: float = 5.0) -> BaseException | None:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "Upstream.run did not return after stop"
        return self.error


def make_upstream(
    url: str,
    tokens: Any = None,
    *,
    grace: float = 0.2,
    cap: float = 1.0,
    stall: float = 10.0,
    metrics: Metrics | None = None,
    sleep_event: threading.Event | None = None,
    secrets: Any = None,
    **settings: Any,
) -> Upstream:
    settings.setdefault("connect_timeout_s", 2.0)
    ls = LivestreamSettings(
        url=url, reconnect_grace_s=grace, backoff_cap_s=cap, stall_timeout_s=stall, **settings
    )
    auth = AuthSettings(access_token=TOKEN, client_id="sim-client")
    extra = {} if secrets is None else {"secrets": secrets}
    return Upstream(
        ls,
        auth,
        tokens or CountingTokens(),
        metrics or Metrics(),
        rng=random.Random(5),
        sleep_event=sleep_event,
        **extra,
    )


@pytest.fixture
def fake() -> Iterator[FakeLiveStream]:
    server = FakeLiveStream()
    yield server
    server.close()


def attempts(metrics: Metrics, outcome: str, status: str) -> float:
    return float(metrics.connection_attempts.labels(outcome=outcome, status=status)._value.get())


def attempt_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        {"level": r.levelname, **getattr(r, "fields", {})}
        for r in caplog.records
        if r.getMessage() == "upstream.attempt"
    ]


# -- Upstream against FakeLiveStream ----------------------------------------------------


def test_request_has_required_headers_and_query(fake: FakeLiveStream) -> None:
    """The GET is HTTP/1.1 with gzip, bearer token, x-api-key and the configured query."""
    fake.default = Stream(gz_records(b"{}"), end="hold")
    up = make_upstream(
        fake.url, reset="smallest", smoothing=True, smoothing_bucket_size=90, max_connections=3
    )
    run = Runner(up, RecordingSink())
    wait_until(lambda: len(fake.seen) == 1)
    seen = fake.seen[0]
    path, version = seen.request_line.split(" ")[1:]
    assert seen.request_line.startswith("GET /api/1/stream/test?")
    assert version == "HTTP/1.1"
    query = dict(p.split("=") for p in path.split("?", 1)[1].split("&"))
    assert query == {
        "maxConnections": "3",
        "reset": "smallest",
        "smoothing": "1",
        "smoothingBucketSize": "90",
    }
    assert seen.headers["accept-encoding"] == "gzip"
    assert seen.headers["authorization"] == f"Bearer {TOKEN}-1"
    assert seen.headers["x-api-key"] == "sim-client"
    assert run.finish() is None
    up.close()


def test_streams_records_and_counts_bytes(fake: FakeLiveStream) -> None:
    """A 200 stream's body reaches the sink intact, and the metrics follow it."""
    records = [json.dumps({"hitIdHigh": i, "pageName": "a b \u00e9"}).encode() for i in range(50)]
    body = gz_records(*records)
    fake.default = Stream(body, pieces=7, end="hold")
    metrics = Metrics()
    up = make_upstream(fake.url, metrics=metrics)
    sink = RecordingSink()
    run = Runner(up, sink)
    wait_until(lambda: len(sink.records) == 50)
    assert sink.records == records
    assert up.state == "streaming"
    assert metrics.upstream_connected._value.get() == 1
    assert metrics.bytes_compressed._value.get() == len(body)
    assert attempts(metrics, "connected", "200") == 1
    assert run.finish() is None
    assert metrics.upstream_connected._value.get() == 0
    assert up.state == "idle"
    assert up.last_close_clean
    assert sink.closes()[0][3] == "stop"
    up.close()


@pytest.mark.parametrize("code", [400, 405, 406, 505])
def test_client_bug_statuses_are_fatal_at_once(
    fake: FakeLiveStream, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    """400/405/406/505 raise FatalUpstreamError after one attempt and one ERROR line."""
    caplog.set_level(logging.INFO, logger="bridge")
    fake.default = Status(code, {"error": "x", "error_description": f"because {code}"})
    metrics = Metrics()
    up = make_upstream(fake.url, metrics=metrics)
    run = Runner(up, RecordingSink())
    assert run.done.wait(5)
    assert isinstance(run.error, FatalUpstreamError)
    assert run.error.status == code
    assert f"because {code}" in str(run.error)
    assert len(fake.seen) == 1
    assert fake.seen[0].headers["accept-encoding"] == "gzip"  # a 406 is never our doing
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].fields["status"] == code  # type: ignore[attr-defined]
    assert errors[0].fields["error_description"] == f"because {code}"  # type: ignore[attr-defined]
    assert attempts(metrics, "fatal", str(code)) == 1
    run.finish()
    up.close()


def test_persistent_404_is_fatal_on_the_third(fake: FakeLiveStream) -> None:
    """404 is retried with backoff; the third in a row raises FatalUpstreamError."""
    fake.default = Status(404, {"error_description": "stream disabled"})
    metrics = Metrics()
    up = make_upstream(fake.url, grace=0.2, cap=0.6, metrics=metrics)
    run = Runner(up, RecordingSink())
    assert run.done.wait(5)
    assert isinstance(run.error, FatalUpstreamError) and run.error.status == 404
    times = [s.t for s in fake.seen]
    assert len(times) == 3
    assert all(b - a >= 0.2 - SLACK for a, b in itertools.pairwise(times))
    assert attempts(metrics, "retry", "404") == 2
    assert attempts(metrics, "fatal", "404") == 1
    up.close()


def test_404_count_restarts_after_another_answer(fake: FakeLiveStream) -> None:
    """Two 404s, a 503, then two 404s do not add up to a fatal third 404 in a row."""
    fake.script = [Status(404), Status(404), Status(503), Status(404), Status(404)]
    fake.default = Stream(gz_records(b'{"ok":1}'))
    up = make_upstream(fake.url, grace=0.05, cap=0.1)
    sink = RecordingSink()
    run = Runner(up, sink)
    wait_until(lambda: sink.records == [b'{"ok":1}'], timeout=5)
    assert run.finish() is None
    up.close()


def test_401_gets_a_new_token_and_waits_the_grace(fake: FakeLiveStream) -> None:
    """A 401 invalidates the token; the next attempt, after the grace, carries a new one."""
    fake.script = [Status(401, {"error_description": "expired"})]
    fake.default = Stream(gz_records(b'{"a":1}'))
    tokens = CountingTokens()
    metrics = Metrics()
    up = make_upstream(fake.url, tokens, grace=0.3, cap=3.0, metrics=metrics)
    sink = RecordingSink()
    run = Runner(up, sink)
    wait_until(lambda: sink.records == [b'{"a":1}'])
    first, second = fake.seen
    assert first.headers["authorization"] == f"Bearer {TOKEN}-1"
    assert second.headers["authorization"] == f"Bearer {TOKEN}-2"
    assert tokens.invalidations == 1
    assert second.t - first.t >= 0.3 - SLACK
    assert attempts(metrics, "retry", "401") == 1
    assert run.finish() is None
    up.close()


def test_repeated_401_turns_into_backoff(
    fake: FakeLiveStream, caplog: pytest.LogCaptureFixture
) -> None:
    """Two 401s wait the grace; from the third 401 in a row on the waits are refusal backoff."""
    caplog.set_level(logging.INFO, logger="bridge")
    fake.default = Status(401)
    tokens = CountingTokens()
    up = make_upstream(fake.url, tokens, grace=0.05, cap=0.2)
    run = Runner(up, RecordingSink())
    wait_until(lambda: len(fake.seen) >= 5)
    run.finish()
    lines = [line for line in attempt_lines(caplog) if line["status"] == 401][:5]
    assert [line["delay_s"] for line in lines[:2]] == [0.05, 0.05]
    assert [line.get("refusals") for line in lines] == [None, None, 1, 2, 3]
    assert tokens.fetches >= 5
    up.close()


@pytest.mark.parametrize("code", [409, 500, 502, 503, 504, 429])
def test_refusals_back_off_then_recover(fake: FakeLiveStream, code: int) -> None:
    """Refusals are retried no sooner than the grace and no later than the cap."""
    fake.script = [Status(code, {"error_description": "busy"})] * 4
    fake.default = Stream(gz_records(b'{"b":2}'))
    metrics = Metrics()
    up = make_upstream(fake.url, grace=0.1, cap=0.4, metrics=metrics)
    sink = RecordingSink()
    run = Runner(up, sink)
    wait_until(lambda: sink.records == [b'{"b":2}'], timeout=10)
    times = [s.t for s in fake.seen]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 4
    assert all(0.1 - SLACK <= g <= 0.4 + 0.3 for g in gaps)
    assert attempts(metrics, "retry", str(code)) == 4
    assert run.finish() is None
    up.close()


def test_redirect_to_another_port_keeps_headers_and_query(fake: FakeLiveStream) -> None:
    """A 302 to another host:port is followed with Authorization, x-api-key and the query;
    the next connection starts again from the configured URL."""
    other = FakeLiveStream()
    try:
        fake.default = Status(302, headers={"Location": other.url.replace("test", "moved")})
        other.default = Stream(gz_records(b'{"r":1}'), end="drop")
        up = make_upstream(fake.url, grace=0.1, max_connections=2)
        sink = RecordingSink()
        run = Runner(up, sink)
        wait_until(lambda: len(other.seen) >= 2)
        assert run.finish() is None
        hop = other.seen[0]
        assert hop.request_line.startswith("GET /api/1/stream/moved?maxConnections=2 ")
        assert hop.headers["authorization"] == f"Bearer {TOKEN}-1"
        assert hop.headers["x-api-key"] == "sim-client"
        assert hop.headers["accept-encoding"] == "gzip"
        assert len(fake.seen) >= 2  # the reconnect went to the configured URL first
        assert sink.records[0] == b'{"r":1}'
        up.close()
    finally:
        other.close()


def test_redirect_loop_is_a_refusal(fake: FakeLiveStream) -> None:
    """More than five redirects in one attempt count as a refusal, not a crash."""
    fake.default = Status(302, headers={"Location": fake.url})
    metrics = Metrics()
    up = make_upstream(fake.url, grace=0.05, cap=0.1, metrics=metrics)
    run = Runner(up, RecordingSink())
    wait_until(lambda: attempts(metrics, "retry", "302") >= 1)
    assert run.finish() is None
    assert len(fake.seen) >= 6
    up.close()


def test_server_drop_waits_the_grace(fake: FakeLiveStream) -> None:
    """After the server ends a stream, the next connection comes no sooner than the grace."""
    fake.script = [Stream(gz_records(b'{"c":1}'), end="drop")]
    fake.default = Stream(gz_records(b'{"c":2}'), end="finish")
    up = make_upstream(fake.url, grace=0.3, cap=1.0)
    sink = RecordingSink()
    run = Runner(up, sink)
    wait_until(lambda: len(fake.seen) >= 3, timeout=5)
    assert run.finish() is None
    assert fake.seen[1].t - fake.dropped_at[0] >= 0.3 - SLACK
    assert fake.seen[2].t - fake.dropped_at[1] >= 0.3 - SLACK
    assert [c[4] for c in sink.closes()][:2] == [False, False]
    assert [c[3] for c in sink.closes()][:2] == [
        "reset: RemoteProtocolError: peer closed connection without sending complete "
        "message body (incomplete chunked read)",
        "eof",
    ]
    assert sink.records[:2] == [b'{"c":1}', b'{"c":2}']
    up.close()


def test_disconnect_wakes_a_blocked_read_and_sends_fin(fake: FakeLiveStream) -> None:
    """disconnect() from another thread ends a silent stream at once: the server sees our
    FIN, answers with its own, and the blocked read wakes; the close counts as clean."""
    fake.default = Stream(gz_records(b'{"d":1}'), end="hold")
    up = make_upstream(fake.url, grace=0.5, cap=2.0, stall=60.0)
    sink = RecordingSink()
    run = Runner(up, sink)
    wait_until(lambda: sink.records == [b'{"d":1}'])
    wait_until(lambda: up.state == "streaming")
    wait_until(lambda: in_socket_read(run.thread), what="the reader blocked in recv")
    asked = time.monotonic()
    threading.Thread(target=up.disconnect, args=("test",)).start()
    wait_until(lambda: fake.seen[0].closed_at is not None, timeout=1.0, what="server EOF")
    assert fake.seen[0].closed_at is not None
    assert fake.seen[0].closed_at - asked < 0.5
    wait_until(lambda: len(sink.closes()) == 1, timeout=1.0)
    assert sink.closes()[0][3] == "test"
    assert sink.closes()[0][4] is True
    wait_until(lambda: len(fake.seen) == 2, timeout=3.0)
    assert fake.seen[1].t - fake.seen[0].closed_at >= 0.5 - SLACK
    assert run.finish() is None
    up.close()


def test_disconnect_while_the_sink_blocks_closes_the_socket(fake: FakeLiveStream) -> None:
    """A disconnect while the reader is stuck in sink.chunk (back-pressure) frees the slot."""
    fake.default = Stream(gz_records(b'{"e":1}'), pieces=1, end="hold")
    up = make_upstream(fake.url, grace=5.0, cap=10.0)
    sink = RecordingSink()
    sink.gate = threading.Event()
    run = Runner(up, sink)
    assert sink.in_chunk.wait(5)
    up.disconnect("kafka unreachable")
    wait_until(lambda: fake.seen[0].closed_at is not None, timeout=1.0, what="server EOF")
    sink.gate.set()
    wait_until(lambda: len(sink.closes()) == 1)
    assert sink.closes()[0][3] == "kafka unreachable"
    assert sink.closes()[0][4] is True
    assert run.finish() is None
    assert len(fake.seen) == 1
    up.close()


def test_shutdown_wakes_a_read_when_the_server_ignores_fin(fake: FakeLiveStream) -> None:
    """If the server ignores our FIN, shutdown(SHUT_RDWR) after the linger wakes the read
    blocked in recv; such a forced close does not count as clean."""
    fake.default = Stream(gz_records(b'{"n":1}'), end="deaf")
    up = make_upstream(fake.url, grace=5.0, cap=10.0, stall=60.0)
    up.close_linger_s = 0.3
    sink = RecordingSink()
    run = Runner(up, sink)
    wait_until(lambda: sink.records == [b'{"n":1}'])
    wait_until(lambda: up.state == "streaming")
    wait_until(lambda: in_socket_read(run.thread), what="the reader blocked in recv")
    asked = time.monotonic()
    up.disconnect("test")
    wait_until(lambda: len(sink.closes()) == 1, timeout=2.0)
    took = sink.closes()[0][2] - asked
    assert 0.3 - SLACK <= took < 1.0
    assert sink.closes()[0][3:] == ("test", False)
    assert run.finish() is None
    up.close()


def test_a_server_talking_past_the_linger_is_cut_off_with_every_byte_delivered(
    fake: FakeLiveStream,
) -> None:
    """After disconnect() the bytes still arriving keep reaching the sink (Live Stream counts
    them as delivered); a server that never sends its FIN is cut off after the linger."""
    fake.default = Stream(gz_records(b'{"o":1}'), end="deaf_talking")
    metrics = Metrics()
    up = make_upstream(fake.url, grace=5.0, cap=10.0, metrics=metrics)
    up.close_linger_s = 0.4
    delivered: list[int] = []

    class CountingSink(RecordingSink):
        def chunk(self, data: bytes) -> bool:
            delivered.append(len(data))
            return super().chunk(data)

    sink = CountingSink()
    run = Runner(up, sink)
    wait_until(lambda: len(delivered) >= 3)
    asked = time.monotonic()
    up.disconnect("test")
    after = len(delivered)
    wait_until(lambda: len(sink.closes()) == 1, timeout=2.0)
    assert len(delivered) > after + 1  # the server sends a member every 20 ms
    assert metrics.bytes_compressed._value.get() == sum(delivered)  # nothing read was dropped
    assert sink.closes()[0][3:] == ("test", False)
    assert 0.4 - SLACK <= sink.closes()[0][2] - asked < 1.5
    wait_until(lambda: fake.seen[0].closed_at is not None, timeout=2.0)
    assert run.finish() is None
    up.close()


@pytest.mark.parametrize("answer", [True, False])
def test_bytes_after_our_fin_reach_the_sink_until_the_server_fin(
    fake: FakeLiveStream, answer: bool
) -> None:
    """Every record the server writes after our FIN, up to its own FIN, reaches the sink and
    the close stays clean, also when the sink answers False meanwhile (nothing restarts)."""
    head = [b'{"p":%d}' % i for i in range(3)]
    tail = tuple(b'{"q":%d}' % i for i in range(40))
    fake.default = Stream(gz_records(*head), end="talk_after_fin", tail=tail)
    up = make_upstream(fake.url, grace=5.0, cap=10.0)
    sink = RecordingSink()
    run = Runner(up, sink)
    wait_until(lambda: sink.records == head)
    sink.answer = answer
    up.disconnect("handover")
    wait_until(lambda: len(sink.closes()) == 1, timeout=3.0)
    assert sink.records == head + list(tail)  # 0 records lost
    assert sink.closes()[0][3:] == ("handover", True)
    assert [e[0] for e in sink.events] == ["opened", "closed"]
    assert run.finish() is None
    assert len(fake.seen) == 1
    up.close()


def test_sink_refusal_closes_cleanly(fake: FakeLiveStream) -> None:
    """chunk() returning False ends the stream cleanly with reason 'sink'."""
    fake.default = Stream(gz_records(b'{"f":1}'), end="hold")
    up = make_upstream(fake.url, grace=5.0, cap=10.0)
    sink = RecordingSink()
    sink.answer = False
    run = Runner(up, sink)
    wait_until(lambda: len(sink.closes()) == 1)
    wait_until(lambda: fake.seen[0].closed_at is not None, timeout=1.0)
    assert sink.closes()[0][3] == "sink"
    assert sink.closes()[0][4] is True
    assert run.finish() is None
    up.close()


def test_corrupt_body_is_a_drop(fake: FakeLiveStream) -> None:
    """Corrupt gzip found by the consumer's decoder ends the stream through disconnect(), as
    the service's pump ends it; the next connection comes after grace."""
    fake.script = [Stream(b"this is not gzip at all", end="hold")]
    fake.default = Stream(gz_records(b'{"g":1}'))
    up = make_upstream(fake.url, grace=0.3, cap=1.0)
    sink = RecordingSink()
    run = Runner(up, sink)
    found = wait_until(lambda: list(sink.corrupt.values()), what="the decoder to find corruption")
    up.disconnect(found[0])
    wait_until(lambda: sink.records == [b'{"g":1}'])
    assert sink.closes()[0][3] == "corrupt gzip stream"
    first = fake.seen[0].closed_at
    assert first is not None and fake.seen[1].t - first >= 0.3 - SLACK
    assert run.finish() is None
    up.close()


def test_stall_watchdog_drops_a_silent_stream(fake: FakeLiveStream) -> None:
    """A stream silent for longer than stall_timeout_s is dropped and retried after grace."""
    fake.script = [Stream(gz_records(b'{"h":1}'), end="hold")]
    fake.default = Stream(gz_records(b'{"h":2}'), end="hold")
    up = make_upstream(fake.url, grace=0.2, cap=1.0, stall=0.4)
    sink = RecordingSink()
    run = Runner(up, sink)
    wait_until(lambda: len(sink.records) == 2, timeout=5)
    closed = fake.seen[0].closed_at
    assert closed is not None
    assert closed - fake.seen[0].t >= 0.4 - SLACK
    assert fake.seen[1].t - closed >= 0.2 - SLACK
    assert sink.closes()[0][3:] == ("stall", False)
    assert run.finish() is None
    assert sink.records[:2] == [b'{"h":1}', b'{"h":2}']
    up.close()


def test_stop_ends_a_silent_stream_promptly(fake: FakeLiveStream) -> None:
    """Setting stop while the reader waits in recv returns run() and closes the socket."""
    fake.default = Stream(gz_records(b'{"i":1}'), end="hold")
    up = make_upstream(fake.url, stall=60.0)
    sink = RecordingSink()
    run = Runner(up, sink)
    wait_until(lambda: sink.records == [b'{"i":1}'])
    started = time.monotonic()
    assert run.finish(timeout=2.0) is None
    assert time.monotonic() - started < 1.0
    wait_until(lambda: fake.seen[0].closed_at is not None, timeout=1.0)
    up.close()


def test_first_delay_is_waited_and_interruptible(fake: FakeLiveStream) -> None:
    """No connection before first_delay; stop during it returns without connecting."""
    fake.default = Stream(gz_records(b'{"j":1}'))
    up = make_upstream(fake.url)
    run = Runner(up, RecordingSink(), first_delay=0.4)
    wait_until(lambda: len(fake.seen) == 1, timeout=3)
    assert fake.seen[0].t - run.started >= 0.4 - SLACK
    assert run.finish() is None
    waiting = Runner(up, RecordingSink(), first_delay=30.0)
    wait_until(lambda: up.state == "waiting")
    assert waiting.finish(timeout=1.0) is None
    assert len(fake.seen) == 1
    up.close()


def test_sleep_event_cuts_a_wait_short(fake: FakeLiveStream) -> None:
    """Setting the sleep_event ends the current between-attempts wait early."""
    fake.default = Stream(gz_records(b'{"k":1}'))
    wake = threading.Event()
    up = make_upstream(fake.url, sleep_event=wake)
    run = Runner(up, RecordingSink(), first_delay=60.0)
    wait_until(lambda: up.state == "waiting")
    wake.set()
    wait_until(lambda: len(fake.seen) == 1, timeout=2)
    assert run.finish() is None
    up.close()


def test_no_connection_while_the_sink_is_not_ready(fake: FakeLiveStream) -> None:
    """While sink.ready() says no, nothing connects; once it says yes, the stream opens."""
    fake.default = Stream(gz_records(b'{"l":1}'))
    up = make_upstream(fake.url)
    sink = RecordingSink()
    sink.is_ready.clear()
    run = Runner(up, sink)
    wait_until(lambda: up.state == "waiting")
    assert not run.stop.wait(0.3)  # a stretch in which a connection would have been made
    assert fake.seen == []
    sink.is_ready.set()
    wait_until(lambda: sink.records == [b'{"l":1}'])
    assert run.finish() is None
    up.close()


def test_auth_error_from_tokens_is_raised(fake: FakeLiveStream) -> None:
    """Credentials refused by the token endpoint end run() with AuthError, before any GET."""
    up = make_upstream(fake.url, CountingTokens(fail=AuthError("refused: 401")))
    run = Runner(up, RecordingSink())
    assert run.done.wait(5)
    assert isinstance(run.error, AuthError)
    assert fake.seen == []
    up.close()


def test_token_endpoint_outage_backs_off(fake: FakeLiveStream) -> None:
    """A token endpoint that is down is retried with refusal backoff, counted as errors."""
    metrics = Metrics()
    tokens = CountingTokens(fail=UpstreamLost("token endpoint answered 503", status=503))
    up = make_upstream(fake.url, tokens, grace=0.05, cap=0.1, metrics=metrics)
    run = Runner(up, RecordingSink())
    wait_until(lambda: attempts(metrics, "error", "none") >= 3)
    assert run.finish() is None
    assert fake.seen == []
    up.close()


def test_connection_refused_backs_off() -> None:
    """Nobody listening counts as an error attempt and is retried no sooner than grace."""
    port = free_port()
    metrics = Metrics()
    up = make_upstream(f"http://127.0.0.1:{port}/x", grace=0.1, cap=0.2, metrics=metrics)
    run = Runner(up, RecordingSink())
    started = time.monotonic()
    wait_until(lambda: attempts(metrics, "error", "none") >= 3)
    assert time.monotonic() - started >= 0.2 - SLACK
    assert run.finish() is None
    up.close()


def test_secrets_never_reach_logs_or_errors(
    fake: FakeLiveStream, caplog: pytest.LogCaptureFixture
) -> None:
    """Tokens echoed by the server in error bodies are scrubbed from logs and exceptions."""
    caplog.set_level(logging.DEBUG)
    fake.script = [
        Status(401, {"error_description": f"bad token {TOKEN}-1"}),
        Status(409, {"error_description": f"busy {TOKEN}-2"}),
    ]
    fake.default = Status(400, {"error_description": f"nope {TOKEN}-3"})
    up = make_upstream(fake.url, grace=0.05, cap=0.1)
    run = Runner(up, RecordingSink())
    assert run.done.wait(5)
    assert isinstance(run.error, FatalUpstreamError)
    text = caplog.text + str(run.error)
    text += "".join(json.dumps(getattr(r, "fields", {})) for r in caplog.records)
    assert TOKEN not in text
    assert "nope ***" in str(run.error)
    up.close()


def test_every_attempt_is_logged_once(
    fake: FakeLiveStream, caplog: pytest.LogCaptureFixture
) -> None:
    """Each attempt gives one upstream.attempt line; each stream end one upstream.closed."""
    caplog.set_level(logging.INFO, logger="bridge")
    fake.script = [Status(409), Stream(gz_records(b"{}"), end="drop")]
    fake.default = Status(405)
    up = make_upstream(fake.url, grace=0.05, cap=0.1)
    run = Runner(up, RecordingSink())
    assert run.done.wait(5)
    lines = attempt_lines(caplog)
    assert [(x["status"], x["outcome"]) for x in lines] == [
        (409, "retry"),
        (200, "connected"),
        (405, "fatal"),
    ]
    assert [x["attempt"] for x in lines] == [1, 2, 3]
    closed = [r for r in caplog.records if r.getMessage() == "upstream.closed"]
    assert len(closed) == 1
    fields = closed[0].fields  # type: ignore[attr-defined]
    assert fields["bytes"] > 0 and fields["delay_s"] == 0.05 and "duration_s" in fields
    up.close()


@pytest.fixture
def tls_cert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for 127.0.0.1, whose
    certificate the client trusts through SSL_CERT_FILE, as an operator would set it."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    return server_ctx


def test_disconnect_wakes_a_blocked_tls_read(tls_cert: ssl.SSLContext) -> None:
    """Over TLS too, disconnect() wakes a read blocked in recv and the server sees EOF."""
    tls = FakeLiveStream(tls=tls_cert)
    try:
        tls.default = Stream(gz_records(b'{"tls":1}'), end="hold")
        up = make_upstream(tls.url, grace=5.0, cap=10.0, stall=60.0)
        sink = RecordingSink()
        run = Runner(up, sink)
        wait_until(lambda: sink.records == [b'{"tls":1}'])
        wait_until(lambda: up.state == "streaming")
        wait_until(lambda: in_socket_read(run.thread), what="the reader blocked in recv")
        asked = time.monotonic()
        up.disconnect("test")
        wait_until(lambda: tls.seen[0].closed_at is not None, timeout=1.0, what="server EOF")
        assert (tls.seen[0].closed_at or 0) - asked < 0.5
        wait_until(lambda: len(sink.closes()) == 1, timeout=1.0)
        assert sink.closes()[0][3] == "test"
        assert run.finish() is None
        up.close()
    finally:
        tls.close()


# -- refusals, redirects and pending requests (issue 14) ---------------------------------


def in_function(thread: threading.Thread, name: str) -> bool:
    """Whether ``thread`` is inside a function called ``name`` right now."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == name:
            return True
        frame = frame.f_back
    return False


class LateStop(Cancel):
    """A stop that fires but wakes no waiter and runs no callback: holds open the moment
    between stop firing and anyone reacting to it."""

    def __init__(self) -> None:
        super().__init__()
        self._never = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        return self._never.wait(timeout)

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        return lambda: None


@pytest.mark.parametrize("over_tls", [False, True], ids=["http", "https"])
def test_stop_ends_a_request_waiting_for_headers(
    over_tls: bool, request: pytest.FixtureRequest
) -> None:
    """A server that accepts and never answers (plain or TLS): stop ends the pending
    request within a second, the server sees the connection closed, and sink.opened is
    never called."""
    server = FakeLiveStream(tls=request.getfixturevalue("tls_cert") if over_tls else None)
    try:
        server.default = Mute()
        up = make_upstream(server.url, stall=60.0)
        sink = RecordingSink()
        run = Runner(up, sink)
        wait_until(lambda: len(server.seen) == 1 and up.state == "connecting")
        started = time.monotonic()
        assert run.finish(timeout=2.0) is None
        assert time.monotonic() - started < 1.0
        wait_until(lambda: server.seen[0].closed_at is not None, timeout=1.0, what="server EOF")
        assert sink.events == []
        assert not up.last_close_clean
        up.close()
    finally:
        server.close()


def test_stop_ends_a_connect_that_hangs() -> None:
    """stop ends an attempt whose TCP connect hangs (a full accept queue drops the SYN)
    within a second, long before the connect timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers: list[socket.socket] = []
        try:
            for _ in range(8):  # fill the accept queue until a connect no longer completes
                filler = socket.socket()
                fillers.append(filler)
                filler.settimeout(0.3)
                try:
                    filler.connect(("127.0.0.1", port))
                except TimeoutError:
                    break
            else:
                pytest.skip("the accept queue never filled")
            up = make_upstream(f"http://127.0.0.1:{port}/x", connect_timeout_s=30.0)
            sink = RecordingSink()
            run = Runner(up, sink)
            wait_until(lambda: in_function(run.thread, "connect_tcp"), what="a hanging connect")
            started = time.monotonic()
            assert run.finish(timeout=2.0) is None
            assert time.monotonic() - started < 1.0
            assert sink.events == []
            up.close()
        finally:
            for filler in fillers:
                filler.close()


def test_disconnect_ends_a_request_waiting_for_headers(
    fake: FakeLiveStream, caplog: pytest.LogCaptureFixture
) -> None:
    """disconnect() (leadership lost, say) ends a request still waiting for headers at
    once; the attempt is logged as cancelled and the next one comes after the grace."""
    caplog.set_level(logging.INFO, logger="bridge")
    fake.script = [Mute()]
    fake.default = Stream(gz_records(b'{"u":1}'))
    metrics = Metrics()
    up = make_upstream(fake.url, grace=0.3, cap=5.0, stall=60.0, metrics=metrics)
    sink = RecordingSink()
    run = Runner(up, sink)
    wait_until(lambda: len(fake.seen) == 1 and up.state == "connecting")
    asked = time.monotonic()
    up.disconnect("deposed")
    wait_until(lambda: fake.seen[0].closed_at is not None, timeout=1.0, what="server EOF")
    assert (fake.seen[0].closed_at or 0) - asked < 0.5
    wait_until(lambda: sink.records == [b'{"u":1}'], timeout=3.0)
    first = attempt_lines(caplog)[0]
    assert (first["attempt"], first["outcome"], first["delay_s"]) == (1, "cancelled", 0.3)
    assert fake.seen[1].t - (fake.seen[0].closed_at or 0) >= 0.3 - SLACK
    assert attempts(metrics, "cancelled", "none") == 1
    assert [e[:2] for e in sink.events if e[0] == "opened"] == [("opened", 2)]
    assert run.finish() is None
    up.close()


def test_headers_arriving_after_stop_are_never_opened(fake: FakeLiveStream) -> None:
    """A 200 whose headers arrive after stop was set is closed at once without
    sink.opened: a deposed leader never completes a connection it no longer owns."""
    release = threading.Event()
    fake.default = Mute(release=release, then=Stream(gz_records(b'{"v":1}'), end="hold"))
    metrics = Metrics()
    up = make_upstream(fake.url, stall=60.0, metrics=metrics)
    sink = RecordingSink()
    run = Runner(up, sink, stop=LateStop())
    wait_until(lambda: len(fake.seen) == 1 and up.state == "connecting")
    run.stop.set()
    release.set()
    assert run.done.wait(2.0)
    assert run.error is None
    wait_until(lambda: fake.seen[0].closed_at is not None, timeout=1.0, what="server EOF")
    assert sink.events == [] and sink.records == []
    assert attempts(metrics, "cancelled", "200") == 1
    assert attempts(metrics, "connected", "200") == 0
    assert not up.last_close_clean
    up.close()


def test_redirect_elsewhere_over_plain_http_is_refused(
    fake: FakeLiveStream, caplog: pytest.LogCaptureFixture
) -> None:
    """A 302 to plain http on another host never gets the token: it is a refusal, backed
    off and logged with the target's host only."""
    caplog.set_level(logging.INFO, logger="bridge")
    other = FakeLiveStream()
    try:
        moved = other.url.replace("127.0.0.1", "localhost") + f"?leak={TOKEN}"
        fake.default = Status(302, headers={"Location": moved})
        metrics = Metrics()
        up = make_upstream(fake.url, grace=0.05, cap=0.1, metrics=metrics)
        run = Runner(up, RecordingSink())
        wait_until(lambda: attempts(metrics, "retry", "302") >= 2)
        assert run.finish() is None
        assert other.seen == []
        refused = [r for r in caplog.records if r.getMessage() == "upstream.redirect_refused"]
        assert refused and refused[0].fields["to"] == "localhost"  # type: ignore[attr-defined]
        lines = attempt_lines(caplog)
        assert [line.get("refusals") for line in lines[:2]] == [1, 2]
        text = caplog.text + "".join(json.dumps(getattr(r, "fields", {})) for r in caplog.records)
        assert TOKEN not in text
        up.close()
    finally:
        other.close()


def test_redirect_over_https_to_a_host_off_the_list_is_refused(
    fake: FakeLiveStream, caplog: pytest.LogCaptureFixture
) -> None:
    """A 302 to https on a host outside the allow-list is refused without any connection."""
    caplog.set_level(logging.INFO, logger="bridge")
    fake.default = Status(302, headers={"Location": "https://livestream.adobe.net.evil.test/x"})
    metrics = Metrics()
    up = make_upstream(fake.url, grace=0.05, cap=0.1, metrics=metrics)
    run = Runner(up, RecordingSink())
    wait_until(lambda: attempts(metrics, "retry", "302") >= 1)
    assert run.finish() is None
    refused = [r for r in caplog.records if r.getMessage() == "upstream.redirect_refused"]
    assert refused[0].fields["to"] == "livestream.adobe.net.evil.test"  # type: ignore[attr-defined]
    up.close()


@pytest.mark.parametrize(
    "target,allowed",
    [
        ("https://livestream.adobe.net/api/1/stream/x", True),
        ("https://eu.livestream.adobe.net:8443/api/1/stream/x", True),
        ("https://LiveStream.Adobe.NET/x", True),
        ("http://livestream.adobe.net/x", False),  # plain http: the token would be readable
        ("https://adobe.net/x", False),  # *.adobe.net names subdomains only
        ("https://evil-adobe.net/x", False),
        ("https://livestream.adobe.net.evil.test/x", False),
        ("http://origin.example:9000/elsewhere", True),  # the configured scheme and host
        ("https://origin.example/x", False),  # same host, other scheme
        ("http://other.example/x", False),
    ],
)
def test_redirect_targets_follow_the_allow_list(target: str, allowed: bool) -> None:
    """Only https to an allow-listed host, or the configured scheme and host, is followed."""
    from bridge.livestream import redirect_allowed

    origin = httpx.URL("http://origin.example:8000/api/1/stream/x")
    assert redirect_allowed(httpx.URL(target), origin, ("*.adobe.net",)) is allowed


def test_redirect_allow_list_is_a_setting() -> None:
    """The allow-list defaults to Adobe's domains and takes exact hosts and *.domain."""
    default = LivestreamSettings(url="https://livestream.adobe.net/api/1/stream/x")
    assert default.redirect_hosts == "*.adobe.net"
    mine = LivestreamSettings(url="http://127.0.0.1/x", redirect_hosts="a.example, *.b.example")
    assert mine.redirect_hosts == "a.example, *.b.example"
    with pytest.raises(ValueError):
        LivestreamSettings(url="http://127.0.0.1/x", redirect_hosts="https://a.example/")


def test_deeply_nested_error_body_is_no_description(
    fake: FakeLiveStream, caplog: pytest.LogCaptureFixture
) -> None:
    """A 409 whose body is 60,000 '[' does not kill the reader: no description, backoff."""
    caplog.set_level(logging.INFO, logger="bridge")
    fake.script = [Status(409, raw=b"[" * 60_000)]
    fake.default = Stream(gz_records(b'{"w":1}'))
    metrics = Metrics()
    up = make_upstream(fake.url, grace=0.05, cap=0.1, metrics=metrics)
    sink = RecordingSink()
    run = Runner(up, sink)
    wait_until(lambda: sink.records == [b'{"w":1}'] or run.done.is_set())
    assert run.error is None
    assert sink.records == [b'{"w":1}']
    assert attempt_lines(caplog)[0]["error_description"] == ""
    assert attempts(metrics, "retry", "409") == 1
    assert run.finish() is None
    up.close()


def test_gzipped_error_body_is_read_within_the_cap(
    fake: FakeLiveStream, caplog: pytest.LogCaptureFixture
) -> None:
    """A gzip-encoded error body is decoded for its description; one that inflates far past
    the cap yields no description and no crash."""
    caplog.set_level(logging.INFO, logger="bridge")
    small = gzip.compress(json.dumps({"error_description": "migrating"}).encode())
    bomb = gzip.compress(b'{"error_description": "' + b"x" * 10_000_000 + b'"}')
    fake.script = [
        Status(503, raw=small, headers={"Content-Encoding": "gzip"}),
        Status(503, raw=bomb, headers={"Content-Encoding": "gzip"}),
    ]
    fake.default = Stream(gz_records(b'{"z":1}'))
    up = make_upstream(fake.url, grace=0.05, cap=0.1)
    sink = RecordingSink()
    run = Runner(up, sink)
    wait_until(lambda: sink.records == [b'{"z":1}'] or run.done.is_set(), timeout=10)
    assert run.error is None
    assert [line["error_description"] for line in attempt_lines(caplog)[:2]] == ["migrating", ""]
    assert run.finish() is None
    up.close()


def test_refused_static_token_is_a_configuration_error(
    fake: FakeLiveStream, caplog: pytest.LogCaptureFixture
) -> None:
    """A static token refused with 401 is retried after the grace twice, then AuthError
    (exit 3): it can never change by itself."""
    from bridge.auth import StaticToken

    caplog.set_level(logging.INFO, logger="bridge")
    fake.default = Status(401, {"error_description": "invalid token"})
    metrics = Metrics()
    up = make_upstream(fake.url, StaticToken(TOKEN), grace=0.2, cap=1.0, metrics=metrics)
    run = Runner(up, RecordingSink())
    assert run.done.wait(5)
    assert isinstance(run.error, AuthError)
    assert "401" in str(run.error) and TOKEN not in str(run.error)
    times = [seen.t for seen in fake.seen]
    assert len(times) == 3
    assert all(b - a >= 0.2 - SLACK for a, b in itertools.pairwise(times))
    assert [line["outcome"] for line in attempt_lines(caplog)] == ["retry", "retry", "fatal"]
    assert attempts(metrics, "fatal", "401") == 1
    up.close()


def test_403_is_fatal_with_adobes_description(fake: FakeLiveStream) -> None:
    """403 (not entitled) raises FatalUpstreamError carrying error_description, at once."""
    fake.default = Status(403, {"error": "forbidden", "error_description": "no Live Stream"})
    metrics = Metrics()
    up = make_upstream(fake.url, grace=0.05, cap=0.1, metrics=metrics)
    run = Runner(up, RecordingSink())
    assert run.done.wait(3)
    assert isinstance(run.error, FatalUpstreamError) and run.error.status == 403
    assert "no Live Stream" in str(run.error)
    assert len(fake.seen) == 1
    assert attempts(metrics, "fatal", "403") == 1
    up.close()


def test_unknown_status_is_retried_visibly(
    fake: FakeLiveStream, caplog: pytest.LogCaptureFixture
) -> None:
    """A status Live Stream does not document is retried with backoff, counted by status
    and logged as unexpected with Adobe's description."""
    caplog.set_level(logging.INFO, logger="bridge")
    fake.script = [Status(418, {"error_description": "teapot"})] * 2
    fake.default = Stream(gz_records(b'{"t":1}'))
    metrics = Metrics()
    up = make_upstream(fake.url, grace=0.1, cap=0.4, metrics=metrics)
    sink = RecordingSink()
    run = Runner(up, sink)
    wait_until(lambda: sink.records == [b'{"t":1}'], timeout=5)
    gaps = [b.t - a.t for a, b in itertools.pairwise(fake.seen)]
    assert len(gaps) == 2 and all(g >= 0.1 - SLACK for g in gaps)
    assert metrics.unexpected_statuses.labels(status="418")._value.get() == 2
    unexpected = [r for r in caplog.records if r.getMessage() == "upstream.unexpected_status"]
    assert len(unexpected) == 2 and unexpected[0].levelno == logging.WARNING
    assert unexpected[0].fields["status"] == 418  # type: ignore[attr-defined]
    assert unexpected[0].fields["error_description"] == "teapot"  # type: ignore[attr-defined]
    assert [line.get("refusals") for line in attempt_lines(caplog)[:2]] == [1, 2]
    assert run.finish() is None
    up.close()


def test_tokens_and_process_secrets_are_scrubbed_by_the_one_rule(
    fake: FakeLiveStream, caplog: pytest.LogCaptureFixture
) -> None:
    """Every token sent joins the process's Secrets, and Secrets.scrub cleans what the
    upstream logs, including secrets it never saw itself (a SASL password, say)."""
    from bridge.secrets import Secrets

    caplog.set_level(logging.DEBUG)
    secrets = Secrets()  # empty (so falsy) when handed over: it must still be the one used
    fake.script = [Status(409, {"error_description": f"busy {TOKEN}-1 sasl-password-5150"})]
    fake.default = Stream(gz_records(b'{"s":1}'))
    up = make_upstream(fake.url, grace=0.05, cap=0.1, secrets=secrets)
    secrets.add("sasl-password-5150")  # registered elsewhere in the process, later
    sink = RecordingSink()
    run = Runner(up, sink)
    wait_until(lambda: sink.records == [b'{"s":1}'])
    assert run.finish() is None
    assert secrets.found_in(f"{TOKEN}-1")
    text = caplog.text + "".join(json.dumps(getattr(r, "fields", {})) for r in caplog.records)
    assert not secrets.found_in(text)
    assert "busy *** ***" in text
    up.close()


# -- Upstream against the project's Live Stream simulator ------------------------------

GRACE = 1.0  # the reconnect grace of the simulator tests, shortened from 60 s


@pytest.fixture
def simulator() -> Iterator[Callable[..., Any]]:
    """``start(**config) -> Simulator``, stopped after the test."""
    from livestream_sim import Simulator, SimulatorConfig

    started: list[Simulator] = []

    def start(**config: Any) -> Simulator:
        sim = Simulator(SimulatorConfig(**config))
        sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


class SimClient:
    """An Upstream with OAuth tokens from the simulator, run on its own thread."""

    def __init__(self, sim: Any, *, secret: str = "sim-secret", **settings: Any) -> None:
        from bridge.auth import OAuthTokens

        settings.setdefault("reconnect_grace_s", GRACE)
        settings.setdefault("backoff_cap_s", 4.0)
        settings.setdefault("url", sim.stream_url)
        self.metrics = Metrics()
        self.http = httpx.Client(timeout=5.0)
        auth = AuthSettings(token_url=sim.token_url, client_id="sim-client", client_secret=secret)
        self.tokens = OAuthTokens(auth, self.http, self.metrics)
        ls = LivestreamSettings(connect_timeout_s=2.0, **settings)
        self.upstream = Upstream(ls, auth, self.tokens, self.metrics, rng=random.Random(3))
        self.sink = RecordingSink()
        self.run = Runner(self.upstream, self.sink)

    def hit_ids(self) -> set[str]:
        with self.sink.lock:
            records = list(self.sink.records)
        return {f"{r['hitIdHigh']}:{r['hitIdLow']}" for r in map(json.loads, records)}

    def finish(self) -> BaseException | None:
        try:
            return self.run.finish()
        finally:
            self.upstream.close()
            self.http.close()


def streams(sim: Any) -> list[dict[str, Any]]:
    return [a for a in sim.attempts() if a["status"] == 200]


def test_sim_streams_every_record_through_a_redirect(simulator: Callable[..., Any]) -> None:
    """Through a 302 to another port the stream stays authorised and every record the
    simulator wrote is decoded once the server ends the stream."""
    sim = simulator(rate=300.0, redirect=True, redirect_port=0)
    client = SimClient(sim)
    wait_until(lambda: len(client.sink.records) >= 100, timeout=10)
    sim.drop_connections(mid_chunk=True)
    wait_until(lambda: len(client.sink.closes()) == 1, timeout=5)
    emitted = set(sim.emitted_hit_ids())
    assert client.finish() is None
    assert emitted and emitted <= client.hit_ids()
    statuses = [a["status"] for a in sim.attempts()]
    assert statuses[:2] == [302, 200]
    assert 401 not in statuses


def test_client_requests_are_never_refused_as_malformed(simulator: Callable[..., Any]) -> None:
    """Our requests never earn 405, 406 or 505: GET, gzip and HTTP/1.1 every time."""
    sim = simulator(rate=50.0)
    client = SimClient(sim)
    wait_until(lambda: len(streams(sim)) == 1, timeout=5)
    assert client.finish() is None
    assert {a["status"] for a in sim.attempts()} == {200}


def test_sim_400_for_a_bad_parameter_is_fatal(simulator: Callable[..., Any]) -> None:
    """maxConnections above what the stream allows gets 400: fatal after one attempt."""
    sim = simulator(rate=10.0, max_connections_allowed=2)
    client = SimClient(sim, max_connections=3)
    assert client.run.done.wait(5)
    error = client.finish()
    assert isinstance(error, FatalUpstreamError) and error.status == 400
    assert "maxConnections" in str(error)
    assert [a["status"] for a in sim.attempts()] == [400]


@pytest.mark.slow
def test_sim_persistent_404_is_fatal_after_three(simulator: Callable[..., Any]) -> None:
    """A stream name the simulator does not know: three 404s spaced by backoff, then fatal."""
    sim = simulator(rate=10.0)
    client = SimClient(sim, url=sim.stream_url + "-missing", backoff_cap_s=1.5)
    assert client.run.done.wait(10)
    assert isinstance(client.finish(), FatalUpstreamError)
    times = [a["t"] for a in sim.attempts()]
    assert [a["status"] for a in sim.attempts()] == [404] * 3
    assert all(GRACE - SLACK <= b - a <= 1.5 + 0.5 for a, b in itertools.pairwise(times))


def test_sim_refused_credentials_end_the_run(simulator: Callable[..., Any]) -> None:
    """A wrong client secret is refused by the token endpoint: AuthError, no stream GET."""
    sim = simulator(rate=10.0)
    client = SimClient(sim, secret="wrong-secret")
    assert client.run.done.wait(5)
    assert isinstance(client.finish(), AuthError)
    assert sim.attempts() == []


@pytest.mark.slow
def test_sim_expired_token_is_replaced_without_losing_records(
    simulator: Callable[..., Any],
) -> None:
    """Tokens that expire mid-run are replaced after a 401 and no record is lost."""
    sim = simulator(rate=300.0)
    client = SimClient(sim)
    wait_until(lambda: len(client.sink.records) >= 100, timeout=10)
    sim.expire_tokens()
    sim.drop_connections()
    wait_until(lambda: len(streams(sim)) == 2, timeout=10, what="a second 200 stream")
    wait_until(lambda: streams(sim)[1]["records_sent"] >= 100, timeout=10)
    sim.drop_connections()
    wait_until(lambda: len(client.sink.closes()) == 2, timeout=5)
    emitted = set(sim.emitted_hit_ids())
    assert client.finish() is None
    assert [a["status"] for a in sim.attempts()] == [200, 401, 200]
    assert client.metrics.token_refreshes.labels("ok")._value.get() == 2
    assert emitted <= client.hit_ids()
    first_end = sim.attempts()[0]["t"] + sim.attempts()[0]["duration_s"]
    assert sim.attempts()[1]["t"] - first_end >= GRACE - SLACK
    assert sim.attempts()[2]["t"] - sim.attempts()[1]["t"] >= GRACE - SLACK


@pytest.mark.slow
def test_sim_no_reconnect_before_grace_after_a_drop(simulator: Callable[..., Any]) -> None:
    """After the server drops the stream the next attempt comes no sooner than the grace."""
    sim = simulator(rate=100.0)
    client = SimClient(sim)
    for _ in range(2):
        wait_until(lambda: len(client.sink.records) > 0 and client.upstream.state == "streaming")
        before = len(streams(sim))
        dropped = time.time()
        sim.drop_connections()
        wait_until(lambda: len(streams(sim)) == before + 1, timeout=5)  # noqa: B023
        assert streams(sim)[-1]["t"] - dropped >= GRACE - SLACK
    assert client.finish() is None
    assert sim.max_concurrent_connections() == 1


@pytest.mark.slow
@pytest.mark.parametrize("code", [409, 503])
def test_sim_refusal_storm_follows_the_backoff(
    simulator: Callable[..., Any], code: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Under a storm of 409s (or 503s) every gap is at least the grace and at most the cap,
    each one the delay the policy chose; the stream resumes when the storm ends."""
    caplog.set_level(logging.INFO, logger="bridge.livestream")
    sim = simulator(rate=50.0)
    sim.set_mode("status", code=code)
    client = SimClient(sim, backoff_cap_s=3.0)
    wait_until(lambda: len(sim.attempts()) >= 6, timeout=20)
    sim.set_mode("normal")
    wait_until(lambda: len(streams(sim)) == 1, timeout=10)
    assert client.finish() is None
    refused = [a for a in sim.attempts() if a["status"] == code]
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(sim.attempts())]
    chosen = [line["delay_s"] for line in attempt_lines(caplog) if line["status"] == code]
    assert len(refused) >= 6 and len(gaps) == len(refused)
    for gap, delay in zip(gaps, chosen, strict=False):
        assert GRACE <= delay <= 3.0
        assert delay - SLACK <= gap <= delay + 0.5
    assert [line["refusals"] for line in attempt_lines(caplog) if line["status"] == code] == (
        list(range(1, len(refused) + 1))
    )


def test_sim_disconnect_frees_the_slot_at_once(simulator: Callable[..., Any]) -> None:
    """disconnect() from another thread closes cleanly: the simulator frees the slot at
    once, so the reconnect after the grace gets a 200 although ghosts live 60 s."""
    sim = simulator(rate=2000.0, ghost_s=60.0)
    client = SimClient(sim)
    wait_until(lambda: len(client.sink.records) >= 200, timeout=10)
    threading.Thread(target=client.upstream.disconnect, args=("handover",)).start()
    wait_until(lambda: sim.live_connections() == 0, timeout=1.0, what="the slot freed")
    wait_until(lambda: len(streams(sim)) == 2, timeout=GRACE + 3)
    assert client.finish() is None
    assert sim.attempts()[0]["reason"] == "client closed cleanly (FIN)"
    assert [a["status"] for a in sim.attempts()] == [200, 200]
    assert client.sink.closes()[0][3:] == ("handover", True)


def test_sim_stop_closes_cleanly(simulator: Callable[..., Any]) -> None:
    """Setting stop while streaming fast closes cleanly: no ghost slot is left behind."""
    sim = simulator(rate=0.0, ghost_s=60.0)
    client = SimClient(sim)
    wait_until(lambda: len(client.sink.records) >= 1000, timeout=20)
    assert client.finish() is None
    wait_until(lambda: sim.live_connections() == 0, timeout=1.0)
    assert sim.attempts()[0]["reason"] == "client closed cleanly (FIN)"
    assert sim.state()["ghosts"] == 0


@pytest.mark.slow
def test_sim_stall_is_dropped_and_retried_after_grace(simulator: Callable[..., Any]) -> None:
    """A stream that falls silent longer than stall_timeout_s is dropped by the watchdog
    and reconnected after the grace."""
    sim = simulator(rate=100.0)
    client = SimClient(sim, stall_timeout_s=1.0)
    wait_until(lambda: len(client.sink.records) > 0)
    sim.set_mode("stall")
    wait_until(lambda: len(client.sink.closes()) == 1, timeout=5)
    closed_at = time.time()
    sim.set_mode("normal")
    wait_until(lambda: len(streams(sim)) == 2, timeout=5)
    assert client.finish() is None
    assert client.sink.closes()[0][3:] == ("stall", False)
    assert streams(sim)[1]["t"] - closed_at >= GRACE - 0.2
    assert sim.state()["ghosts"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["garbage", "truncate"])
def test_sim_corrupt_stream_reconnects_after_grace(
    simulator: Callable[..., Any], fault: str
) -> None:
    """Garbage or a truncated gzip stream ends the connection; the next one comes after the
    grace and delivers records again."""
    sim = simulator(rate=100.0)
    client = SimClient(sim)
    wait_until(lambda: len(client.sink.records) > 0)
    sim.set_mode(fault)
    wait_until(lambda: len(streams(sim)) == 2, timeout=5)
    count = len(client.sink.records)
    wait_until(lambda: len(client.sink.records) > count, timeout=5)
    assert client.finish() is None
    first = streams(sim)[0]
    assert streams(sim)[1]["t"] - (first["t"] + first["duration_s"]) >= GRACE - SLACK


def test_sim_every_attempt_uses_a_fresh_connection(simulator: Callable[..., Any]) -> None:
    """Built the way the service builds it, the upstream opens a new TCP connection for
    every attempt: four attempts refused with 409 come from four distinct client ports."""
    from bridge.config import ElectionSettings, HttpSettings, KafkaSettings, Settings
    from bridge.service import Bridge

    sim = simulator(rate=50.0)
    sim.set_mode("status", code=409)
    settings = Settings(
        _env_file=None,
        livestream=LivestreamSettings(
            url=sim.stream_url, reconnect_grace_s=0.1, backoff_cap_s=0.3, connect_timeout_s=2.0
        ),
        auth=AuthSettings(
            token_url=sim.token_url, client_id="sim-client", client_secret="sim-secret"
        ),
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"),  # never contacted here
        election=ElectionSettings(backend="none"),
        http=HttpSettings(port=0),
    )
    bridge = Bridge(settings)
    sink = RecordingSink()
    run = Runner(bridge.upstream, sink)
    try:
        wait_until(lambda: len(sim.attempts()) >= 4, timeout=10)
        sim.set_mode("normal")
        wait_until(lambda: len(streams(sim)) == 1, timeout=10)
        assert run.finish() is None
    finally:
        run.stop.set()
        bridge.upstream.close()
        bridge.http.close()
        bridge.endpoint.stop()  # never started, but its sockets are open since __init__
    refused = [a for a in sim.attempts() if a["status"] == 409]
    assert len(refused) >= 4
    ports = [a["client"].rsplit(":", 1)[1] for a in sim.attempts()]
    assert len(set(ports)) == len(ports), ports


# -- Live Stream's 2026 API changes, and what the upstream loop tells Prometheus -------


def gauge(metric: Any, **labels: str) -> float:
    child = metric.labels(**labels) if labels else metric
    return float(child._value.get())


def upstream_state(metrics: Metrics) -> str | None:
    """The one state at 1 (None while a change is half made)."""
    from bridge.observability import UPSTREAM_STATES

    on = [s for s in UPSTREAM_STATES if gauge(metrics.upstream_state, state=s) == 1]
    return on[0] if len(on) == 1 else None


class TrailMetrics(Metrics):
    """The real Metrics, also remembering every upstream state set, in order, with the
    backoff gauge's value when that state was left (the loop sets the state, then the
    backoff; a 1 ms sampler missed states a loopback server makes last microseconds)."""

    def __init__(self) -> None:
        self.trail: list[tuple[str, float | None]] = []  # before __init__: it sets standby
        super().__init__()

    def set_upstream_state(self, state: str) -> None:
        if self.trail:
            self.trail[-1] = (self.trail[-1][0], gauge(self.upstream_backoff))
        self.trail.append((state, None))
        super().set_upstream_state(state)

    def states(self) -> list[str]:
        return [state for state, _ in self.trail]

    def backoffs(self, state: str) -> list[float | None]:
        """The backoff at the end of each phase spent in ``state`` (None: not left yet)."""
        return [backoff for s, backoff in self.trail if s == state]


def test_upstream_metrics_are_preinitialised() -> None:
    """Before any attempt: standby is the one state, backoff 0, and the contract's refusal
    and operator statuses already export a zero series."""
    text = Metrics().render().decode()
    assert 'livestream_bridge_upstream_state{state="standby"} 1.0' in text
    for state in ("connecting", "streaming", "waiting_grace", "backing_off", "refused"):
        assert f'livestream_bridge_upstream_state{{state="{state}"}} 0.0' in text
    assert 'livestream_bridge_upstream_state{state="waiting_kafka"} 0.0' in text
    assert "livestream_bridge_upstream_backoff_seconds 0.0" in text
    for status in ("409", "503", "500", "401", "404", "424", "403", "429"):
        assert f'livestream_bridge_upstream_refusals_total{{status="{status}"}} 0.0' in text
    for status in ("400", "403", "404", "405", "406", "424", "505"):
        assert f'livestream_bridge_upstream_fatal_status{{status="{status}"}} 0.0' in text
    with pytest.raises(ValueError):
        Metrics().set_upstream_state("dozing")


def test_424_is_explained_once_and_retried_with_the_refusal_backoff(
    fake: FakeLiveStream, caplog: pytest.LogCaptureFixture
) -> None:
    """A run of 424s: one ERROR line naming the enable URL and Adobe Customer Care, every
    retry within [grace, cap], the fatal-status gauge at 1 and the state refused meanwhile,
    no exception; the stream then opens and the gauge drops to 0."""
    caplog.set_level(logging.INFO, logger="bridge")
    why = "Stream not enabled for the latest API version"
    fake.script = [Status(424, {"error": "failed_dependency", "error_description": why})] * 3
    fake.default = Stream(gz_records(b'{"n":1}'))
    metrics = Metrics()
    up = make_upstream(fake.url, grace=0.3, cap=0.6, metrics=metrics)
    sink = RecordingSink()
    run = Runner(up, sink)
    wait_until(lambda: gauge(metrics.upstream_fatal_status, status="424") == 1)
    # The loop sets the state, then the backoff: wait for both (the wait lasts >= 0.3 s).
    wait_until(
        lambda: (
            upstream_state(metrics) == "refused" and 0.3 <= gauge(metrics.upstream_backoff) <= 0.6
        )
    )
    wait_until(lambda: sink.records == [b'{"n":1}'], timeout=5)
    assert run.error is None
    gaps = [b.t - a.t for a, b in itertools.pairwise(fake.seen)]
    assert len(gaps) == 3 and all(0.3 - SLACK <= g <= 0.6 + 0.3 for g in gaps)
    assert gauge(metrics.upstream_fatal_status, status="424") == 0
    assert gauge(metrics.upstream_refusals, status="424") == 3
    assert gauge(metrics.unexpected_statuses, status="424") == 0  # 424 is documented now
    told = [r for r in caplog.records if r.getMessage() == "upstream.stream_not_enabled"]
    assert len(told) == 1 and told[0].levelno == logging.ERROR
    hint = told[0].fields["hint"]  # type: ignore[attr-defined]
    assert f"GET http://127.0.0.1:{fake.port}/api/2/enable/test" in hint
    assert "Adobe Customer Care" in hint and "retries" in hint
    assert told[0].fields["error_description"] == why  # type: ignore[attr-defined]
    assert [line["status"] for line in attempt_lines(caplog)] == [424, 424, 424, 200]
    assert run.finish() is None
    up.close()


def test_424_never_ends_the_run(fake: FakeLiveStream, caplog: pytest.LogCaptureFixture) -> None:
    """A stream that stays not enabled is retried for as long as the run lasts (here more
    than MAX_404 times), explained once per streak: a 424 streak broken by a 503 is
    explained again."""
    caplog.set_level(logging.INFO, logger="bridge")
    fake.script = [*[Status(424)] * 4, Status(503), *[Status(424)] * 2]
    fake.default = Status(424)
    up = make_upstream(fake.url, grace=0.02, cap=0.05)
    run = Runner(up, RecordingSink())
    wait_until(lambda: len(fake.seen) >= 9, timeout=5)
    assert not run.done.is_set()
    assert run.finish() is None
    told = [r for r in caplog.records if r.getMessage() == "upstream.stream_not_enabled"]
    assert len(told) == 2
    up.close()


@pytest.mark.parametrize("code", [403, 400])
def test_fatal_status_leaves_refused_and_the_gauge_up(fake: FakeLiveStream, code: int) -> None:
    """A status that ends the run leaves upstream_state refused and its fatal-status gauge
    at 1 (the last thing a scrape sees before exit 3), the refusal counted."""
    fake.default = Status(code)
    metrics = Metrics()
    up = make_upstream(fake.url, metrics=metrics)
    run = Runner(up, RecordingSink())
    assert run.done.wait(5)
    assert isinstance(run.error, FatalUpstreamError)
    assert upstream_state(metrics) == "refused"
    assert gauge(metrics.upstream_fatal_status, status=str(code)) == 1
    assert gauge(metrics.upstream_refusals, status=str(code)) == 1
    up.close()


def test_only_the_last_answer_holds_the_fatal_gauge(fake: FakeLiveStream) -> None:
    """A 404 raises its gauge; the 409 after it lowers it again (the gauge says what the
    last answer was, not what happened once)."""
    fake.script = [Status(404), Status(409)]
    fake.default = Mute()
    metrics = Metrics()
    up = make_upstream(fake.url, grace=0.2, cap=0.3, metrics=metrics)
    run = Runner(up, RecordingSink())
    wait_until(lambda: gauge(metrics.upstream_fatal_status, status="404") == 1)
    wait_until(lambda: gauge(metrics.upstream_refusals, status="409") == 1)
    wait_until(lambda: upstream_state(metrics) == "connecting")  # the muted third attempt
    assert gauge(metrics.upstream_fatal_status, status="404") == 0
    assert run.finish() is None
    up.close()


def test_upstream_state_follows_the_loop(fake: FakeLiveStream) -> None:
    """409 -> backing_off (backoff gauge in [grace, cap]), 200 -> streaming (backoff 0),
    a closed stream -> waiting_grace (backoff = grace), 200 -> streaming, stop -> standby."""
    fake.script = [Status(409), Stream(gz_records(b'{"a":1}'), end="hold")]
    fake.default = Stream(gz_records(b'{"b":2}'), end="hold")
    metrics = TrailMetrics()
    up = make_upstream(fake.url, grace=0.25, cap=0.5, metrics=metrics)
    sink = RecordingSink()
    run = Runner(up, sink)
    wait_until(lambda: sink.records == [b'{"a":1}'] and upstream_state(metrics) == "streaming")
    up.disconnect("test")
    wait_until(lambda: sink.records == [b'{"a":1}', b'{"b":2}'], timeout=5)
    wait_until(lambda: upstream_state(metrics) == "streaming")
    assert run.finish() is None
    assert metrics.states() == [
        "standby",
        "connecting",
        "backing_off",
        "connecting",
        "streaming",
        "waiting_grace",
        "connecting",
        "streaming",
        "standby",
    ]
    backoff = metrics.backoffs("backing_off")[0]
    assert backoff is not None and 0.25 <= backoff <= 0.5
    assert metrics.backoffs("waiting_grace") == [0.25]
    assert metrics.backoffs("streaming") == [0.0, 0.0]
    assert upstream_state(metrics) == "standby" and up.reported_state == "standby"
    up.close()


def test_waiting_for_kafka_is_its_own_state(fake: FakeLiveStream) -> None:
    """While the sink (Kafka) cannot take a stream the state is waiting_kafka, not a
    backoff; once it can, the stream opens."""
    fake.default = Stream(gz_records(b'{"k":1}'))
    metrics = Metrics()
    up = make_upstream(fake.url, metrics=metrics)
    sink = RecordingSink()
    sink.is_ready.clear()
    run = Runner(up, sink)
    wait_until(lambda: upstream_state(metrics) == "waiting_kafka")
    assert gauge(metrics.upstream_backoff) == 0
    sink.is_ready.set()
    wait_until(lambda: upstream_state(metrics) == "streaming")
    assert run.finish() is None
    up.close()


def request_target(seen: Seen) -> str:
    return seen.request_line.split(" ")[1]


@pytest.mark.parametrize("reset", ["smallest", "largest", "earliest", "latest"])
def test_api_2_url_keeps_its_query_and_reset_is_sent_as_configured(
    fake: FakeLiveStream, reset: str
) -> None:
    """A /api/2/stream/<name>?beta=true URL is requested as it is, with maxConnections and
    reset merged into its query; a maxConnections in the URL yields to the setting; reset
    goes out exactly as configured, either spelling."""
    fake.default = Stream(gz_records(b"{}"), end="hold")
    url = fake.url.replace("/api/1/", "/api/2/") + "?beta=true&maxConnections=7"
    up = make_upstream(url, reset=reset, max_connections=2)
    run = Runner(up, RecordingSink())
    wait_until(lambda: len(fake.seen) == 1)
    assert request_target(fake.seen[0]) == (
        f"/api/2/stream/test?beta=true&maxConnections=2&reset={reset}"
    )
    assert run.finish() is None
    up.close()


def test_redirect_keeps_the_query_of_its_location(fake: FakeLiveStream) -> None:
    """A Location carrying its own query (a data centre's, say) keeps it, with ours merged."""
    other = FakeLiveStream()
    try:
        target = other.url.replace("/api/1/", "/api/2/") + "?dc=pnw&beta=true"
        fake.default = Status(302, headers={"Location": target})
        other.default = Stream(gz_records(b'{"r":1}'), end="hold")
        up = make_upstream(fake.url + "?beta=true", max_connections=3)
        run = Runner(up, RecordingSink())
        wait_until(lambda: len(other.seen) == 1)
        assert request_target(fake.seen[0]) == "/api/1/stream/test?beta=true&maxConnections=3"
        assert request_target(other.seen[0]) == (
            "/api/2/stream/test?dc=pnw&beta=true&maxConnections=3"
        )
        assert run.finish() is None
        up.close()
    finally:
        other.close()


@pytest.mark.parametrize(
    "url,expected",
    [
        (
            "https://livestream.adobe.net/api/1/stream/acme-prod",
            "https://livestream.adobe.net/api/2/enable/acme-prod",
        ),
        (
            "https://livestream.adobe.net/api/2/stream/acme-prod/?beta=true",
            "https://livestream.adobe.net/api/2/enable/acme-prod",
        ),
        (
            "https://user:pw-5150@livestream.adobe.net:443/api/1/stream/x",
            "https://livestream.adobe.net/api/2/enable/x",
        ),
        ("http://127.0.0.1:8081/api/1/stream/demo", "http://127.0.0.1:8081/api/2/enable/demo"),
        ("https://example.com/feed", None),
    ],
)
def test_enable_url_is_derived_from_the_stream_url(url: str, expected: str | None) -> None:
    """The fix a 424 names is /api/2/enable/<name> on the stream URL's scheme and host,
    never with user info; a URL naming no stream falls back to Adobe's documented form."""
    from bridge.reconnect import enable_url, not_enabled_hint

    assert enable_url(url) == expected
    hint = not_enabled_hint(url)
    assert (expected or "https://livestream.adobe.net/api/2/enable/<stream>") in hint
    assert "pw-5150" not in hint


def test_reset_spellings_are_validated() -> None:
    """earliest and latest are accepted like smallest and largest; anything else is not."""
    from pydantic import ValidationError

    for value in ("smallest", "largest", "earliest", "latest"):
        assert LivestreamSettings(url="https://x.adobe.net/s", reset=value).reset == value
    with pytest.raises(ValidationError):
        LivestreamSettings(url="https://x.adobe.net/s", reset="oldest")


def test_sim_424_until_the_named_fix_is_applied(
    simulator: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Against the simulator's not_enabled mode the bridge keeps retrying; calling the URL
    its log line names, with the usual headers, enables the stream and the same run
    streams without a restart."""
    caplog.set_level(logging.INFO, logger="bridge.livestream")
    sim = simulator(rate=100.0)
    sim.set_mode("not_enabled")
    client = SimClient(sim, reconnect_grace_s=0.2, backoff_cap_s=0.5)
    wait_until(lambda: len(sim.attempts()) >= 2, timeout=5)
    told = [r for r in caplog.records if r.getMessage() == "upstream.stream_not_enabled"]
    assert len(told) == 1
    hint: str = told[0].fields["hint"]  # type: ignore[attr-defined]
    enable = hint.split("GET ", 1)[1].split(" ", 1)[0]
    assert enable == f"{sim.base_url}/api/2/enable/demo"
    headers = {"Authorization": f"Bearer {client.tokens.token()}", "x-api-key": "sim-client"}
    assert httpx.get(enable, headers=headers).status_code == 200
    wait_until(lambda: len(client.sink.records) > 0, timeout=5)
    assert client.finish() is None
    statuses = [a["status"] for a in sim.attempts()]
    assert set(statuses[:-1]) == {424} and statuses[-1] == 200
    assert gauge(client.metrics.upstream_fatal_status, status="424") == 0


def test_sim_migrating_503_is_backed_off_and_quoted(
    simulator: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """503 'stream is migrating, try again': retried with the refusal backoff, each attempt
    line quoting Adobe's error_description; the stream resumes when the migration ends."""
    caplog.set_level(logging.INFO, logger="bridge.livestream")
    sim = simulator(rate=100.0)
    sim.set_mode("migrating")
    client = SimClient(sim, reconnect_grace_s=0.2, backoff_cap_s=0.6)
    wait_until(lambda: len(sim.attempts()) >= 3, timeout=5)
    sim.set_mode("normal")
    wait_until(lambda: len(client.sink.records) > 0, timeout=5)
    assert client.finish() is None
    refused = [line for line in attempt_lines(caplog) if line["status"] == 503]
    assert len(refused) >= 3
    assert {line["error_description"] for line in refused} == {"stream is migrating, try again"}
    assert all(0.2 <= line["delay_s"] <= 0.6 for line in refused)
    assert [line["refusals"] for line in refused] == list(range(1, len(refused) + 1))
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(sim.attempts())]
    assert all(g >= 0.2 - SLACK for g in gaps)
    assert gauge(client.metrics.upstream_refusals, status="503") == len(refused)


def test_sim_api_2_beta_url_streams(simulator: Callable[..., Any]) -> None:
    """The bridge reads the simulator's /api/2/stream/<name>?beta=true with reset=latest,
    and the simulator saw exactly that target."""
    sim = simulator(rate=100.0)
    url = f"{sim.base_url}/api/2/stream/demo?beta=true"
    client = SimClient(sim, url=url, reset="latest")
    wait_until(lambda: len(client.sink.records) > 0, timeout=5)
    assert client.finish() is None
    assert streams(sim)[0]["target"] == "/api/2/stream/demo?beta=true&maxConnections=1&reset=latest"
