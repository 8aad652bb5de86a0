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

The stream is one sequence of records (seq 0, 1, ...) produced at ``rate`` per second, or
as fast as clients read when ``rate`` is 0. The last ``RETAINED_RECORDS`` records are kept:
that bounds what is buffered while nobody reads, and a client further behind skips ahead.
With ``maxConnections=m`` the client in slot k gets the records whose visitor key is k mod m.
A record is *fully written* (and enters ``emitted_hit_ids``) once the chunk with its last
compressed byte is accepted by the kernel. Where a new connection starts, per (m, slot):
``reset=smallest`` (or ``earliest``): the oldest retained record; ``reset=largest`` (or
``latest``): the next new one; within
``resume_window_s`` of the slot's last disconnect: the first record not fully written to the
old connection, after re-sending the last ``replay_on_resume`` that were (duplicates); after
that window: the next new record, so everything produced in between is lost; a slot never
used before: the oldest retained record never sent, so nothing produced earlier is lost.

Ghost slots (KA-16598): how a 200 stream ends decides whether its slot stays taken.
*Clean*: the server reads EOF, i.e. the client's FIN (checked before every write and every
50 ms while idle; a FIN followed by a RST is still clean): the slot is free at once. Linux
sends a RST and no FIN when a socket is closed with unread received bytes, so a client that
wants a clean close calls ``shutdown(SHUT_WR)`` first. *Vanished*: a RST without FIN, a
failed write, or a write stuck for ``WRITE_TIMEOUT_S``: the slot stays taken for ``ghost_s``
seconds, answering 409. Ends the server causes (drops, garbage, truncate, stop) free the slot
at once and close with FIN, so every fully written record reaches the client.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import random
import secrets
import select
import signal
import socket
import sys
import threading
import time
import typing
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from itertools import pairwise
from typing import Any
from urllib.parse import parse_qs

import orjson

from bridge.hits import BATCH, EMPTY_BLOCK, RETAINED_RECORDS, Corpus, RecordLog, StreamEncoder
from bridge.simwire import (
    RESET_NEWEST,
    RESET_OLDEST,
    Ended,
    Request,
    check_peer,
    chunk,
    codings,
    read_request,
    stream_name,
    stream_params,
)

__all__ = ["RETAINED_RECORDS", "Simulator", "SimulatorConfig", "add_arguments", "run"]

WRITE_TIMEOUT_S = 60.0
STREAM_PREFIX = "/api/1/stream/"
ENABLE_PREFIX = "/api/2/enable/"
TOKEN_PATH = "/ims/token/v3"  # noqa: S105 - a URL path, not a secret
_POLL_S = 0.05
_IDLE_S = 30.0
_LASTING = ("normal", "status", "stall", "pause", "token_down", "not_enabled", "migrating")
NOT_ENABLED_WHY = "this stream is not enabled for the latest API version"
MIGRATING_WHY = "stream is migrating, try again"
_MODES = frozenset({*_LASTING, "garbage", "truncate", "big_record"})


def _opt(default: object, help_text: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclass
class SimulatorConfig:
    """Everything a simulator run can vary; every field is also a command-line flag."""

    host: str = "127.0.0.1"
    port: int = _opt(0, "main port (0: a free one)")
    redirect_port: int | None = _opt(None, "open a second listener on this port (0: free)")
    redirect: bool = _opt(False, "the main port answers stream GETs with 302 to the second")
    stream_name: str = _opt("demo", "the one stream name served; others get 404")
    client_id: str = "sim-client"
    client_secret: str = "sim-secret"  # noqa: S105 - the simulator's well-known test secret
    token_expires_in: int = _opt(86400, "token lifetime in seconds; 401 afterwards")
    rate: float = _opt(50.0, "records per second; 0: as fast as clients read")
    total_hits: int | None = _opt(None, "stop producing after this many hits")
    max_connections_allowed: int = _opt(8, "maxConnections above this gets 400")
    ghost_s: float = _opt(60.0, "how long a vanished client's slot stays taken (409)")
    resume_window_s: float = _opt(180.0, "a reconnect within this resumes where it stopped")
    replay_on_resume: int = _opt(5, "records re-sent (duplicates) on resume")
    malformed_every: int = _opt(0, "every Nth record is malformed (0: never)")
    empty_every: int = _opt(0, "every Nth record is followed by an empty one (0: never)")
    unknown_field_every: int = _opt(50, "every Nth hit has a new unknown field (0: never)")
    split_records: bool = _opt(True, "cut chunks inside records, not only between them")
    seed: int = _opt(1, "seed of the generated content")
    corpus_size: int = _opt(20000, "distinct records generated, then cycled with new ids")
    hit_bytes: int = _opt(1800, "mean JSON size of a hit (at least ~1 KB)")


@dataclass(eq=False)
class _Stream:
    sock: socket.socket
    conns: int  # the maxConnections it asked for
    slot: int
    attempt: dict[str, Any]
    pos: int  # next seq to look at for this slot's share
    rng: random.Random
    replay: list[int] = dataclasses.field(default_factory=list)
    recent: deque[int] = dataclasses.field(default_factory=deque)  # replayed on resume
    fault: str | None = None
    forced: bool = False  # drop_connections shut the socket down under a blocked write

    def __post_init__(self) -> None:
        self.committed = self.pos  # resume point: first seq of its share not fully written


class Simulator:
    """The server; every public method is thread-safe and may be called while it runs."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._fast = config.rate <= 0
        corpus = Corpus(
            size=config.corpus_size,
            seed=config.seed,
            # Random, so that two runs (or two simulators in one test) never share hit ids.
            id_high=10**18 + secrets.randbelow(8 * 10**18),
            report_suite=f"sim.{config.stream_name}",
            hit_bytes=config.hit_bytes,
            malformed_every=config.malformed_every,
            empty_every=config.empty_every,
            unknown_field_every=config.unknown_field_every,
        )
        self._log = RecordLog(corpus, total_hits=config.total_hits)
        self._cond = threading.Condition()  # guards everything below and self._log
        self._stopping = threading.Event()
        self._listeners: list[socket.socket] = []
        self._urls: list[str] = []
        self._threads: list[threading.Thread] = []
        self._socks: set[socket.socket] = set()
        self._mode, self._status = "normal", 503
        self._big: int | None = None
        self._armed: str | None = None  # a one-shot fault set while no stream was live
        self._attempts: list[dict[str, Any]] = []
        self._streams: list[_Stream] = []
        self._ghosts: list[tuple[int, int, float]] = []  # (maxConnections, slot, expiry)
        self._resume: dict[tuple[int, int], tuple[int, float, list[int]]] = {}  # seq, at, recent
        self._tokens: dict[str, float] = {}
        self._token_requests = self._max_live = self._enable_requests = 0

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
        if self._fast:  # not joined by stop(): it checks self._stopping between batches
            build = self._log.corpus.build_all
            kwargs = {"precompress": True, "stop": self._stopping}
            threading.Thread(target=build, kwargs=kwargs, daemon=True).start()
        else:
            self._spawn(self._produce)

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
        if mode not in _MODES:
            raise ValueError(f"unknown mode {mode!r}")
        code = int(kw.get("code", 503))
        if mode == "status" and not 400 <= code <= 599:
            raise ValueError("status mode needs a code from 400 to 599")
        size = int(kw["size"]) if mode == "big_record" else None
        with self._cond:
            self._mode = mode if mode in _LASTING else "normal"
            self._status, self._big = code, size if mode == "big_record" else self._big
            if mode in ("garbage", "truncate"):
                for stream in self._streams:
                    stream.fault = mode
                self._armed = None if self._streams else mode
            self._cond.notify_all()

    def emitted_hit_ids(self) -> list[str]:
        with self._cond:
            seqs = self._log.emitted_seqs()
        return self._log.hit_ids(seqs)

    def emitted_records(self) -> dict[str, bytes]:
        """Each emitted hit's record as written (JSON, no CRLF) by hit id; exact for the
        last RETAINED_RECORDS records."""
        with self._cond:
            seqs = self._log.emitted_seqs()
            records = [self._log.record(seq) for seq in seqs]
        return dict(zip(self._log.hit_ids(seqs), records, strict=True))

    def attempts(self) -> list[dict[str, Any]]:
        with self._cond:
            return [dict(a) for a in self._attempts]

    def live_connections(self) -> int:
        with self._cond:
            return len(self._streams)

    def max_concurrent_connections(self) -> int:
        with self._cond:
            return self._max_live

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
        with self._cond:
            doomed = list(self._streams)
            for stream in doomed:
                stream.fault = "drop_mid" if mid_chunk else "drop"
            self._cond.notify_all()
            self._await_gone(doomed)
            for stream in doomed:
                # Only a stream stuck writing to a client that stopped reading is still here.
                if stream in self._streams:
                    stream.forced = True
                    with contextlib.suppress(OSError):
                        stream.sock.shutdown(socket.SHUT_RDWR)
            self._await_gone(doomed)

    def _await_gone(self, streams: list[_Stream], timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while any(s in self._streams for s in streams):
            if (left := deadline - time.monotonic()) <= 0 or not self._cond.wait(left):
                return

    def state(self) -> dict[str, Any]:
        """What ``GET /admin/state`` answers."""
        with self._cond:
            now, seqs = time.monotonic(), self._log.emitted_seqs()
            state = {
                "attempts": [dict(a) for a in self._attempts],
                "live_connections": len(self._streams),
                "max_concurrent": self._max_live,
                "token_requests": self._token_requests,
                "enable_requests": self._enable_requests,
                "mode": self._mode,
                "produced": self._log.next_seq,
                "ghosts": sum(g[2] > now for g in self._ghosts),
            }
        return {"emitted": self._log.hit_ids(seqs), **state}

    def _produce(self) -> None:
        owed, last = 0.0, time.monotonic()
        while not self._stopping.wait(0.01):
            now = time.monotonic()
            owed += (now - last) * self.config.rate
            last, owed = now, 0.0 if self._mode == "pause" else owed  # a pause is not caught up
            if (due := int(owed)) > 0:
                self._log.corpus.prepare(self._log.next_seq, due)  # slow part, outside the lock
                with self._cond:
                    self._log.extend(due, time.time())
                    self._cond.notify_all()
                owed -= due

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
        with self._cond:
            self._attempts.append(
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
        with self._cond:
            admitted = self._admit(sock, client, t0, conns, reset, target=req.target)
        if isinstance(admitted, tuple):
            return self._refuse(sock, client, t0, *admitted, target=req.target)
        self._run_stream(admitted, gzip=gzip)
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

    def _admit(
        self,
        sock: socket.socket,
        client: str,
        t0: float,
        conns: int,
        reset: str | None,
        *,
        target: str,
    ) -> _Stream | tuple[int, str]:
        """A new live stream, or the refusal (fault status, 409); where it starts is the
        resume rule of the module docstring."""
        if self._mode == "status":
            return self._status, "fault injected by the simulator"
        if self._mode == "not_enabled":
            return 424, NOT_ENABLED_WHY
        if self._mode == "migrating":
            return 503, MIGRATING_WHY
        now, log = time.monotonic(), self._log
        self._ghosts = [g for g in self._ghosts if g[2] > now]
        held = [(s.conns, s.slot) for s in self._streams] + [(m, k) for m, k, _ in self._ghosts]
        if any(m != conns for m, _ in held):
            return 409, f"maxConnections={conns} differs from the {held[0][0]} other clients use"
        if len(held) >= conns:
            ghosts = len(self._ghosts)
            return 409, f"all {conns} connections in use ({ghosts} held by vanished clients)"
        slot = min(set(range(conns)) - {k for _, k in held})
        prev, recent = self._resume.get((conns, slot)), []
        if reset in RESET_OLDEST:
            pos = log.base
        elif reset in RESET_NEWEST or (prev and now - prev[1] > self.config.resume_window_s):
            pos = log.next_seq
        elif prev:
            pos, recent = max(prev[0], log.base), [q for q in prev[2] if q >= log.base]
        else:
            pos = log.first_unsent()
        attempt: dict[str, Any] = {"t": t0, "status": 200, "duration_s": None}
        attempt |= {"records_sent": 0, "client": client, "reason": "streaming", "conns": conns}
        attempt["target"] = target
        self._attempts.append(attempt)
        rng = random.Random(f"{self.config.seed}:{len(self._attempts)}")
        kept = deque(recent, maxlen=self.config.replay_on_resume)
        stream = _Stream(sock, conns, slot, attempt, pos, rng, list(recent), kept)
        stream.fault, self._armed = self._armed, None
        self._streams.append(stream)
        self._max_live = max(self._max_live, len(self._streams))
        return stream

    # -- a 200 stream ----------------------------------------------------------------------

    def _run_stream(self, s: _Stream, *, gzip: bool) -> None:
        encoder = StreamEncoder(self._log.corpus, gzip=gzip, fast=self._fast)
        reason, ghost = "simulator stopped", False
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked"
        head += f"\r\nContent-Encoding: {'gzip' if gzip else 'deflate'}\r\n\r\n"
        try:
            s.sock.settimeout(WRITE_TIMEOUT_S)
            s.sock.sendall(head.encode() + chunk(encoder.header))
            while True:
                check_peer(s.sock)
                seqs, stamps, pads, fault = self._next(s)
                payload = encoder.encode(seqs, stamps, pads) if seqs else b""
                if fault is not None:
                    _inject(s, fault, payload)
                self._send(s, payload)
                if seqs:
                    with self._cond:
                        self._log.mark_sent(seqs)
                        s.recent.extend(seqs)
                        s.committed = s.pos
                        s.attempt["records_sent"] += len(seqs)
        except Ended as end:
            reason, ghost = end.reason, end.ghost
        except OSError as exc:  # TimeoutError included: a client that stopped reading
            reason, ghost = f"client vanished ({type(exc).__name__})", True
        finally:
            self._end(s, reason, ghost)

    def _next(self, s: _Stream) -> tuple[list[int], list[int], dict[int, int], str | None]:
        """The next records for ``s`` (replays first) and a pending fault; waits a little
        when there is neither."""
        with self._cond:
            if self._stopping.is_set():
                raise Ended("simulator stopped")
            fault, s.fault = s.fault, None
            stalled, seqs = self._mode == "stall", []
            if not stalled:
                seqs = [q for q in s.replay[:BATCH] if q >= self._log.base]
                del s.replay[:BATCH]
            for _ in range(0 if seqs or stalled else 4 * s.conns):
                seqs, s.pos = self._log.take(s.pos, s.conns, s.slot)
                # In rate=0 mode records are produced when a client is ready for them.
                if seqs or not self._fast or self._mode == "pause":
                    break
                if not self._log.extend_to_batch_end(time.time()):
                    break
            if self._big is not None and self._log.pad_first_new_hit(seqs, self._big):
                self._big = None
            if not seqs and fault is None:
                self._cond.wait(_POLL_S)
            return seqs, *self._log.encode_args(seqs), fault

    def _send(self, s: _Stream, payload: bytes) -> None:
        """Write ``payload`` as one chunk, or cut at 1-2 random places when splitting."""
        if not self.config.split_records or len(payload) < 2:
            if payload:
                s.sock.sendall(chunk(payload))
            return
        cuts = s.rng.sample(range(1, len(payload)), min(len(payload) - 1, s.rng.randint(1, 2)))
        for a, b in pairwise([0, *sorted(cuts), len(payload)]):
            s.sock.sendall(chunk(payload[a:b]))

    def _end(self, s: _Stream, reason: str, ghost: bool) -> None:
        with self._cond:
            if s.forced or self._stopping.is_set():
                reason, ghost = ("server drop" if s.forced else "simulator stopped"), False
            self._streams.remove(s)
            now = time.monotonic()
            if ghost:
                self._ghosts.append((s.conns, s.slot, now + self.config.ghost_s))
            self._resume[(s.conns, s.slot)] = (s.committed, now, list(s.recent))
            s.attempt.update(duration_s=round(time.time() - s.attempt["t"], 6), reason=reason)
            self._cond.notify_all()
        if not ghost:
            with contextlib.suppress(OSError):
                s.sock.shutdown(socket.SHUT_WR)

    # -- token and admin endpoints ---------------------------------------------------------

    def _token(self, sock: socket.socket, req: Request) -> bool:
        cfg = self.config
        with self._cond:
            self._token_requests += 1
            down = self._mode == "token_down"
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
        with self._cond:
            if self._mode == "not_enabled":
                self._mode = "normal"
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
        return self._reply(sock, 200, {"ok": True, "mode": self._mode})


def _inject(s: _Stream, fault: str, payload: bytes) -> None:
    """Send what ``fault`` calls for, then end the stream (always raises Ended)."""
    if fault == "garbage":
        # 0xFF starts a deflate block of the reserved type 3: any inflater fails right there.
        s.sock.sendall(chunk(b"\xff\xfe<html>502 Bad Gateway</html>" + s.rng.randbytes(64)))
        raise Ended("fault: garbage")
    piece = payload or EMPTY_BLOCK
    half = max(1, len(piece) // 2)
    if fault == "truncate":
        s.sock.sendall(chunk(piece[:half]))
        raise Ended("fault: gzip stream truncated")
    if fault == "drop_mid":
        s.sock.sendall(b"%x\r\n%b" % (len(piece), piece[:half]))
    raise Ended(f"server drop{' mid-chunk' if fault == 'drop_mid' else ''}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per SimulatorConfig field (``--ghost-s``, ``--no-split-records``, ...)."""
    hints = typing.get_type_hints(SimulatorConfig)
    for f in dataclasses.fields(SimulatorConfig):
        flag, kind = "--" + f.name.replace("_", "-"), hints[f.name]
        text = f.metadata.get("help", f.name.replace("_", " ")) + " (default: %(default)s)"
        if kind is bool:
            action = argparse.BooleanOptionalAction
            parser.add_argument(flag, action=action, default=f.default, help=text)
        else:
            convert = kind if kind in (int, float, str) else int
            parser.add_argument(flag, type=convert, default=f.default, help=text)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; prints the stream, token and admin URLs, one a line."""
    fields = dataclasses.fields(SimulatorConfig)
    cfg = SimulatorConfig(**{f.name: getattr(args, f.name) for f in fields})
    done = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: done.set())
    try:
        with Simulator(cfg) as sim:
            sys.stdout.write(f"{sim.stream_url}\n{sim.token_url}\n{sim.base_url}/admin/state\n")
            sys.stdout.flush()
            while not done.wait(0.5):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(description="A loopback Adobe Live Stream simulator.")
    add_arguments(_parser)
    raise SystemExit(run(_parser.parse_args()))
