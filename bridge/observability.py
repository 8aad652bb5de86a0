"""What an operator sees: Prometheus metrics, JSON logs, and the HTTP endpoint serving
/metrics, /healthz, /readyz and /status.

Nothing here is module-level state: a ``Metrics`` owns its own registry, so tests and
several bridges in one process never share counters.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
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
)
REFUSAL_STATUSES = ("409", "503", "500", "401", "404", "424", "403", "429")
# Answers only an operator can fix (a setting, an entitlement, Adobe enabling the stream).
OPERATOR_STATUSES = ("400", "403", "404", "405", "406", "424", "505")


class Metrics:
    """Every metric the bridge exports, pre-initialised to zero."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.records_received = Counter(
            f"{PREFIX}_records_received", "Records read from Live Stream", registry=r
        )
        self.records_published = Counter(
            f"{PREFIX}_records_published", "Records committed to the hits topic", registry=r
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
        self.upstream_connected = Gauge(
            f"{PREFIX}_upstream_connected", "1 while a Live Stream connection is open", registry=r
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
            ["status"],
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
        for status in REFUSAL_STATUSES:
            self.upstream_refusals.labels(status=status)
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


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info and record.exc_info[0] is not None:
            out["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(out, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in getattr(record, "fields", {}).items())
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{stamp} {record.levelname:<7} {record.getMessage()} {fields}".rstrip()
        if record.exc_info and record.exc_info[0] is not None:
            line += f" error={record.exc_info[0].__name__}: {record.exc_info[1]}"
        return line


class _Redactor(logging.Formatter):
    """Last line of defence: no secret value ever leaves in a log line.

    It wraps the real formatter and reads ``secrets`` at each line, so a token registered
    after logging was set up is covered. Fields are scrubbed value by value first (so a
    JSON line stays valid JSON), then the whole line, which also covers the message and
    exception text; ``Secrets`` matches the JSON-escaped form of a value as well.
    """

    def __init__(self, inner: logging.Formatter, secrets: Secrets) -> None:
        super().__init__()
        self.inner, self.secrets = inner, secrets

    def format(self, record: logging.LogRecord) -> str:
        if not len(self.secrets):
            return self.inner.format(record)
        fields = getattr(record, "fields", None)
        if fields:
            record.fields = self._scrubbed(fields)
        return self.secrets.scrub(self.inner.format(record))

    def _scrubbed(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.secrets.scrub(value)
        if isinstance(value, dict):
            return {k: self._scrubbed(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrubbed(v) for v in value]
        if value is None or isinstance(value, int | float):
            return value
        text = str(value)  # what the formatters would print for it
        return self.secrets.scrub(text) if self.secrets.found_in(text) else value


def configure_logging(fmt: str, level: str, secrets: Secrets | Iterable[str] = ()) -> None:
    """Send every log line to stdout as JSON (or text), with secret values redacted.

    Pass the process's one ``Secrets`` so values added to it later are redacted too.
    """
    if not isinstance(secrets, Secrets):
        secrets = Secrets(secrets)
    handler = logging.StreamHandler(sys.stdout)
    inner = _JsonFormatter() if fmt == "json" else _TextFormatter()
    handler.setFormatter(_Redactor(inner, secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # librdkafka and httpx are chatty at INFO; their problems surface through our own lines.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class EventLog:
    """A logger whose lines are an event name plus structured fields."""

    def __init__(self, name: str) -> None:
        self._log = logging.getLogger(name)

    def debug(self, event: str, **fields: Any) -> None:
        self._log.debug(event, extra={"fields": fields})

    def info(self, event: str, **fields: Any) -> None:
        self._log.info(event, extra={"fields": fields})

    def warning(self, event: str, **fields: Any) -> None:
        self._log.warning(event, extra={"fields": fields})

    def error(self, event: str, **fields: Any) -> None:
        self._log.error(event, extra={"fields": fields})
