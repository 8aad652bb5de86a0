"""The Live Stream client: one persistent HTTP/1.1 connection, reconnected politely.

Adobe cannot tell a client that dropped for a moment from one that is gone, so a slot
stays taken for a while after every disconnect (KA-16598). Hence the rules here: read one
connection for as long as it lasts, never reconnect sooner than ``reconnect_grace_s``
after a drop, back off exponentially (never below the grace) after a refusal, and close
our own connections with a real FIN so Adobe frees the slot at once.

``Upstream.run`` only moves raw (still gzip) body bytes to a ``ChunkSink``; decoding them
into records is the sink's business (``RecordDecoder``, re-exported here). The HTTP
client comes from ``bridge.httpclient`` and is this object's own: nothing else may share
(and so keep alive) its connections.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import httpx

from bridge.auth import TokenProvider
from bridge.cancel import Cancel
from bridge.cleanclose import StreamClose
from bridge.config import AuthSettings, LivestreamSettings
from bridge.decode import OversizedRecord, RecordDecoder
from bridge.errors import AuthError, FatalUpstreamError, UpstreamError, UpstreamLost
from bridge.httpclient import (
    RedirectRefused,
    UpstreamHttp,
    error_description,
    redirect_allowed,  # re-exported
    shutdown,
    socket_of,
)
from bridge.logs import EventLog
from bridge.observability import OPERATOR_STATUSES, Metrics
from bridge.reconnect import AnswerReport, ReconnectPolicy, StatusRules
from bridge.secrets import Secrets

__all__ = [
    "ChunkSink",
    "OversizedRecord",
    "ReconnectPolicy",
    "RecordDecoder",
    "Upstream",
    "redirect_allowed",
]

log = EventLog("bridge.livestream")

_DESCRIPTION_LIMIT = 300
_POLL_S = 0.1  # how often an external sleep_event is looked at
_READY_POLL_S = 0.5


class ChunkSink(Protocol):
    """Where ``Upstream.run`` delivers a connection's body (implemented by the pump)."""

    def ready(self, timeout: float) -> bool:
        """Downstream can take a new connection's data; False: ask again later."""
        ...

    @property
    def waiting(self) -> str:
        """Why ``ready`` last said no, as an upstream state (``waiting_kafka``: Kafka cannot
        take data; ``waiting_slots``: another slot may be connected with another N)."""
        ...

    def opened(self, connection_id: int) -> None:
        """A 200 stream started: make a fresh decoder."""
        ...

    def chunk(self, data: bytes) -> bool:
        """Raw (still gzip) body bytes; may block; False: stop reading and disconnect."""
        ...

    def closed(self, connection_id: int, reason: str) -> None:
        """The stream opened with ``opened(connection_id)`` has ended."""
        ...


class Upstream:
    """Reads Live Stream into a ``ChunkSink`` until told to stop."""

    close_linger_s = 2.0  # how long a clean close may wait for the server's FIN

    def __init__(
        self,
        settings: LivestreamSettings,
        auth: AuthSettings,
        tokens: TokenProvider,
        metrics: Metrics,
        *,
        secrets: Secrets | None = None,
        rng: random.Random | None = None,
        sleep_event: threading.Event | None = None,
    ) -> None:
        self._settings = settings
        self._client_id = auth.client_id
        # "is None", not "or": an empty Secrets is falsy, and the process's one must be used.
        if secrets is None:
            secrets = Secrets(
                s.get_secret_value() for s in (auth.client_secret, auth.access_token) if s
            )
        self._secrets = secrets
        self._tokens = tokens
        self._metrics = metrics
        self._http = UpstreamHttp(settings)
        self._policy = ReconnectPolicy(settings.reconnect_grace_s, settings.backoff_cap_s, rng)
        self._rules = StatusRules(renewable_token=tokens.renewable)
        self._answers = AnswerReport(metrics, settings.url)
        self._sleep = sleep_event
        self._close = StreamClose(self._http.cancel)
        self._state = "idle"
        self._connection_id = 0
        self._closed_at: float | None = None  # monotonic end of the last connection
        self._waiting_as = "waiting_grace"  # the metric's state for the next wait
        self._reported = "standby"
        self.last_close_clean = False

    @property
    def state(self) -> str:
        """``idle``, ``waiting``, ``connecting`` or ``streaming``."""
        return self._state

    @property
    def reported_state(self) -> str:
        """The state ``livestream_bridge_upstream_state`` shows (``UPSTREAM_STATES``)."""
        return self._reported

    @property
    def connection_id(self) -> int:
        """The number of the current (or last) connection attempt."""
        return self._connection_id

    def close(self) -> None:
        """Release the HTTP client."""
        self._http.close()

    # -- the loop ---------------------------------------------------------------------

    def run(self, sink: ChunkSink, stop: Cancel, *, first_delay: float = 0.0) -> None:
        """Connect, stream into ``sink`` and reconnect by the rules until ``stop`` fires.

        Raises ``FatalUpstreamError`` for statuses that retrying cannot fix and
        ``AuthError`` when the credentials are refused for good (by the token endpoint,
        or a static token by Live Stream). The grace holds across calls too: a stream
        that ended moments ago, in an earlier call, still delays the first attempt to
        ``reconnect_grace_s`` after its end.
        """
        # A silent stream blocks in recv, a pending request waits for headers: the firing
        # thread closes either at once (``disconnect`` is cheap and never blocks).
        unsubscribe = stop.subscribe(self.disconnect)
        self._waiting_as = "waiting_grace"
        try:
            delay = first_delay
            if self._closed_at is not None:
                since = time.monotonic() - self._closed_at
                rest = self._settings.reconnect_grace_s - since
                if rest > delay:
                    log.info("upstream.grace_since_last_close", wait_s=round(rest, 3))
                    delay = rest
            while not stop.is_set():
                if delay > 0 and self._wait(stop, delay):
                    break
                if not self._await_ready(sink, stop):
                    break
                delay = self._attempt(sink, stop)
        except (FatalUpstreamError, AuthError):
            self._report("refused")
            raise
        else:
            self._report("standby")  # told to stop: leadership lost, or shutting down
        finally:
            unsubscribe()
            self._state = "idle"
            self._metrics.upstream_connected.set(0)

    def disconnect(self, reason: str) -> None:
        """Close the current connection now, cleanly; safe from any thread, idempotent.

        While streaming: sends our FIN at once (``shutdown(SHUT_WR)``); the reader keeps
        handing what still arrives to the sink (Live Stream counts it as delivered) until
        the server's FIN, then closes with nothing unread, so the server sees a clean close
        and no RST. If the server has not closed within ``close_linger_s`` the close is
        forced: ``shutdown(SHUT_RDWR)`` wakes a read blocked in ``recv`` (and the socket is
        closed here if the reader is inside ``sink.chunk``).

        Before streaming (connecting, or waiting for the response headers): the pending
        connection is shut down at once and the attempt ends without ``sink.opened``.
        """
        if self._close.request(reason, self.close_linger_s):
            log.info("upstream.disconnect", reason=reason, connection_id=self._connection_id)

    def _report(self, state: str, backoff_s: float = 0.0) -> None:
        self._reported = state
        self._metrics.set_upstream_state(state)
        self._metrics.upstream_backoff.set(backoff_s)

    def _wait(self, stop: Cancel, delay: float) -> bool:
        """Wait ``delay`` seconds; True if ``stop`` was set meanwhile."""
        self._state = "waiting"
        self._report(self._waiting_as, delay)
        deadline = time.monotonic() + delay
        while (remaining := deadline - time.monotonic()) > 0:
            if stop.wait(remaining if self._sleep is None else min(remaining, _POLL_S)):
                return True
            if self._sleep is not None and self._sleep.is_set():
                self._sleep.clear()
                log.info("upstream.wait_cut_short", remaining_s=round(remaining, 3))
                break
        return stop.is_set()

    def _await_ready(self, sink: ChunkSink, stop: Cancel) -> bool:
        self._state = "waiting"
        told = ""
        while not stop.is_set():
            started = time.monotonic()
            if sink.ready(_READY_POLL_S):
                return True
            if told != sink.waiting:
                told = sink.waiting
                log.info("upstream.sink_not_ready", state=told)
                self._report(told)
            stop.wait(max(0.0, _READY_POLL_S - (time.monotonic() - started)))
        return False

    # -- one attempt ------------------------------------------------------------------

    def _attempt(self, sink: ChunkSink, stop: Cancel) -> float:
        """One connection attempt; returns the delay before the next one."""
        self._connection_id += 1
        self._close.reset(self._http.arm)
        cid = self._connection_id
        if stop.is_set():  # fired before the arm: its disconnect's cancel was undone
            return 0.0
        self._state = "connecting"
        self._report("connecting")
        try:
            token = self._tokens.token()  # AuthError propagates: fatal
        except UpstreamLost as exc:
            return self._retry(cid, None, "error", error=self._scrub(str(exc)))
        self._secrets.add(token)  # whatever provider made it, it is scrubbed from here on
        return self._request(cid, token, sink, stop)

    def _request(self, cid: int, token: str, sink: ChunkSink, stop: Cancel) -> float:
        try:
            response = self._http.open(token, self._client_id)
        except RedirectRefused as exc:
            return self._retry(cid, 302, "retry", error=str(exc))
        except httpx.HTTPError as exc:
            if (closing := self._close.why_ending(stop)) is not None:
                return self._cancelled(cid, None, closing)
            return self._retry(cid, None, "error", error=self._describe(exc))
        try:
            if response.status_code == 200:
                return self._stream(cid, response, sink, stop)
            return self._rejected(cid, response)
        finally:
            response.close()

    def _cancelled(self, cid: int, status: int | None, reason: str) -> float:
        # The request may have reached Adobe (and been admitted): count it as a drop, so
        # the grace applies, and never call it a clean close.
        delay = self._policy.after_drop()
        self._waiting_as = "waiting_grace"
        self._closed_at = time.monotonic()
        self.last_close_clean = False
        self._metrics.attempt("cancelled", status)
        _log_attempt(log.info, cid, status, "cancelled", delay, reason=reason)
        return delay

    def _stream(self, cid: int, response: httpx.Response, sink: ChunkSink, stop: Cancel) -> float:
        sock = socket_of(response)
        if (closing := self._close.attach(sock, stop)) is not None:
            # Headers that arrive after stop or disconnect: a deposed leader must not
            # complete a connection it no longer owns. Cut it without reading the body.
            if sock is not None:
                shutdown(sock)
            return self._cancelled(cid, 200, closing)
        if sock is None:
            log.warning("upstream.no_socket", hint="disconnect() acts at the next chunk only")
        self._rules.connected()
        self._answers.opened()
        self._metrics.attempt("connected", 200)
        self._metrics.upstream_connected.set(1)
        _log_attempt(log.info, cid, 200, "connected", None)
        self._state = "streaming"
        self._report("streaming")
        started, nbytes, reason = time.monotonic(), 0, "error"  # "error": the sink raised
        try:
            sink.opened(cid)
            reason, nbytes = self._forward(response, sink)
        finally:
            requested, forced = self._close.detach()
            if sock is not None:
                shutdown(sock)
            response.close()
            clean = requested is not None and not forced
            reason = requested or reason
            self._metrics.upstream_connected.set(0)
            self.last_close_clean = clean
            self._closed_at = time.monotonic()
            self._state = "waiting"
            sink.closed(cid, reason)
        if nbytes:
            self._policy.reset()
        delay = self._policy.after_drop()
        self._waiting_as = "waiting_grace"
        (log.info if clean else log.warning)(
            "upstream.closed",
            connection_id=cid,
            reason=reason,
            clean=clean,
            duration_s=round(time.monotonic() - started, 3),
            bytes=nbytes,
            delay_s=delay,
        )
        return delay

    def _forward(self, response: httpx.Response, sink: ChunkSink) -> tuple[str, int]:
        """Move body bytes to the sink until the stream ends: (why, bytes read).

        Once a close is under way (``disconnect``), what still arrives goes to the sink
        too: Live Stream counts it as delivered. Only bytes after the sink found the
        stream corrupt are dropped; they cannot be decoded anyway.
        """
        nbytes, deliver = 0, True
        try:
            for data in response.iter_raw():
                nbytes += len(data)
                self._metrics.bytes_compressed.inc(len(data))
                if not self._close.entering_sink(deliver):
                    return "closed", nbytes  # no socket to half-close: just close
                if not deliver:
                    continue
                try:
                    more = sink.chunk(data)
                except UpstreamLost as exc:  # the sink's decoder found corrupt gzip
                    self.disconnect(str(exc))
                    more, deliver = False, False
                finally:
                    self._close.left_sink()
                if not more:
                    self.disconnect("sink")  # a no-op when already closing: keep closing
        except httpx.ReadTimeout:
            return "stall", nbytes
        except httpx.HTTPError as exc:
            return f"reset: {self._describe(exc)}", nbytes
        return "eof", nbytes

    def _rejected(self, cid: int, response: httpx.Response) -> float:
        status = response.status_code
        description = self._scrub(error_description(response))[:_DESCRIPTION_LIMIT]
        verdict = self._rules.judge(status)
        self._answers.refused(status, description, unexpected=verdict.unexpected)
        if status == 401:
            self._tokens.invalidate()
        if verdict.action == "fatal":
            self._fatal(cid, status, description, verdict.why)
        if verdict.action == "auth":
            self._fatal(cid, status, description, verdict.why, AuthError)
        delay = self._policy.after_drop() if verdict.action == "grace" else None
        return self._retry(cid, status, "retry", delay, error_description=description)

    def _retry(
        self, cid: int, status: int | None, outcome: str, delay: float | None = None, **kw: Any
    ) -> float:
        if delay is None:
            delay = self._policy.after_refusal()
            kw["refusals"] = self._policy.refusals
            needs_operator = str(status) in OPERATOR_STATUSES
            self._waiting_as = "refused" if needs_operator else "backing_off"
        else:
            self._waiting_as = "waiting_grace"
        self._metrics.attempt(outcome, status)
        _log_attempt(log.warning, cid, status, outcome, round(delay, 3), **kw)
        return delay

    def _fatal(
        self,
        cid: int,
        status: int,
        description: str,
        why: str,
        error: type[UpstreamError] = FatalUpstreamError,
    ) -> None:
        self._metrics.attempt("fatal", status)
        _log_attempt(log.error, cid, status, "fatal", None, error_description=description, why=why)
        detail = f": {description}" if description else ""
        message = f"Live Stream answered {status} ({why}){detail}"
        if error is FatalUpstreamError:
            raise FatalUpstreamError(message, status=status)
        raise error(message)

    def _describe(self, exc: BaseException) -> str:
        return self._scrub(f"{type(exc).__name__}: {exc}")[:_DESCRIPTION_LIMIT]

    def _scrub(self, text: str) -> str:
        return self._secrets.scrub(text)


def _log_attempt(
    emit: Callable[..., None],
    cid: int,
    status: int | None,
    outcome: str,
    delay: float | None,
    **kw: Any,
) -> None:
    """The one ``upstream.attempt`` line each connection attempt gets."""
    emit("upstream.attempt", attempt=cid, status=status, outcome=outcome, delay_s=delay, **kw)
