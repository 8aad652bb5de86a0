"""A loopback Adobe Analytics Live Stream (HTTP/1.1 over raw sockets) to test the bridge with.

Endpoints: ``POST /ims/token/v3`` (client-credentials tokens that really expire),
``GET /api/1/stream/<name>`` and ``GET /api/2/stream/<name>`` (the 2026 API version's path;
``?beta=true`` is accepted too; one endless chunked, gzip-encoded body of CRLF-separated
JSON records), ``GET /api/2/enable/<name>`` (enables the stream for the latest API version,
ending the ``not_enabled`` mode), and a JSON control plane: ``GET /admin/state``,
``POST /admin/mode`` (``{"mode": ..., **kw}``), ``POST /admin/drop``
(``{"mid_chunk": bool}``) and ``POST /admin/expire-tokens``. A stream request is checked in
the contract's order: 505, 405, 302 (main port, when redirecting), 404, 401, 406, 400, the
fault status (or 424 not enabled, or 503 migrating), 409, then 200.

This module is the HTTP side (listeners, one thread per connection, routing, the token,
enable and admin endpoints); what a stream carries, and the slot and resume rules, are in
``livestream_sim.streams``.
"""

from __future__ import annotations

import contextlib
import secrets
import select
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

import orjson

from livestream_sim.config import SimulatorConfig
from livestream_sim.corpus import Corpus
from livestream_sim.streams import Streams
from livestream_sim.wire import Request, codings, read_request, stream_name, stream_params

__all__ = ["Simulator"]

STREAM_PREFIX = "/api/1/stream/"
ENABLE_PREFIX = "/api/2/enable/"
TOKEN_PATH = "/ims/token/v3"  # noqa: S105 - a URL path, not a secret
_IDLE_S = 30.0


class Simulator:
    """The server; every public method is thread-safe and may be called while it runs."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        # One lock for the whole simulator, shared with the stream side: /admin/state is one
        # consistent view. An RLock underneath, so holding it while calling in is fine.
        self._cond = threading.Condition()  # guards everything below and the stream side
        self._stopping = threading.Event()
        self._streams = Streams(config, self._cond, self._stopping)
        self._listeners: list[socket.socket] = []
        self._urls: list[str] = []
        self._threads: list[threading.Thread] = []
        self._socks: set[socket.socket] = set()
        self._tokens: dict[str, float] = {}
        self._token_requests = self._enable_requests = 0

    def start(self) -> None:
        if self._listeners:
            return
        cfg = self.config
        for port in [cfg.port] if cfg.redirect_port is None else [cfg.port, cfg.redirect_port]:
            listener = socket.create_server((cfg.host, port), backlog=128)
            host, bound = listener.getsockname()[:2]
            self._listeners.append(listener)
            self._urls.append(f"http://{f'[{host}]' if ':' in host else host}:{bound}")
        for i, listener in enumerate(self._listeners):
            self._spawn(self._accept_loop, listener, i == 1)
        if self._streams.fast:  # not joined by stop(): it checks self._stopping between batches
            build = self._streams.corpus.build_all
            kwargs = {"precompress": True, "stop": self._stopping}
            threading.Thread(target=build, kwargs=kwargs, daemon=True).start()
        else:
            self._spawn(self._streams.produce)

    def stop(self) -> None:
        self._stopping.set()
        with self._cond:
            socks, threads = list(self._socks), list(self._threads)
            self._cond.notify_all()
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for listener in self._listeners:
            listener.close()
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if not self._urls:
            raise RuntimeError("the simulator is not started")
        return self._urls[0]

    @property
    def stream_url(self) -> str:
        return f"{self.base_url}{STREAM_PREFIX}{self.config.stream_name}"

    @property
    def token_url(self) -> str:
        return self.base_url + TOKEN_PATH

    @property
    def corpus(self) -> Corpus:
        """The records it serves (benchmarks pre-build it, or encode its records directly)."""
        return self._streams.corpus

    def _spawn(self, target: Callable[..., object], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._cond:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    # -- controls --------------------------------------------------------------------------

    def set_mode(self, mode: str, **kw: Any) -> None:
        """status (``code=``), stall, pause (no new hits are produced; streams still send
        what was), token_down, not_enabled (new streams get 424 until someone calls
        ``/api/2/enable/<name>``) and migrating (503 "stream is migrating, try again") last
        until the next call; garbage and truncate hit every
        live stream once (or the next one, if none is live); big_record (``size=``) pads
        the next new hit sent. Those three leave the mode "normal"."""
        self._streams.set_mode(mode, **kw)

    def emitted_hit_ids(self) -> list[str]:
        return self._streams.hit_ids(self._streams.emitted_seqs())

    def emitted_records(self) -> dict[str, bytes]:
        """Each emitted hit's record as written (JSON, no CRLF) by hit id; exact for the
        last RETAINED_RECORDS records."""
        return self._streams.emitted_records()

    def attempts(self) -> list[dict[str, Any]]:
        return self._streams.attempts()

    def live_connections(self) -> int:
        return self._streams.live_connections()

    def max_concurrent_connections(self) -> int:
        return self._streams.max_concurrent_connections()

    def issued_tokens(self) -> list[str]:
        """Every access token the token endpoint handed out, expired ones included."""
        with self._cond:
            return list(self._tokens)

    def expire_tokens(self) -> None:
        with self._cond:
            self._tokens = dict.fromkeys(self._tokens, 0.0)

    def drop_connections(self, *, mid_chunk: bool = True) -> None:
        """Close every live stream from the server side, without the final chunk (inside a
        chunk if ``mid_chunk``); returns once they are closed."""
        self._streams.drop(mid_chunk=mid_chunk)

    def state(self) -> dict[str, Any]:
        """What ``GET /admin/state`` answers."""
        streams = self._streams
        with self._cond:
            seqs = streams.emitted_seqs()
            state = {
                "attempts": streams.attempts(),
                "live_connections": streams.live_connections(),
                "max_concurrent": streams.max_concurrent_connections(),
                "token_requests": self._token_requests,
                "enable_requests": self._enable_requests,
                "mode": streams.mode,
                "produced": streams.produced(),
                "ghosts": streams.ghosts(),
            }
        return {"emitted": streams.hit_ids(seqs), **state}

    # -- HTTP ------------------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket, second: bool) -> None:
        while not self._stopping.is_set():
            try:
                if select.select([listener], [], [], 0.2)[0]:
                    sock, addr = listener.accept()
                    self._spawn(self._serve, sock, f"{addr[0]}:{addr[1]}", second)
            except (OSError, ValueError):
                if self._stopping.is_set():
                    return

    def _serve(self, sock: socket.socket, client: str, second: bool) -> None:
        with self._cond:
            self._socks.add(sock)
        try:
            sock.settimeout(_IDLE_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = b""
            while not self._stopping.is_set():
                req, buf = read_request(sock, buf)
                if req is None or not self._dispatch(sock, client, second, req):
                    break
                if req.headers.get("connection", "").lower() == "close":
                    break
        except OSError:
            pass
        finally:
            with self._cond:
                self._socks.discard(sock)
            sock.close()

    def _reply(
        self, sock: socket.socket, code: int, body: object, *, close: bool = False, **headers: str
    ) -> bool:
        data = orjson.dumps(body)
        lines = [f"HTTP/1.1 {code} {HTTPStatus(code).phrase}", "Content-Type: application/json"]
        lines += [f"Content-Length: {len(data)}", *(f"{k}: {v}" for k, v in headers.items())]
        lines += ["Connection: close"] if close else []
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data)
        return not close

    def _refuse(
        self,
        sock: socket.socket,
        client: str,
        t0: float,
        code: int,
        why: str,
        *,
        target: str,
        **headers: str,
    ) -> bool:
        self._streams.refused(
            {"t": t0, "status": code, "duration_s": round(time.time() - t0, 6)}
            | {"records_sent": 0, "client": client, "reason": why, "target": target}
        )
        error = HTTPStatus(code).phrase.lower().replace(" ", "_")
        body = {"error": error, "error_description": why}
        return self._reply(sock, code, body, close=code == 505, **headers)

    def _dispatch(self, sock: socket.socket, client: str, second: bool, req: Request) -> bool:  # noqa: PLR0911 - a router, one return per route
        path = req.target.partition("?")[0]
        if not req.method:
            return self._reply(sock, 400, {"error": "bad_request"}, close=True)
        if req.version != "HTTP/1.1" and stream_name(path) is None:
            return self._reply(sock, 505, {"error": "http_version_not_supported"}, close=True)
        if path == TOKEN_PATH:
            return self._token(sock, req)
        if path.startswith("/admin/"):
            return self._admin(sock, req, path)
        if path.startswith(ENABLE_PREFIX):
            return self._enable(sock, req, path[len(ENABLE_PREFIX) :])
        if stream_name(path) is None:
            return self._reply(sock, 404, {"error": "not_found"})
        t0 = time.time()
        refusal = self._check(req, second)
        if refusal is not None:
            code, why, headers = refusal
            return self._refuse(sock, client, t0, code, why, target=req.target, **headers)
        gzip = bool(codings(req.headers.get("accept-encoding", "")) & {"gzip", "*"})
        conns, reset = stream_params(req.target.partition("?")[2], 8)
        admitted = self._streams.admit(sock, client, t0, conns, reset, target=req.target)
        if isinstance(admitted, tuple):
            return self._refuse(sock, client, t0, *admitted, target=req.target)
        self._streams.serve(admitted, gzip=gzip)
        return False

    def _check(self, req: Request, second: bool) -> tuple[int, str, dict[str, str]] | None:  # noqa: PLR0911 - one return per status, in the contract's order
        """The refusal, if any, that needs no lock: 505, 405, 302, 404, 401, 406, 400."""
        cfg = self.config
        path, _, query = req.target.partition("?")
        if req.version != "HTTP/1.1":
            return 505, "Live Stream speaks HTTP/1.1 only", {}
        if req.method != "GET":
            return 405, f"{req.method} is not allowed, use GET", {"Allow": "GET"}
        if cfg.redirect and not second and len(self._urls) > 1:
            where = self._urls[1] + req.target
            return 302, f"moved to {where}", {"Location": where}
        if stream_name(path) != cfg.stream_name:
            return 404, "no such stream, or disabled after 90 days without clients", {}
        if (why := self._unauthorized(req)) is not None:
            return 401, why, {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        if not codings(req.headers.get("accept-encoding", "")) & {"gzip", "deflate", "*"}:
            return 406, "Accept-Encoding must allow gzip", {}
        try:
            stream_params(query, min(8, cfg.max_connections_allowed))
        except ValueError as exc:
            return 400, str(exc), {}
        return None

    # -- token, enable and admin endpoints -------------------------------------------------

    def _token(self, sock: socket.socket, req: Request) -> bool:
        cfg = self.config
        with self._cond:
            self._token_requests += 1
            down = self._streams.mode == "token_down"
        if req.method != "POST":
            return self._reply(sock, 405, {"error": "method_not_allowed"}, Allow="POST")
        if down:
            why = "the token service is down (simulated)"
            return self._reply(sock, 503, {"error": "server_error", "error_description": why})
        form = {k: v[-1] for k, v in parse_qs(req.body.decode("utf-8", "replace")).items()}
        given = f"{form.get('client_id')}\n{form.get('client_secret')}".encode()
        if not secrets.compare_digest(given, f"{cfg.client_id}\n{cfg.client_secret}".encode()):
            why = "unknown client_id or wrong client_secret"
            return self._reply(sock, 401, {"error": "invalid_client", "error_description": why})
        if form.get("grant_type") != "client_credentials":
            return self._reply(sock, 400, {"error": "unsupported_grant_type"})
        token = secrets.token_urlsafe(32)
        with self._cond:
            self._tokens[token] = time.monotonic() + cfg.token_expires_in
        answer = {"access_token": token, "token_type": "bearer", "expires_in": cfg.token_expires_in}
        return self._reply(sock, 200, answer)

    def _unauthorized(self, req: Request) -> str | None:
        """Why the request's bearer token is not valid now (None: it is)."""
        scheme, _, token = req.headers.get("authorization", "").partition(" ")
        with self._cond:
            expiry = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if expiry is None:
            return "missing or unknown access token"
        return "access token expired" if expiry <= time.monotonic() else None

    def _enable(self, sock: socket.socket, req: Request, name: str) -> bool:
        """``GET /api/2/enable/<name>``: the fix Adobe names for a 424; ends not_enabled."""
        with self._cond:
            self._enable_requests += 1
        if req.method != "GET":
            return self._reply(sock, 405, {"error": "method_not_allowed"}, Allow="GET")
        if name != self.config.stream_name:
            return self._reply(sock, 404, {"error": "not_found"})
        if (why := self._unauthorized(req)) is not None:
            return self._reply(sock, 401, {"error": "invalid_token", "error_description": why})
        self._streams.enable()
        return self._reply(sock, 200, {"stream": name, "enabled": True})

    def _admin(self, sock: socket.socket, req: Request, path: str) -> bool:
        if path == "/admin/state" and req.method == "GET":
            return self._reply(sock, 200, self.state())
        try:
            body = orjson.loads(req.body or b"{}")
            if req.method != "POST" or not isinstance(body, dict):
                raise ValueError("POST a JSON object")
            if path == "/admin/mode":
                self.set_mode(str(body.pop("mode")), **body)
            elif path == "/admin/drop":
                self.drop_connections(mid_chunk=bool(body.get("mid_chunk", True)))
            elif path == "/admin/expire-tokens":
                self.expire_tokens()
            else:
                return self._reply(sock, 404, {"error": "not_found"})
        except (ValueError, KeyError, TypeError) as exc:
            return self._reply(
                sock, 400, {"error": "invalid_request", "error_description": str(exc)}
            )
        return self._reply(sock, 200, {"ok": True, "mode": self._streams.mode})
