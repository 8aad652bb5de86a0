"""Metrics, health endpoints and log lines: the operator's view."""

from __future__ import annotations

import io
import json
import logging
import selectors
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http import HTTPStatus

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.httpserver import BoundedHttpServer
from bridge.logs import EventLog, configure_logging
from bridge.observability import HttpEndpoint, Metrics, State
from bridge.secrets import Secrets


@pytest.fixture
def endpoint() -> Iterator[tuple[HttpEndpoint, State, list[bool]]]:
    """A running endpoint whose readiness a test can flip."""
    state = State(identity="replica-1")
    ready = [False]
    ep = HttpEndpoint("127.0.0.1", 0, Metrics(), state, lambda: ready[0])
    ep.start()
    yield ep, state, ready
    ep.stop()


def get(ep: HttpEndpoint, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ep.port}{path}", timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_metrics_are_preinitialised_and_parse() -> None:
    """Every counter family exists at zero before anything happened, with one prefix."""
    families = {f.name: f for f in text_string_to_metric_families(Metrics().render().decode())}
    for name in (
        "livestream_bridge_records_received",
        "livestream_bridge_records_published",
        "livestream_bridge_records_deduplicated",
        "livestream_bridge_records_dead_lettered",
        "livestream_bridge_upstream_connection_attempts",
        "livestream_bridge_transactions",
        "livestream_bridge_token_refreshes",
        "livestream_bridge_leadership_transitions",
    ):
        assert families[name].type == "counter", name
        assert all(s.value == 0 for s in families[name].samples if s.name.endswith("_total"))
    reasons = {
        s.labels["reason"]
        for s in families["livestream_bridge_records_dead_lettered"].samples
        if s.name.endswith("_total")
    }
    assert reasons == {"not_json", "not_object", "oversized", "missing_hit_id"}
    # One prefix for the bridge's own; process_* is prometheus_client's ProcessCollector.
    assert all(name.startswith(("livestream_bridge_", "process_")) for name in families)


def test_attempt_labels_stay_bounded() -> None:
    """Odd status codes fold into 'other' so the label set cannot grow without bound."""
    metrics = Metrics()
    metrics.attempt("retry", 418)
    metrics.attempt("retry", 599)
    value = metrics.registry.get_sample_value(
        "livestream_bridge_upstream_connection_attempts_total",
        {"outcome": "retry", "status": "other"},
    )
    assert value == 2


def test_readyz_follows_the_probe(endpoint: tuple[HttpEndpoint, State, list[bool]]) -> None:
    """/readyz answers 503 until the readiness probe says yes, then 200."""
    ep, _, ready = endpoint
    assert get(ep, "/readyz")[0] == 503
    ready[0] = True
    assert get(ep, "/readyz")[0] == 200


def test_healthz_fails_when_a_loop_stops_beating(
    endpoint: tuple[HttpEndpoint, State, list[bool]],
) -> None:
    """A loop that misses its beat deadline turns /healthz to 503 and names it."""
    ep, state, _ = endpoint
    assert get(ep, "/healthz")[0] == 200
    state.beat("pump", allowed_s=-1.0)  # already overdue
    status, body = get(ep, "/healthz")
    assert status == 503
    assert json.loads(body)["stale_loops"] == ["pump"]
    state.forget("pump")
    assert get(ep, "/healthz")[0] == 200


def test_status_reports_role_and_leader(endpoint: tuple[HttpEndpoint, State, list[bool]]) -> None:
    """/status is JSON with role, leader and identity."""
    ep, state, _ = endpoint
    state.set_role("standby", "replica-2")
    status, body = get(ep, "/status")
    data = json.loads(body)
    assert status == 200
    assert (data["role"], data["leader"], data["identity"]) == (
        "standby",
        "replica-2",
        "replica-1",
    )


def test_unknown_path_is_404(endpoint: tuple[HttpEndpoint, State, list[bool]]) -> None:
    """Anything else is 404, not a crash."""
    assert get(endpoint[0], "/nope")[0] == 404


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    """configure_logging rewires the root logger; give later tests theirs back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _capture(fmt: str, secrets: Secrets | list[str]) -> io.StringIO:
    buf = io.StringIO()
    configure_logging(fmt, "INFO", secrets)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buf)
    return buf


def test_json_log_lines_carry_event_and_fields() -> None:
    """A log call becomes one JSON object with level, event and the given fields."""
    buf = _capture("json", [])
    EventLog("t").info("upstream.attempt", status=409, delay_s=60.0)
    line = json.loads(buf.getvalue().strip())
    assert line["event"] == "upstream.attempt"
    assert (line["level"], line["status"], line["delay_s"]) == ("info", 409, 60.0)


def test_configured_secrets_are_redacted_from_log_lines() -> None:
    """A secret value that slips into a message or a field is replaced before output."""
    buf = _capture("text", ["hunter2-distinct"])
    EventLog("t").warning("oops hunter2-distinct", detail="token=hunter2-distinct")
    out = buf.getvalue()
    assert "hunter2-distinct" not in out
    assert out.count("***") == 2


PEM = "-----BEGIN PRIVATE KEY-----\nMIIpem-distinct\n-----END PRIVATE KEY-----"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_log_redactor_follows_the_live_secrets(fmt: str) -> None:
    """Secrets added after logging was configured (a fresh token, a multi-line key) are
    scrubbed from messages and nested fields, and a JSON line stays valid JSON."""
    secrets = Secrets(["configured-distinct"])
    buf = _capture(fmt, secrets)
    secrets.add("token-arrived-later")
    secrets.add(PEM)
    EventLog("t").info(
        "got token-arrived-later", conf=PEM, nested={"a": ["x configured-distinct y"]}
    )
    out = buf.getvalue()
    for value in ("token-arrived-later", "MIIpem-distinct", "configured-distinct"):
        assert value not in out
    assert out.count("***") == 3
    if fmt == "json":
        assert json.loads(out)["conf"] == "***"


def test_status_is_scrubbed_of_secrets() -> None:
    """/status never shows a secret value, even one that reached the state's text fields."""
    secrets, state = Secrets(["leader-secret-distinct"]), State(identity="replica-1")
    ep = HttpEndpoint("127.0.0.1", 0, Metrics(), state, lambda: True, secrets=secrets)
    ep.start()
    try:
        state.set_role("standby", "x-leader-secret-distinct")
        secrets.add("late-token-distinct")
        state.upstream = "error: late-token-distinct"
        status, body = get(ep, "/status")
    finally:
        ep.stop()
    assert status == 200
    assert b"leader-secret-distinct" not in body and b"late-token-distinct" not in body
    assert json.loads(body)["leader"] == "x-***"


def test_idle_half_requests_cannot_exhaust_the_endpoint(
    endpoint: tuple[HttpEndpoint, State, list[bool]],
) -> None:
    """300 connections each holding half a request line (slow-loris): /healthz still answers
    within a second and the process does not grow a thread per connection."""
    ep = endpoint[0]
    before = threading.active_count()
    held: list[socket.socket] = []
    try:
        for _ in range(300):
            conn = socket.create_connection(("127.0.0.1", ep.port), timeout=10)
            conn.sendall(b"GET /healthz HT")
            held.append(conn)
        started = time.monotonic()
        status, _ = get(ep, "/healthz")
        elapsed = time.monotonic() - started
        during = threading.active_count()
    finally:
        for conn in held:
            conn.close()
    print(f"\n/healthz under 300 idle connections: {elapsed:.3f}s, threads {before}->{during}")
    assert status == 200
    assert elapsed < 1.0
    assert during - before <= 2


def _closed_by_peer(conn: socket.socket, deadline_s: float, drip: bool) -> float | None:
    """Seconds until the server closed ``conn`` (None: still open at the deadline); with
    ``drip`` one more byte of the request line is sent every 0.1 s meanwhile."""
    conn.settimeout(0.1)
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        try:
            if drip:
                conn.sendall(b"X")
            if conn.recv(1) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:  # reset or broken pipe: closed as well
            return time.monotonic() - started
    return None


@pytest.mark.parametrize("drip", [False, True])
def test_a_request_must_arrive_within_the_timeout(drip: bool) -> None:
    """A connection that sends nothing more, or drips a byte at a time, is closed once the
    request timeout has passed since it was accepted."""
    ep = HttpEndpoint("127.0.0.1", 0, Metrics(), State(), lambda: True, request_timeout_s=0.5)
    ep.start()
    try:
        with socket.create_connection(("127.0.0.1", ep.port), timeout=5) as conn:
            conn.sendall(b"GET /hea")
            closed_after = _closed_by_peer(conn, 5.0, drip)
        assert get(ep, "/healthz")[0] == 200
    finally:
        ep.stop()
    assert closed_after is not None and 0.4 <= closed_after < 2.0, closed_after


def test_a_connection_dropped_twice_or_read_after_close_cannot_end_the_acceptor() -> None:
    """A pending connection dropped earlier in the same select batch (to make room for a new
    one) and then read again is ignored; the acceptor thread keeps serving."""
    server = BoundedHttpServer("127.0.0.1", 0, lambda path: (HTTPStatus.OK, b"ok", "text/plain"))
    client = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    conn, _ = server._listener.accept()
    conn.setblocking(False)
    server._pending[conn] = (time.monotonic() + 5, bytearray())
    server._selector.register(conn, selectors.EVENT_READ)
    server._drop(conn)
    server._drop(conn)  # once more: already gone, no error
    server._read_safely(conn)  # a stale event for a closed socket: no error
    assert conn not in server._pending
    client.close()
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=5) as answer:
            assert answer.status == 200
    finally:
        server.stop()
