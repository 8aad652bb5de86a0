"""What an operator sees: Prometheus metrics, JSON logs, and the HTTP endpoint serving
/metrics, /healthz, /readyz and /status.

Nothing here is module-level state: a ``Metrics`` owns its own registry, so tests and
several bridges in one process never share counters.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from bridge import __version__
from bridge.freshness import CommittedHits
from bridge.httpserver import BoundedHttpServer
from bridge.secrets import Secrets

PREFIX = "livestream_bridge"
DLQ_REASONS = ("not_json", "not_object", "oversized", "missing_hit_id")
# cancelled: ended by stop/disconnect before it streamed (never handed to the sink)
ATTEMPT_OUTCOMES = ("connected", "retry", "fatal", "error", "cancelled")
ATTEMPT_STATUSES = (
    "none",
    "200",
    "302",
    "400",
    "401",
    "403",
    "404",
    "405",
    "406",
    "409",
    "429",
)
ATTEMPT_STATUSES_5XX = ("500", "502", "503", "504", "505", "other")
# What the upstream loop is doing; exactly one is 1 (see Metrics.set_upstream_state).
UPSTREAM_STATES = (
    "standby",
    "connecting",
    "streaming",
    "waiting_grace",
    "backing_off",
    "refused",
    "waiting_kafka",
    "waiting_slots",
)
REFUSAL_STATUSES = ("409", "503", "500", "401", "404", "424", "403", "429")
# Answers only an operator can fix (a setting, an entitlement, Adobe enabling the stream).
OPERATOR_STATUSES = ("400", "403", "404", "405", "406", "424", "505")


class Metrics:
    """Every metric the bridge exports, pre-initialised to zero."""

    def __init__(self, slots: int = 1) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        # With several slots the series that tell slots apart carry a ``slot`` label; with
        # one there is nothing to tell apart, and the series stay as they always were.
        self.slots = slots
        by_slot = ["slot"] if slots > 1 else []
        self._received = Counter(
            f"{PREFIX}_records_received", "Records read from Live Stream", by_slot, registry=r
        )
        self._published = Counter(
            f"{PREFIX}_records_published",
            "Records committed to the hits topic",
            by_slot,
            registry=r,
        )
        self.records_deduplicated = Counter(
            f"{PREFIX}_records_deduplicated", "Replayed records dropped by hit id", registry=r
        )
        self.records_dead_lettered = Counter(
            f"{PREFIX}_records_dead_lettered",
            "Malformed records sent to the dead-letter topic",
            ["reason"],
            registry=r,
        )
        self.bytes_compressed = Counter(
            f"{PREFIX}_upstream_compressed_bytes", "Bytes read from Live Stream", registry=r
        )
        self.bytes_decompressed = Counter(
            f"{PREFIX}_upstream_decompressed_bytes", "Bytes after gunzip", registry=r
        )
        self.connection_attempts = Counter(
            f"{PREFIX}_upstream_connection_attempts",
            "Connection attempts to Live Stream",
            ["outcome", "status"],
            registry=r,
        )
        self._connected = Gauge(
            f"{PREFIX}_upstream_connected",
            "1 while a Live Stream connection is open",
            by_slot,
            registry=r,
        )
        self.slot = Gauge(
            f"{PREFIX}_slot", "The maxConnections slot this replica holds (-1: none)", registry=r
        )
        self.last_record_timestamp = Gauge(
            f"{PREFIX}_last_record_timestamp_seconds",
            "Unix time the last record was read",
            registry=r,
        )
        # hit_freshness_seconds and the newest committed hit: observed at commit, see
        # bridge.freshness; the publisher feeds it, a scrape reads it.
        self.committed_hits = CommittedHits(PREFIX)
        r.register(self.committed_hits)
        self.publish_latency = Histogram(
            f"{PREFIX}_publish_latency_seconds",
            "Read time to delivery report",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.producer_queue = Gauge(
            f"{PREFIX}_producer_queue_messages", "Messages waiting in the producer", registry=r
        )
        self.transaction_commit = Histogram(
            f"{PREFIX}_transaction_commit_seconds",
            "Duration of each commit_transaction call, whether it committed or failed",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        # The gauges below are read at scrape time from whoever owns the value
        # (set_function): the pump never pays for them.
        self.reader_queue_bytes = Gauge(
            f"{PREFIX}_reader_queue_bytes",
            "Compressed bytes read from Live Stream and waiting for the pump",
            registry=r,
        )
        self.dedupe_window_ids = Gauge(
            f"{PREFIX}_dedupe_window_ids",
            "Hit ids the dedupe window holds (0 while standby)",
            registry=r,
        )
        self.dedupe_window_capacity = Gauge(
            f"{PREFIX}_dedupe_window_capacity_ids",
            "Hit ids the dedupe window is sized for (0: dedupe off)",
            registry=r,
        )
        self.kafka_unreachable = Gauge(
            f"{PREFIX}_kafka_unreachable_seconds",
            "How long Kafka has not taken data this replica gave it (0 while it does)",
            registry=r,
        )
        self.election_term = Gauge(
            f"{PREFIX}_election_term",
            "Number of the election term this replica leads (0 while standby)",
            registry=r,
        )
        self.leader = Gauge(f"{PREFIX}_leader", "1 while this replica leads", registry=r)
        self.leadership_transitions = Counter(
            f"{PREFIX}_leadership_transitions", "Role changes of this replica", registry=r
        )
        self.transactions = Counter(
            f"{PREFIX}_transactions", "Kafka transactions by result", ["result"], registry=r
        )
        self.token_refreshes = Counter(
            f"{PREFIX}_token_refreshes", "Access token fetches by outcome", ["outcome"], registry=r
        )
        self.unexpected_statuses = Counter(
            f"{PREFIX}_upstream_unexpected_statuses",
            "Live Stream answers with a status it does not document (retried), by status",
            ["status"],
            registry=r,
        )
        self.upstream_state = Gauge(
            f"{PREFIX}_upstream_state",
            "1 for the upstream loop's current state, 0 for the others",
            ["state"],
            registry=r,
        )
        self.upstream_backoff = Gauge(
            f"{PREFIX}_upstream_backoff_seconds",
            "Delay chosen before the next connection attempt (0 while connecting or streaming)",
            registry=r,
        )
        self.upstream_refusals = Counter(
            f"{PREFIX}_upstream_refusals",
            "Connection attempts Live Stream refused, by status",
            [*by_slot, "status"],
            registry=r,
        )
        self.upstream_fatal_status = Gauge(
            f"{PREFIX}_upstream_fatal_status",
            "1 while Live Stream's last answer was this status, which needs an operator",
            ["status"],
            registry=r,
        )
        self.build_info = Gauge(
            f"{PREFIX}_build_info", "Build information", ["version"], registry=r
        )
        self.build_info.labels(version=__version__).set(1)
        ProcessCollector(registry=r)  # process_* (RSS, CPU, open fds) of this process
        self._preinit()
        self.bind_slot(0)
        self.slot.set(-1)

    def bind_slot(self, slot: int) -> None:
        """Count from now on under ``slot`` (a replica holds one slot at a time)."""
        label = {"slot": str(slot)} if self.slots > 1 else {}
        self.records_received = self._received.labels(**label) if label else self._received
        self.records_published = self._published.labels(**label) if label else self._published
        self.upstream_connected = self._connected.labels(**label) if label else self._connected
        self._slot_label = label

    def refused(self, status: str) -> None:
        """Count a connection attempt Live Stream refused with ``status``."""
        self.upstream_refusals.labels(status=status, **self._slot_label).inc()

    def _preinit(self) -> None:
        # Labelled series only appear once touched; zeros make rate() and alerts work
        # from the first scrape.
        for reason in DLQ_REASONS:
            self.records_dead_lettered.labels(reason=reason)
        for outcome in ATTEMPT_OUTCOMES:
            for status in (*ATTEMPT_STATUSES, *ATTEMPT_STATUSES_5XX):
                self.connection_attempts.labels(outcome=outcome, status=status)
        for result in ("committed", "aborted"):
            self.transactions.labels(result=result)
        for outcome in ("ok", "error"):
            self.token_refreshes.labels(outcome=outcome)
        self.set_upstream_state("standby")
        for slot in range(self.slots) if self.slots > 1 else ():
            for family in (self._received, self._published, self._connected):
                family.labels(slot=str(slot))
        for status in REFUSAL_STATUSES:
            for slot in range(self.slots):
                label = {"slot": str(slot)} if self.slots > 1 else {}
                self.upstream_refusals.labels(status=status, **label)
        for status in OPERATOR_STATUSES:
            self.upstream_fatal_status.labels(status=status)

    def attempt(self, outcome: str, status: int | None) -> None:
        """Count one connection attempt; unknown statuses fold into bounded labels."""
        label = "none" if status is None else str(status)
        if label not in ATTEMPT_STATUSES and label not in ATTEMPT_STATUSES_5XX:
            label = "other"
        self.connection_attempts.labels(outcome=outcome, status=label).inc()

    def set_upstream_state(self, state: str) -> None:
        """Make ``state`` (one of ``UPSTREAM_STATES``) the one upstream state at 1."""
        if state not in UPSTREAM_STATES:
            raise ValueError(f"unknown upstream state {state!r}")
        # The others first: a scrape in between may see no state, never two.
        for name in UPSTREAM_STATES:
            if name != state:
                self.upstream_state.labels(state=name).set(0)
        self.upstream_state.labels(state=state).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class State:
    """What /status reports and /healthz, /readyz decide on; updated by the service."""

    identity: str = ""
    role: str = "starting"
    leader_identity: str | None = None
    role_since: float = field(default_factory=time.time)
    upstream: str = "idle"
    slot: int | None = None  # the maxConnections slot held, None while standby
    max_connections: int = 1
    last_record_at: float | None = None
    ready: bool = False
    counters: Callable[[], dict[str, float]] | None = None
    details: Callable[[], dict[str, Any]] | None = None  # more top-level keys (term, freshness)
    _beats: dict[str, tuple[float, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set_role(self, role: str, leader: str | None) -> None:
        with self._lock:
            if role != self.role:
                self.role_since = time.time()
            self.role, self.leader_identity = role, leader

    def beat(self, loop: str, allowed_s: float) -> None:
        """Record that ``loop`` is alive; it must beat again within ``allowed_s``."""
        with self._lock:
            self._beats[loop] = (time.monotonic(), allowed_s)

    def forget(self, loop: str) -> None:
        with self._lock:
            self._beats.pop(loop, None)

    def stale_loops(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            return [n for n, (t, allowed) in self._beats.items() if now - t > allowed]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {
                "identity": self.identity,
                "role": self.role,
                "leader": self.leader_identity,
                "role_since": self.role_since,
                "seconds_in_role": round(time.time() - self.role_since, 3),
                "upstream": self.upstream,
                "slot": self.slot,
                "max_connections": self.max_connections,
                "last_record_at": self.last_record_at,
                "ready": self.ready,
                "version": __version__,
            }
        out["stale_loops"] = self.stale_loops()
        if self.details is not None:
            out.update(self.details())
        out["counters"] = self.counters() if self.counters else {}
        return out


class HttpEndpoint:
    """/metrics, /healthz, /readyz and /status on a server with a fixed number of threads
    and a request timeout (see ``bridge.httpserver``); every answer is scrubbed of
    ``secrets``, since /status quotes identities and states that come from outside."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        state: State,
        ready: Callable[[], bool],
        *,
        secrets: Secrets | None = None,
        request_timeout_s: float = 5.0,
        workers: int = 4,
    ) -> None:
        self.metrics, self.state, self.ready = metrics, state, ready
        self.secrets = secrets if secrets is not None else Secrets()
        self.server = BoundedHttpServer(
            host, port, self._route, workers=workers, timeout_s=request_timeout_s
        )

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def _route(self, path: str) -> tuple[HTTPStatus, bytes, str]:
        if path == "/metrics":
            return HTTPStatus.OK, self._scrub(self.metrics.render()), CONTENT_TYPE_LATEST
        if path == "/healthz":
            stale = self.state.stale_loops()
            body = {"ok": not stale, "stale_loops": stale}
            return self._json(HTTPStatus.OK if not stale else HTTPStatus.SERVICE_UNAVAILABLE, body)
        if path == "/readyz":
            ok = self.ready()
            return self._json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, {"ok": ok})
        if path == "/status":
            return self._json(HTTPStatus.OK, self.state.snapshot())
        return self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def _json(self, status: HTTPStatus, body: object) -> tuple[HTTPStatus, bytes, str]:
        return status, self._scrub(json.dumps(body).encode()), "application/json"

    def _scrub(self, body: bytes) -> bytes:
        if not len(self.secrets):
            return body
        return self.secrets.scrub(body.decode("utf-8", "replace")).encode()
