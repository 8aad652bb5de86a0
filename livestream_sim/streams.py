"""The simulator's stream side: the records it produces and the live 200 streams that carry
them, with their slots, ghosts, resume points, modes and injected faults.

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
failed write, or a write stuck for ``write_timeout_s``: the slot stays taken for ``ghost_s``
seconds, answering 409. Ends the server causes (drops, garbage, truncate, stop) free the slot
at once and close with FIN, so every fully written record reaches the client.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import secrets
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from livestream_sim.config import SimulatorConfig
from livestream_sim.corpus import BATCH, EMPTY_BLOCK, Corpus, StreamEncoder
from livestream_sim.recordlog import RecordLog
from livestream_sim.wire import RESET_NEWEST, RESET_OLDEST, Ended, check_peer, chunk

__all__ = ["MIGRATING_WHY", "MODES", "NOT_ENABLED_WHY", "Stream", "Streams"]

_POLL_S = 0.05
_LASTING = ("normal", "status", "stall", "pause", "token_down", "not_enabled", "migrating")
NOT_ENABLED_WHY = "this stream is not enabled for the latest API version"
MIGRATING_WHY = "stream is migrating, try again"
MODES = frozenset({*_LASTING, "garbage", "truncate", "big_record"})


@dataclass(eq=False)
class Stream:
    """One live 200 stream: its connection, slot, attempt record and where it stands."""

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


class Streams:
    """The record log and the live streams. Thread-safe: everything here is guarded by
    ``cond``, the simulator's one lock (a Condition over an RLock, so a caller that holds
    it may call in)."""

    def __init__(
        self, config: SimulatorConfig, cond: threading.Condition, stopping: threading.Event
    ) -> None:
        self.config = config
        self.fast = config.rate <= 0
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
        self._cond = cond  # guards everything below and self._log
        self._stopping = stopping
        self._mode, self._status = "normal", 503
        self._big: int | None = None
        self._armed: str | None = None  # a one-shot fault set while no stream was live
        self._attempts: list[dict[str, Any]] = []
        self._live: list[Stream] = []
        self._ghosts: list[tuple[int, int, float]] = []  # (maxConnections, slot, expiry)
        self._resume: dict[tuple[int, int], tuple[int, float, list[int]]] = {}  # seq, at, recent
        self._max_live = 0

    @property
    def corpus(self) -> Corpus:
        return self._log.corpus

    @property
    def mode(self) -> str:
        return self._mode

    # -- controls --------------------------------------------------------------------------

    def set_mode(self, mode: str, **kw: Any) -> None:
        """See ``Simulator.set_mode``."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        code = int(kw.get("code", 503))
        if mode == "status" and not 400 <= code <= 599:
            raise ValueError("status mode needs a code from 400 to 599")
        size = int(kw["size"]) if mode == "big_record" else None
        with self._cond:
            self._mode = mode if mode in _LASTING else "normal"
            self._status, self._big = code, size if mode == "big_record" else self._big
            if mode in ("garbage", "truncate"):
                for stream in self._live:
                    stream.fault = mode
                self._armed = None if self._live else mode
            self._cond.notify_all()

    def enable(self) -> None:
        """The stream is enabled for the latest API version: ends the not_enabled mode."""
        with self._cond:
            if self._mode == "not_enabled":
                self._mode = "normal"

    def drop(self, *, mid_chunk: bool) -> None:
        """See ``Simulator.drop_connections``."""
        with self._cond:
            doomed = list(self._live)
            for stream in doomed:
                stream.fault = "drop_mid" if mid_chunk else "drop"
            self._cond.notify_all()
            self._await_gone(doomed)
            for stream in doomed:
                # Only a stream stuck writing to a client that stopped reading is still here.
                if stream in self._live:
                    stream.forced = True
                    with contextlib.suppress(OSError):
                        stream.sock.shutdown(socket.SHUT_RDWR)
            self._await_gone(doomed)

    def _await_gone(self, streams: list[Stream], timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while any(s in self._live for s in streams):
            if (left := deadline - time.monotonic()) <= 0 or not self._cond.wait(left):
                return

    # -- what happened ---------------------------------------------------------------------

    def emitted_seqs(self) -> list[int]:
        with self._cond:
            return self._log.emitted_seqs()

    def hit_ids(self, seqs: list[int]) -> list[str]:
        return self._log.hit_ids(seqs)

    def emitted_records(self) -> dict[str, bytes]:
        with self._cond:
            seqs = self._log.emitted_seqs()
            records = [self._log.record(seq) for seq in seqs]
        return dict(zip(self._log.hit_ids(seqs), records, strict=True))

    def attempts(self) -> list[dict[str, Any]]:
        with self._cond:
            return [dict(a) for a in self._attempts]

    def live_connections(self) -> int:
        with self._cond:
            return len(self._live)

    def max_concurrent_connections(self) -> int:
        with self._cond:
            return self._max_live

    def produced(self) -> int:
        with self._cond:
            return self._log.next_seq

    def ghosts(self) -> int:
        """Slots held by vanished clients now."""
        with self._cond:
            now = time.monotonic()
            return sum(g[2] > now for g in self._ghosts)

    # -- producing -------------------------------------------------------------------------

    def produce(self) -> None:
        """Produce ``rate`` records per second until the simulator stops."""
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

    # -- a stream request ------------------------------------------------------------------

    def refused(self, attempt: dict[str, Any]) -> None:
        """Record a stream request that got no 200."""
        with self._cond:
            self._attempts.append(attempt)

    def admit(
        self,
        sock: socket.socket,
        client: str,
        t0: float,
        conns: int,
        reset: str | None,
        *,
        target: str,
    ) -> Stream | tuple[int, str]:
        """A new live stream, or the refusal (fault status, 409); where it starts is the
        resume rule of the module docstring."""
        with self._cond:
            if self._mode == "status":
                return self._status, "fault injected by the simulator"
            if self._mode == "not_enabled":
                return 424, NOT_ENABLED_WHY
            if self._mode == "migrating":
                return 503, MIGRATING_WHY
            now, log = time.monotonic(), self._log
            self._ghosts = [g for g in self._ghosts if g[2] > now]
            held = [(s.conns, s.slot) for s in self._live] + [(m, k) for m, k, _ in self._ghosts]
            if any(m != conns for m, _ in held):
                return (
                    409,
                    f"maxConnections={conns} differs from the {held[0][0]} other clients use",
                )
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
            stream = Stream(sock, conns, slot, attempt, pos, rng, list(recent), kept)
            stream.fault, self._armed = self._armed, None
            self._live.append(stream)
            self._max_live = max(self._max_live, len(self._live))
            return stream

    # -- a 200 stream ----------------------------------------------------------------------

    def serve(self, s: Stream, *, gzip: bool) -> None:
        """Write ``s``'s 200 answer and its endless body until the stream ends."""
        encoder = StreamEncoder(self._log.corpus, gzip=gzip, fast=self.fast)
        reason, ghost = "simulator stopped", False
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked"
        head += f"\r\nContent-Encoding: {'gzip' if gzip else 'deflate'}\r\n\r\n"
        try:
            s.sock.settimeout(self.config.write_timeout_s)
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

    def _next(self, s: Stream) -> tuple[list[int], list[int], dict[int, int], str | None]:
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
                if seqs or not self.fast or self._mode == "pause":
                    break
                if not self._log.extend_to_batch_end(time.time()):
                    break
            if self._big is not None and self._log.pad_first_new_hit(seqs, self._big):
                self._big = None
            if not seqs and fault is None:
                self._cond.wait(_POLL_S)
            return seqs, *self._log.encode_args(seqs), fault

    def _send(self, s: Stream, payload: bytes) -> None:
        """Write ``payload`` as one chunk, or cut at 1-2 random places when splitting."""
        if not self.config.split_records or len(payload) < 2:
            if payload:
                s.sock.sendall(chunk(payload))
            return
        cuts = s.rng.sample(range(1, len(payload)), min(len(payload) - 1, s.rng.randint(1, 2)))
        for a, b in pairwise([0, *sorted(cuts), len(payload)]):
            s.sock.sendall(chunk(payload[a:b]))

    def _end(self, s: Stream, reason: str, ghost: bool) -> None:
        with self._cond:
            if s.forced or self._stopping.is_set():
                reason, ghost = ("server drop" if s.forced else "simulator stopped"), False
            self._live.remove(s)
            now = time.monotonic()
            if ghost:
                self._ghosts.append((s.conns, s.slot, now + self.config.ghost_s))
            self._resume[(s.conns, s.slot)] = (s.committed, now, list(s.recent))
            s.attempt.update(duration_s=round(time.time() - s.attempt["t"], 6), reason=reason)
            self._cond.notify_all()
        if not ghost:
            with contextlib.suppress(OSError):
                s.sock.shutdown(socket.SHUT_WR)


def _inject(s: Stream, fault: str, payload: bytes) -> None:
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
