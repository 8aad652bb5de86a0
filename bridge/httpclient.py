"""The bridge's HTTP clients, built in one place: Live Stream's and the token endpoint's.

Every client comes from ``_client`` here: redirects are never followed by httpx (ours are
checked first, see below; the token endpoint has none to follow), no connection is kept
alive, and TLS trusts the CAs that ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` name. What differs,
on purpose:

=================  =========================  ==========================================
                   Live Stream (UpstreamHttp)  token endpoint (``token_client``)
=================  =========================  ==========================================
timeouts           the settings' (the read     ``TOKEN_TIMEOUT_S`` for everything
                   timeout is the stall
                   watchdog)
proxy from env     never (it would hide our    yes, as any client: nothing rides on
                   FIN from Adobe)             how that connection ends
HTTP version       1.1 only                    httpx's default (1.1)
connections        a cancellable backend       httpx's own
=================  =========================  ==========================================

The Live Stream client follows the rules of the stream:

- a fresh TCP connection for every attempt, never keep-alive: a pooled socket reused after
  a refusal hides our reconnect from Adobe's load balancer, and an idle one holds a slot;
- HTTP/1.1 only (Live Stream answers 505 to anything else);
- redirects followed here, not by httpx, resending every header (httpx would drop
  ``Authorization`` across hosts), but only to https on an allow-listed host or to the
  configured URL's own scheme and host: anything else would hand the token away;
- the timeouts of the settings, the read timeout being the stall watchdog;
- no proxy from the environment: a proxy would hide our FIN from Adobe, and the clean
  close is what frees the slot at once (KA-16598).

Its connections are made by ``CancellableBackend``, so that another thread can end an
attempt that is still connecting or waiting for the response headers: until the headers
are in, httpx hands out no socket, and a stop must not wait for the read timeout.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote_plus, urlencode

import httpcore
import httpx
import orjson

# httpcore's plain socket stream is not exported; wrapping it keeps its read/write/TLS code.
from httpcore._backends.sync import SyncStream

from bridge import __version__
from bridge.config import LivestreamSettings
from bridge.logs import EventLog

__all__ = [
    "TOKEN_TIMEOUT_S",
    "CancellableBackend",
    "RedirectRefused",
    "UpstreamHttp",
    "error_description",
    "redirect_allowed",
    "shutdown",
    "socket_of",
    "token_client",
    "with_params",
]

log = EventLog("bridge.livestream")

# The token request's own bound: the stream's read timeout is the (long) stall watchdog.
TOKEN_TIMEOUT_S = 30.0
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
ERROR_BODY_LIMIT = 64 * 1024  # a refusal's body is a hint, never worth more memory
_GZIP_OR_ZLIB = 32 + zlib.MAX_WBITS  # zlib: detect either header


class RedirectRefused(Exception):
    """A redirect not followed; the message names at most the target's scheme and host."""


def redirect_allowed(target: httpx.URL, origin: httpx.URL, hosts: Sequence[str]) -> bool:
    """Whether a redirect to ``target`` may carry our headers: the configured URL's own
    scheme and host (any port), or https to a host in ``hosts`` (``*.domain``: any
    subdomain of domain, not domain itself)."""
    if target.scheme == origin.scheme and target.host == origin.host:
        return True
    if target.scheme != "https":
        return False
    host = target.host.lower().rstrip(".")
    for entry in hosts:
        pattern = entry.lower()
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def with_params(url: httpx.URL, params: Mapping[str, str]) -> httpx.URL:
    """``url`` with ``params`` set in its query. The URL's own parameters stay as written,
    in order (Adobe's ``?beta=true``, a redirect's own query), except those we set, which
    ours replace: httpx's ``params=`` would drop the URL's whole query instead."""
    kept = [
        piece
        for piece in url.query.decode("ascii").split("&")
        if piece and unquote_plus(piece.partition("=")[0]) not in params
    ]
    if params:
        kept.append(urlencode(params))
    return url.copy_with(query="&".join(kept).encode("ascii"))


def error_description(response: httpx.Response) -> str:
    """Adobe's ``error_description`` (or ``error``) from a refusal's JSON body, if any.

    At most ``ERROR_BODY_LIMIT`` bytes are read, and inflated to at most as many; any
    failure to read, inflate or parse (orjson refuses nesting deeper than 1024 too) just
    means no description: a hostile body must never end the reader.
    """
    raw = bytearray()
    try:
        for part in response.iter_raw():
            raw += part
            if len(raw) >= ERROR_BODY_LIMIT:
                break
        body = bytes(raw[:ERROR_BODY_LIMIT])
        if response.headers.get("content-encoding", "").strip().lower() in {"gzip", "deflate"}:
            body = zlib.decompressobj(_GZIP_OR_ZLIB).decompress(body, ERROR_BODY_LIMIT)
        data = orjson.loads(body)
    except Exception:
        return ""
    if not isinstance(data, dict):
        return ""
    text = data.get("error_description") or data.get("error")
    return str(text) if text else ""


class CancellableBackend(httpcore.NetworkBackend):
    """httpcore's network backend, plus ``cancel()``: shut down every connection it made
    that is still open, and refuse new ones until ``arm()``.

    Each connection is tracked through a duplicate of its socket's descriptor, taken before
    ``connect``: shutting the duplicate down wakes a blocked connect, TLS handshake or read
    alike, even after the TLS layer has taken over the original socket object. The
    duplicate is closed with the stream, so it never keeps a connection open by itself.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cancelled = False

    def arm(self) -> None:
        """A new attempt begins: an earlier ``cancel`` no longer applies."""
        with self._lock:
            self._cancelled = False

    def cancel(self) -> bool:
        """End every open connection now; True if there was one."""
        with self._lock:
            self._cancelled = True
            doomed = list(self._open)
        for dup in doomed:
            with contextlib.suppress(OSError):  # already closed: nothing to wake
                dup.shutdown(socket.SHUT_RDWR)
        return bool(doomed)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        error: Exception = httpcore.ConnectError(f"no address for {host}")
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            dup = self._track(sock)
            try:
                sock.settimeout(timeout)
                if local_address is not None:
                    sock.bind((local_address, 0))
                sock.connect(address)
                self._check(dup)
                for option in socket_options or ():
                    sock.setsockopt(*option)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except TimeoutError as exc:
                self._forget(dup, sock)
                raise httpcore.ConnectTimeout(str(exc)) from exc
            except OSError as exc:
                self._forget(dup, sock)
                error = httpcore.ConnectError(str(exc))
                continue
            return _TrackedStream(SyncStream(sock), self, dup)
        raise error

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            if self._cancelled:
                sock.close()
                raise httpcore.ConnectError("connection attempt cancelled")
            dup = sock.dup()
            self._open.add(dup)
        return dup

    def _check(self, dup: socket.socket) -> None:
        # A cancel that came after _track but before connect() began found nothing to wake.
        with self._lock:
            cancelled = self._cancelled
        if cancelled:
            raise ConnectionAbortedError("connection attempt cancelled")

    def _forget(self, dup: socket.socket, sock: socket.socket | None = None) -> None:
        with self._lock:
            self._open.discard(dup)
        dup.close()
        if sock is not None:
            sock.close()

    def close_all(self) -> None:
        """Close the duplicates still held (the client is being closed)."""
        with self._lock:
            doomed, self._open = list(self._open), set()
        for dup in doomed:
            dup.close()


class _TrackedStream(httpcore.NetworkStream):
    """A stream whose connection ``CancellableBackend.cancel`` can end."""

    def __init__(
        self, inner: httpcore.NetworkStream, backend: CancellableBackend, dup: socket.socket
    ) -> None:
        self._inner, self._backend, self._dup = inner, backend, dup

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._backend._forget(self._dup)

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        try:
            inner = self._inner.start_tls(ssl_context, server_hostname, timeout)
        except BaseException:
            self._backend._forget(self._dup)
            raise
        return _TrackedStream(inner, self._backend, self._dup)  # the dup moves along

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Transport(httpx.HTTPTransport):
    def __init__(self, backend: CancellableBackend) -> None:
        # SSL_CERT_FILE / SSL_CERT_DIR still name the CAs, as for any httpx client.
        context = httpx.create_ssl_context(trust_env=True)
        super().__init__(verify=context, http1=True, http2=False, trust_env=False)
        # httpx has no public way to hand httpcore a network backend (encode/httpx#3180),
        # so the pool it built is replaced by one with ours; test_httpclient pins this.
        self._pool = httpcore.ConnectionPool(
            ssl_context=context,
            max_connections=4,  # one stream, plus redirect hops being closed
            max_keepalive_connections=0,
            http1=True,
            http2=False,
            network_backend=backend,
        )


class UpstreamHttp:
    """The Live Stream HTTP client and the means to cut its pending connection."""

    def __init__(self, settings: LivestreamSettings) -> None:
        self._settings = settings
        self._hosts = tuple(h.strip() for h in settings.redirect_hosts.split(",") if h.strip())
        self.backend = CancellableBackend()
        self.timeout = httpx.Timeout(
            connect=settings.connect_timeout_s,
            read=settings.stall_timeout_s,  # the stall watchdog: a longer silence is a drop
            write=settings.connect_timeout_s,
            pool=settings.connect_timeout_s,
        )
        self.client = _client(self.timeout, transport=_Transport(self.backend), from_env=False)

    def arm(self) -> None:
        """A new attempt begins (see ``CancellableBackend.arm``)."""
        self.backend.arm()

    def cancel(self) -> bool:
        """End the connection being made or waiting for headers; True if there was one."""
        return self.backend.cancel()

    def open(self, token: str, client_id: str | None) -> httpx.Response:
        """The stream GET with every header and query parameter Live Stream needs, as a
        streamed response; allowed redirects are followed, resending all of them."""
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
        if client_id:
            headers["x-api-key"] = client_id
        return self.get(s.url, params, headers)

    def get(
        self, url: str, params: Mapping[str, str], headers: Mapping[str, str]
    ) -> httpx.Response:
        """GET ``url`` as a stream, following allowed redirects (``redirect_allowed``) with
        every header and ``params``; raises ``RedirectRefused`` for any other redirect."""
        origin = target = httpx.URL(url)
        for hop in range(MAX_REDIRECTS + 1):
            request = self.client.build_request("GET", with_params(target, params), headers=headers)
            response = self.client.send(request, stream=True, follow_redirects=False)
            if response.status_code not in REDIRECT_STATUSES:
                return response
            location = response.headers.get("location")
            response.close()
            if not location:
                raise RedirectRefused(f"{response.status_code} without Location")
            # Location's own query is kept; ours is merged into it at the next hop.
            target = request.url.join(location)
            if not redirect_allowed(target, origin, self._hosts):
                # Only the host: the rest of Location could carry anything, our token too.
                log.warning("upstream.redirect_refused", to=target.host, scheme=target.scheme)
                raise RedirectRefused(f"redirect to {target.scheme}://{target.host} refused")
            log.info("upstream.redirect", status=response.status_code, to=target.host, hop=hop + 1)
        raise RedirectRefused(f"more than {MAX_REDIRECTS} redirects")

    def close(self) -> None:
        self.client.close()
        self.backend.close_all()


def token_client() -> httpx.Client:
    """The client for the IMS token endpoint: short timeouts, no redirects, no keep-alive
    (a token is fetched about once a day, a pooled socket would only idle)."""
    return _client(httpx.Timeout(TOKEN_TIMEOUT_S), from_env=True)


def _client(
    timeout: httpx.Timeout, *, from_env: bool, transport: httpx.HTTPTransport | None = None
) -> httpx.Client:
    """The one place an ``httpx.Client`` is configured (the table in the module docstring).

    ``from_env``: proxies from the environment apply (CAs from it apply either way: the
    Live Stream transport builds its TLS context from the environment itself).
    """
    return httpx.Client(
        transport=transport,
        timeout=timeout,
        follow_redirects=False,
        # A transport of our own carries its own pool (no keep-alive there either).
        limits=httpx.Limits(max_keepalive_connections=0),
        trust_env=from_env,
    )


def socket_of(response: httpx.Response) -> socket.socket | None:
    """The socket a streamed response is read from (None if the transport hides it)."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    return sock if isinstance(sock, socket.socket) else None


def shutdown(sock: socket.socket) -> None:
    """``shutdown(SHUT_RDWR)``: wakes any read or write blocked on ``sock``, any thread."""
    with contextlib.suppress(OSError):  # already closed or reset: nothing left to tell
        sock.shutdown(socket.SHUT_RDWR)
