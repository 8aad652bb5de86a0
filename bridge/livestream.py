"""The Live Stream client: one persistent HTTP/1.1 connection, reconnected politely.

Adobe cannot tell a client that dropped for a moment from one that is gone, so a slot
stays taken for a while after every disconnect (KA-16598). Hence the rules here: read one
connection for as long as it lasts, never reconnect sooner than ``reconnect_grace_s``
after a drop, back off exponentially (never below the grace) after a refusal, and close
our own connections with a real FIN so Adobe frees the slot at once.

``Upstream.run`` only moves raw (still gzip) body bytes to a ``ChunkSink``; decoding them
into records is the sink's business (``RecordDecoder``, re-exported here).
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import httpx

from bridge import __version__
from bridge.auth import TokenProvider
from bridge.config import AuthSettings, LivestreamSettings
from bridge.decode import OversizedRecord, RecordDecoder
from bridge.errors import FatalUpstreamError, UpstreamLost
from bridge.observability import EventLog, Metrics

__all__ = ["ChunkSink", "OversizedRecord", "ReconnectPolicy", "RecordDecoder", "Upstream"]

log = EventLog("bridge.livestream")

FATAL_STATUSES = frozenset({400, 405, 406, 505})  # client or configuration bugs
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
MAX_404 = 3  # the third 404 in a row is fatal
MAX_401_AT_GRACE = 2  # from the third 401 in a row on, back off like a refusal
_ERROR_BODY_LIMIT = 64 * 1024
_DESCRIPTION_LIMIT = 300
_POLL_S = 0.1  # how often the stop watcher and an external sleep_event are looked at
_READY_POLL_S = 0.5


class ReconnectPolicy:
    """How long to wait before the next connection attempt.

    - After an established stream ended (``after_drop``): exactly ``grace_s``.
    - After the n-th consecutive refusal (``after_refusal``; n = 0, 1, 2, ...):
      ``grace_s + uniform(0, min(cap_s - grace_s, base * 2**n))`` with
      ``base = max(grace_s, 1 s)``: full jitter on top of a floor of ``grace_s``. Every
      delay lies in ``[grace_s, cap_s]``; the jitter window doubles until it reaches
      ``cap_s - grace_s``, so the expected delay never decreases. With the defaults
      (60 s, 600 s) the windows are [60, 120], [60, 180], [60, 300], [60, 540], [60, 600]...
    - ``reset`` after a stream delivered data starts the refusal count afresh.
    """

    def __init__(self, grace_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        if grace_s < 0 or cap_s < grace_s:
            raise ValueError("need 0 <= grace_s <= cap_s")
        self.grace_s = grace_s
        self.cap_s = cap_s
        self._base = max(grace_s, 1.0)
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._refusals = 0

    @property
    def refusals(self) -> int:
        """Consecutive refusals so far."""
        return self._refusals

    def after_drop(self) -> float:
        return self.grace_s

    def after_refusal(self) -> float:
        window = min(self.cap_s - self.grace_s, self._base * 2.0 ** min(self._refusals, 60))
        self._refusals += 1
        return min(self.cap_s, self.grace_s + self._rng.uniform(0.0, window))

    def reset(self) -> None:
        self._refusals = 0


class ChunkSink(Protocol):
    """Where ``Upstream.run`` delivers a connection's body (implemented by the pump)."""

    def ready(self, timeout: float) -> bool:
        """Downstream can take a new connection's data; False: ask again later."""
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


class _BadRedirect(Exception):
    pass


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
        http: httpx.Client | None = None,
        rng: random.Random | None = None,
        sleep_event: threading.Event | None = None,
    ) -> None:
        self._settings = settings
        self._client_id = auth.client_id
        self._secrets = [s.get_secret_value() for s in (auth.client_secret, auth.access_token) if s]
        self._tokens = tokens
        self._metrics = metrics
        self._timeout = httpx.Timeout(
            connect=settings.connect_timeout_s,
            read=settings.stall_timeout_s,  # the stall watchdog: a longer silence is a drop
            write=settings.connect_timeout_s,
            pool=settings.connect_timeout_s,
        )
        self._own_http = http is None
        self._http = http or httpx.Client(
            http1=True,
            http2=False,
            follow_redirects=False,
            timeout=self._timeout,
            # A fresh TCP connection per attempt: no idle socket lingers at Adobe.
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        self._policy = ReconnectPolicy(settings.reconnect_grace_s, settings.backoff_cap_s, rng)
        self._sleep = sleep_event
        self._lock = threading.Lock()
        self._state = "idle"
        self._connection_id = 0
        self._sock: socket.socket | None = None  # the socket of the stream being read
        self._in_sink = False  # the reader is inside sink.chunk, not in recv
        self._close_request: str | None = None  # why we are closing the current stream
        self._forced = False  # the linger ran out: the close was abortive, not clean
        self._linger: threading.Timer | None = None
        self._token = ""  # the last token sent, only to scrub it from text we log
        self._count_401 = 0
        self._count_404 = 0
        self._closed_at: float | None = None  # monotonic end of the last 200 stream
        self.last_close_clean = False

    @property
    def state(self) -> str:
        """``idle``, ``waiting``, ``connecting`` or ``streaming``."""
        return self._state

    @property
    def connection_id(self) -> int:
        """The number of the current (or last) connection attempt."""
        return self._connection_id

    def close(self) -> None:
        """Release the HTTP client if this object made it."""
        if self._own_http:
            self._http.close()

    # -- the loop ---------------------------------------------------------------------

    def run(self, sink: ChunkSink, stop: threading.Event, *, first_delay: float = 0.0) -> None:
        """Connect, stream into ``sink`` and reconnect by the rules until ``stop`` is set.

        Raises ``FatalUpstreamError`` for statuses that retrying cannot fix and
        ``AuthError`` when the token endpoint refuses the credentials. The grace holds
        across calls too: a stream that ended moments ago, in an earlier call, still
        delays the first attempt to ``reconnect_grace_s`` after its end.
        """
        done = threading.Event()
        watcher = threading.Thread(
            target=self._watch_stop, args=(stop, done), name="upstream-stop", daemon=True
        )
        watcher.start()
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
        finally:
            done.set()
            self._state = "idle"
            self._metrics.upstream_connected.set(0)

    def disconnect(self, reason: str) -> None:
        """Close the current stream now, cleanly; safe from any thread, idempotent.

        Sends our FIN at once (``shutdown(SHUT_WR)``); the reader stops handing data to
        the sink, reads and discards what is still in flight until the server's FIN, then
        closes with nothing unread, so the server sees a clean close and no RST. If the
        server has not closed within ``close_linger_s`` the close is forced:
        ``shutdown(SHUT_RDWR)`` wakes a read blocked in ``recv`` (and the socket is
        closed here if the reader is inside ``sink.chunk``).
        """
        with self._lock:
            if self._close_request is None:
                self._close_request = reason
            sock = self._sock
            if sock is None or self._linger is not None:
                return  # nothing open yet (the reader closes at once), or already closing
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            self._linger = threading.Timer(self.close_linger_s, self._force_close, (sock,))
            self._linger.daemon = True
            self._linger.start()
        log.info("upstream.disconnect", reason=reason, connection_id=self._connection_id)

    def _force_close(self, sock: socket.socket) -> None:
        with self._lock:
            if self._sock is not sock:
                return  # that stream ended in time
            self._forced = True
            _shutdown(sock)
            if self._in_sink:  # not in recv: closing cannot race a read of the fd
                sock.close()
        log.warning("upstream.close_forced", linger_s=self.close_linger_s)

    def _watch_stop(self, stop: threading.Event, done: threading.Event) -> None:
        # A silent stream blocks in recv; stop must still end it promptly.
        while not done.is_set():
            if stop.wait(_POLL_S):
                self.disconnect("stop")
                return

    def _wait(self, stop: threading.Event, delay: float) -> bool:
        """Wait ``delay`` seconds; True if ``stop`` was set meanwhile."""
        self._state = "waiting"
        deadline = time.monotonic() + delay
        while (remaining := deadline - time.monotonic()) > 0:
            if stop.wait(remaining if self._sleep is None else min(remaining, _POLL_S)):
                return True
            if self._sleep is not None and self._sleep.is_set():
                self._sleep.clear()
                log.info("upstream.wait_cut_short", remaining_s=round(remaining, 3))
                break
        return stop.is_set()

    def _await_ready(self, sink: ChunkSink, stop: threading.Event) -> bool:
        self._state = "waiting"
        told = False
        while not stop.is_set():
            started = time.monotonic()
            if sink.ready(_READY_POLL_S):
                return True
            if not told:
                log.info("upstream.sink_not_ready")
                told = True
            stop.wait(max(0.0, _READY_POLL_S - (time.monotonic() - started)))
        return False

    # -- one attempt ------------------------------------------------------------------

    def _attempt(self, sink: ChunkSink, stop: threading.Event) -> float:
        """One connection attempt; returns the delay before the next one."""
        with self._lock:
            self._connection_id += 1
            self._close_request, self._forced = None, False
        cid = self._connection_id
        self._state = "connecting"
        try:
            token = self._tokens.token()  # AuthError propagates: fatal
        except UpstreamLost as exc:
            return self._retry(cid, None, "error", error=self._scrub(str(exc)))
        self._token = token
        try:
            response = self._open(token)
        except _BadRedirect as exc:
            return self._retry(cid, 302, "retry", error=str(exc))
        except httpx.HTTPError as exc:
            return self._retry(cid, None, "error", error=self._describe(exc))
        try:
            if response.status_code == 200:
                return self._stream(cid, response, sink, stop)
            return self._rejected(cid, response)
        finally:
            response.close()

    def _open(self, token: str) -> httpx.Response:
        """Send the GET, following redirects by hand with every header and the query."""
        s = self._settings
        params: dict[str, str] = {"maxConnections": str(s.max_connections)}
        if s.reset is not None:
            params["reset"] = s.reset
        if s.smoothing:
            params["smoothing"] = "1"
        if s.smoothing_bucket_size is not None:
            params["smoothingBucketSize"] = str(s.smoothing_bucket_size)
        headers = {
            "Accept-Encoding": "gzip",
            "Authorization": f"Bearer {token}",
            "User-Agent": f"livestream-bridge/{__version__}",
        }
        if self._client_id:
            headers["x-api-key"] = self._client_id
        url = httpx.URL(s.url)
        for hop in range(MAX_REDIRECTS + 1):
            request = self._http.build_request(
                "GET", url, params=params, headers=headers, timeout=self._timeout
            )
            response = self._http.send(request, stream=True, follow_redirects=False)
            if response.status_code not in REDIRECT_STATUSES:
                return response
            location = response.headers.get("location")
            response.close()
            if not location:
                raise _BadRedirect(f"{response.status_code} without Location")
            # build_request merges our parameters into whatever query Location carries.
            url = request.url.join(location)
            log.info("upstream.redirect", status=response.status_code, to=url.host, hop=hop + 1)
        raise _BadRedirect(f"more than {MAX_REDIRECTS} redirects")

    def _stream(
        self, cid: int, response: httpx.Response, sink: ChunkSink, stop: threading.Event
    ) -> float:
        sock = _socket_of(response)
        if sock is None:
            log.warning("upstream.no_socket", hint="disconnect() acts at the next chunk only")
        self._count_401 = self._count_404 = 0
        self._metrics.attempt("connected", 200)
        self._metrics.upstream_connected.set(1)
        _log_attempt(log.info, cid, 200, "connected", None)
        with self._lock:
            self._sock = sock
            early = self._close_request
        if early is not None or stop.is_set():  # asked to close while we were connecting
            self.disconnect(early or "stop")
        self._state = "streaming"
        started, nbytes, reason = time.monotonic(), 0, "error"  # "error": the sink raised
        try:
            sink.opened(cid)
            reason, nbytes = self._pump(response, sink, stop)
        finally:
            with self._lock:
                self._sock = None
                requested, forced, linger = self._close_request, self._forced, self._linger
                self._linger = None
            if linger is not None:
                linger.cancel()
            if sock is not None:
                _shutdown(sock)
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

    def _pump(
        self, response: httpx.Response, sink: ChunkSink, stop: threading.Event
    ) -> tuple[str, int]:
        """Move body bytes to the sink until the stream ends: (why, bytes read).

        Once a close is under way (``disconnect``), the bytes still arriving are read and
        dropped: reading them until the server's FIN is what keeps the close clean.
        """
        nbytes = 0
        try:
            for data in response.iter_raw():
                nbytes += len(data)
                self._metrics.bytes_compressed.inc(len(data))
                with self._lock:
                    closing = self._close_request is not None
                    self._in_sink = not closing
                    if closing and self._sock is None:
                        return "closed", nbytes  # no socket to half-close: just close
                if closing:
                    continue
                try:
                    more = sink.chunk(data)
                except UpstreamLost as exc:  # the sink's decoder found corrupt gzip
                    self.disconnect(str(exc))
                    more = False
                finally:
                    with self._lock:
                        self._in_sink = False
                if not more:
                    self.disconnect("sink")
                elif stop.is_set():
                    self.disconnect("stop")
        except httpx.ReadTimeout:
            return "stall", nbytes
        except httpx.HTTPError as exc:
            return f"reset: {self._describe(exc)}", nbytes
        return "eof", nbytes

    def _rejected(self, cid: int, response: httpx.Response) -> float:
        status = response.status_code
        description = self._error_description(response)
        if status == 404:
            self._count_401, self._count_404 = 0, self._count_404 + 1
            if self._count_404 >= MAX_404:
                self._fatal(cid, status, description, f"{MAX_404} consecutive 404")
            return self._retry(cid, 404, "retry", error_description=description)
        self._count_404 = 0
        if status in FATAL_STATUSES:
            self._fatal(cid, status, description, "not retriable")
        if status == 401:
            self._tokens.invalidate()
            self._count_401 += 1
            if self._count_401 <= MAX_401_AT_GRACE:  # a new token gets a plain grace wait
                delay = self._policy.after_drop()
                return self._retry(cid, 401, "retry", delay, error_description=description)
            return self._retry(cid, 401, "retry", error_description=description)
        self._count_401 = 0
        return self._retry(cid, status, "retry", error_description=description)

    def _retry(
        self, cid: int, status: int | None, outcome: str, delay: float | None = None, **kw: Any
    ) -> float:
        if delay is None:
            delay = self._policy.after_refusal()
            kw["refusals"] = self._policy.refusals
        self._metrics.attempt(outcome, status)
        _log_attempt(log.warning, cid, status, outcome, round(delay, 3), **kw)
        return delay

    def _fatal(self, cid: int, status: int, description: str, why: str) -> None:
        self._metrics.attempt("fatal", status)
        _log_attempt(log.error, cid, status, "fatal", None, error_description=description, why=why)
        detail = f": {description}" if description else ""
        raise FatalUpstreamError(f"Live Stream answered {status} ({why}){detail}", status=status)

    def _error_description(self, response: httpx.Response) -> str:
        """Adobe's ``error_description`` (or ``error``) from a refusal's JSON body, if any."""
        body = b""
        try:
            for part in response.iter_bytes():
                body += part
                if len(body) >= _ERROR_BODY_LIMIT:
                    break
            data = json.loads(body)
        except (httpx.HTTPError, ValueError):
            return ""
        if not isinstance(data, dict):
            return ""
        text = data.get("error_description") or data.get("error")
        return self._scrub(str(text))[:_DESCRIPTION_LIMIT] if text else ""

    def _describe(self, exc: BaseException) -> str:
        return self._scrub(f"{type(exc).__name__}: {exc}")[:_DESCRIPTION_LIMIT]

    def _scrub(self, text: str) -> str:
        for secret in (self._token, *self._secrets):
            if secret:
                text = text.replace(secret, "***")
        return text


def _socket_of(response: httpx.Response) -> socket.socket | None:
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    return sock if isinstance(sock, socket.socket) else None


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed or reset: nothing left to tell
        sock.shutdown(socket.SHUT_RDWR)


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
