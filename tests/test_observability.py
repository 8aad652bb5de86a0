"""Metrics, health endpoints and log lines: the operator's view."""

from __future__ import annotations

import io
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.observability import EventLog, HttpEndpoint, Metrics, State, configure_logging


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
    assert all(name.startswith("livestream_bridge_") for name in families)


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


def _capture(fmt: str, secrets: list[str]) -> io.StringIO:
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
