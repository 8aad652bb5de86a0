"""The bridge as one running service: election drives the pipeline.

    standby -> elected -> init_transactions (fences the old writer) -> seed dedupe
            -> wait what is left of the reconnect grace -> connect -> pump
            -> lost leadership / fenced: stop reading, close upstream, abort -> standby
            -> SIGTERM: stop reading, publish what was read, commit, release -> exit 0

Two threads carry the data while leading. The *reader* (``Upstream.run``) only moves
compressed bytes from the socket into a queue bounded in bytes; the *pump* (the main
thread) gunzips, frames, publishes and commits. Keeping the socket read on its own thread
means a blocked read never delays a commit, and a full queue pushes back on the socket
instead of growing memory.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from bridge.auth import make_token_provider
from bridge.config import Settings
from bridge.decode import RecordDecoder
from bridge.election import make_election
from bridge.election.base import Election, Term
from bridge.errors import FencedError, KafkaSetupError, PublishError, UpstreamLost
from bridge.httpclient import token_client
from bridge.livestream import Upstream
from bridge.observability import EventLog, HttpEndpoint, Metrics, State
from bridge.publish import Publisher
from bridge.secrets import Secrets

_OPEN, _DATA, _CLOSE = 0, 1, 2
_IDLE_TICK_S = 0.05


@dataclass
class _Item:
    kind: int
    connection: int
    data: bytes = b""  # compressed body bytes, as read
    read_at: float = 0.0
    reason: str = ""


class _ChunkQueue:
    """Reader-to-pump hand-over, bounded by the bytes it holds (back-pressure)."""

    def __init__(self, max_bytes: int, deposed: threading.Event, cut_wait_s: float) -> None:
        self._items: deque[_Item] = deque()
        self._bytes = 0
        self._max = max_bytes
        self._deposed = deposed
        self._cond = threading.Condition()
        # Set when the pump wants the current connection gone. The bytes the server still
        # sends until its FIN were delivered as far as Live Stream knows, so the reader keeps
        # queueing them. A full queue then waits at most ``cut_wait_s`` (the reader's close
        # linger) for room before it takes the chunk over the bound: by then the reader's
        # close has been forced, so this happens once per close at most, and memory stays
        # bounded by ``max_bytes`` plus one chunk.
        self.cut = threading.Event()
        self._cut_wait_s = cut_wait_s

    def put(self, item: _Item) -> bool:
        """Queue ``item``; blocks while full. False once we are deposed (drop it all)."""
        with self._cond:
            deadline: float | None = None
            while self._bytes >= self._max and item.kind == _DATA:
                if self._deposed.is_set():
                    return False
                if self.cut.is_set():
                    now = time.monotonic()
                    deadline = deadline or now + self._cut_wait_s
                    if now >= deadline:
                        break
                self._cond.wait(_IDLE_TICK_S)
            if self._deposed.is_set() and item.kind == _DATA:
                return False
            self._items.append(item)
            self._bytes += len(item.data)
            self._cond.notify_all()
        return True

    @property
    def bytes(self) -> int:
        """Compressed bytes queued (one read of an int: no lock needed for a gauge)."""
        return self._bytes

    def get(self, timeout: float) -> _Item | None:
        with self._cond:
            if not self._items and not self._cond.wait_for(lambda: bool(self._items), timeout):
                return None
            item = self._items.popleft()
            self._bytes -= len(item.data)
            self._cond.notify_all()
            return item

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class _Sink:
    """The ChunkSink the reader thread writes to: compressed bytes into the queue, as read.

    Gunzip and framing stay on the pump. Done here they would be slower, not faster: zlib
    lets go of the GIL for each block of output and then waits to get it back from the busy
    pump, so a second thread decompressing next to it ran at a small fraction of its speed.
    """

    def __init__(self, queue: _ChunkQueue, bridge: Bridge, halt: threading.Event) -> None:
        self.queue, self.bridge, self.halt = queue, bridge, halt

    def ready(self, timeout: float) -> bool:
        # Reconnecting while Kafka cannot take data would only fill the queue again and
        # then drop the connection again: a reconnect storm by another name.
        if self.bridge.publisher.unreachable_for() == 0.0:
            return True
        self.halt.wait(timeout)
        return False

    def opened(self, connection_id: int) -> None:
        self.queue.cut.clear()
        self.queue.put(_Item(_OPEN, connection_id))
        self.bridge.state.upstream = "streaming"
        self.bridge.election.announce_connected()

    def chunk(self, data: bytes) -> bool:
        return self.queue.put(_Item(_DATA, 0, data, time.time()))

    def closed(self, connection_id: int, reason: str) -> None:
        self.queue.put(_Item(_CLOSE, connection_id, reason=reason))
        self.bridge.state.upstream = "reconnecting"


class _Records:
    """The pump's side of the stream: one decoder per connection, fed in queue order."""

    def __init__(self, bridge: Bridge, cut: Callable[[str], None]) -> None:
        self.bridge, self.cut = bridge, cut
        self.decoder: RecordDecoder | None = None

    def take(self, item: _Item) -> Iterator[list[bytes]]:
        """The records ``item`` completes, in bounded batches (publish each before the next:
        that is what bounds memory when a small chunk inflates to a great many records);
        none for open/close and after a corrupt chunk."""
        if item.kind == _OPEN:
            s = self.bridge.settings.livestream
            self.decoder = RecordDecoder(s.max_record_bytes, s.max_compression_ratio)
            return
        decoder = self.decoder
        if item.kind == _CLOSE or decoder is None:
            # A record cut off by the drop dies with the decoder; Live Stream resends it on
            # resume. After a corrupt chunk the rest of that connection cannot be decoded.
            self.decoder = None
            return
        before = decoder.decompressed_bytes
        try:
            yield from decoder.batches(item.data)
        except UpstreamLost as exc:  # close this connection; the reconnect rules apply
            self.decoder = None
            self.bridge.log.warning("bridge.corrupt_stream", error=str(exc))
            self.cut(str(exc))
        finally:
            self.bridge.metrics.bytes_decompressed.inc(decoder.decompressed_bytes - before)


class Bridge:
    """One replica: HTTP endpoint, election, and the pipeline while leading."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        secrets: Secrets | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        # The CLI hands in the process's one Secrets (the log redactor holds it too), so a
        # token fetched here is scrubbed from every log line from then on.
        self.secrets = Secrets() if secrets is None else secrets
        self.state = State(identity=settings.election.identity)
        self.log = EventLog("bridge.service")
        # The token endpoint's client; Live Stream's is the Upstream's own (a fresh
        # connection per attempt, never shared).
        self.http: httpx.Client = token_client()
        self.tokens = make_token_provider(
            settings.auth, self.http, self.metrics, secrets=self.secrets
        )
        self.upstream = Upstream(
            settings.livestream, settings.auth, self.tokens, self.metrics, secrets=self.secrets
        )
        self.publisher = Publisher(settings.kafka, settings.publish, self.metrics)
        self.election: Election = make_election(settings, self.metrics, self.state)
        self.state.counters = lambda: self.publisher.counters
        self.endpoint = HttpEndpoint(
            settings.http.host,
            settings.http.port,
            self.metrics,
            self.state,
            self._ready,
            secrets=self.secrets,
        )
        self._ready_cache: tuple[float, bool] = (0.0, False)
        self._queue: _ChunkQueue | None = None
        self._halt: threading.Event | None = None
        self._term: Term | None = None
        self.metrics.reader_queue_bytes.set_function(self._queued_bytes)
        self.state.details = self._details

    def _queued_bytes(self) -> float:
        queue = self._queue
        return float(queue.bytes) if queue is not None else 0.0

    def _details(self) -> dict[str, Any]:
        """What /status adds to State's own keys (read from the HTTP thread)."""
        term, newest = self._term, self.metrics.committed_hits.newest
        out: dict[str, Any] = {"reader_queue_bytes": int(self._queued_bytes())}
        if term is not None:
            out["term"] = term.number
        if newest is not None:
            out["newest_committed_hit_at"] = newest
        return out

    def _ready(self) -> bool:
        # Ready means "can do its job if elected": settings loaded and Kafka answering. Tying
        # readiness to leadership would keep a rolling update from ever finding a ready pod.
        checked_at, ok = self._ready_cache
        if time.monotonic() - checked_at > 2.0:
            ok = self.publisher.reachable(timeout=2.0)
            self._ready_cache = (time.monotonic(), ok)
        return ok

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; raises what the CLI turns into exit codes."""
        self.endpoint.start()
        self.log.info("bridge.start", identity=self.state.identity, port=self.endpoint.port)
        try:
            self.publisher.ensure_topics()
            self.state.ready = True
            self.election.start()
            while not stop.is_set():
                self._standby()
                term = self.election.wait_for_leadership(stop)
                if term is None:
                    break
                self._lead(term, stop)
        finally:
            self.election.close()
            self.endpoint.stop()
            self.upstream.close()
            self.http.close()
            self.log.info("bridge.stop", identity=self.state.identity)

    def _lead(self, term: Term, stop: threading.Event) -> None:
        halt = self._halt = threading.Event()
        self._term = term
        watcher = threading.Thread(
            target=_halt_when, args=(halt, stop, term.lost), name="halt-watch", daemon=True
        )
        watcher.start()
        elected_at = time.monotonic()
        try:
            begun = self._begin(term, halt)
        except KafkaSetupError:
            # Missing ACLs or the like: retrying cannot fix it. Let a standby (configured
            # right, perhaps) have the slot, and let the CLI exit 2.
            halt.set()
            self.election.release(clean=self.upstream.last_close_clean)
            raise
        if not begun:
            halt.set()
            self.publisher.abort()  # nothing to abandon; this replica stops writing
            self._term = None
            return
        grace = term.grace_s(self.settings.livestream.reconnect_grace_s)
        first_delay = max(0.0, grace - (time.monotonic() - elected_at))
        self.log.info("bridge.leading", term=term.number, first_connect_in_s=round(first_delay, 3))
        queue = self._queue = _ChunkQueue(
            self.settings.livestream.queue_bytes, term.lost, self.upstream.close_linger_s
        )
        failure: list[BaseException] = []
        reader = threading.Thread(
            target=self._read,
            args=(_Sink(queue, self, halt), halt, first_delay, failure),
            name="upstream-reader",
            daemon=True,
        )
        reader.start()
        fenced, pumped = False, False
        stream = _Records(self, lambda reason: self._cut(queue, reason))
        try:
            self._pump(queue, stream, halt)
            pumped = True
        except FencedError as exc:
            fenced = pumped = True
            self.log.warning("bridge.fenced", term=term.number, error=str(exc))
        finally:
            halt.set()
            self._cut(queue, "shutdown" if stop.is_set() else "leadership ended")
            if not pumped or term.lost.is_set() or fenced:
                reader.join()
                self.publisher.abort()
            if not pumped:  # KafkaSetupError (missing ACLs) or a bug: the process ends
                self.election.release(clean=self.upstream.last_close_clean)
        # Shutdown, or an upstream error that ends the process: either way we still lead, so
        # finish the work in hand. Only a deposed writer must not write another byte.
        if not term.lost.is_set() and not fenced:
            # Everything already read is published before we let go, including what the
            # server sends until it answers our FIN: Live Stream counts it as delivered, so
            # dropping it here would lose it.
            self._drain(queue, stream, reader)
            self.publisher.close(self.settings.publish.shutdown_timeout_s)
            self.election.release(clean=self.upstream.last_close_clean)
        elif fenced and not term.lost.is_set():
            self._yield_term(term)
        self._queue = self._term = None  # what a deposed term left queued is dropped
        self._standby()
        if failure:
            raise failure[0]

    def _standby(self) -> None:
        self.state.upstream = "standby"
        self.metrics.set_upstream_state("standby")

    def _yield_term(self, term: Term) -> None:
        """Kafka says another writer owns the topic while our election still says we lead
        (a woken zombie whose election thread has not caught up yet). Leading again on this
        term would run init_transactions and fence the rightful leader back, so give the
        election time to notice, and if it does not, give the leadership up."""
        e = self.settings.election
        settle_s = (
            0.0 if e.backend == "none" else max(e.session_timeout_ms / 1000, e.lease_duration_s)
        )
        if not term.lost.wait(settle_s):
            self.log.warning("bridge.yield_leadership", term=term.number, reason="fenced")
            self.election.release(clean=self.upstream.last_close_clean)

    def _begin(self, term: Term, halt: threading.Event) -> bool:
        """init_transactions (fencing the old writer) and seed; retried while Kafka is down."""
        while not halt.is_set():
            try:
                self.publisher.begin(term.fencing)
                return True
            except FencedError as exc:
                self.log.warning("bridge.fenced_at_start", term=term.number, error=str(exc))
                return False
            except KafkaSetupError:
                raise
            except PublishError as exc:
                self.log.warning("bridge.kafka_unavailable", term=term.number, error=str(exc))
                halt.wait(1.0)
        return False

    def _read(
        self, sink: _Sink, halt: threading.Event, first_delay: float, failure: list[BaseException]
    ) -> None:
        try:
            self.upstream.run(sink, halt, first_delay=first_delay)
        except BaseException as exc:  # handed to the main thread, which decides the exit code
            failure.append(exc)
            halt.set()

    def _pump(self, queue: _ChunkQueue, stream: _Records, halt: threading.Event) -> None:
        publish = self.publisher
        outage_s = self.settings.publish.kafka_outage_s
        beat_allowance = max(30.0, 3 * self.settings.publish.kafka_outage_s)
        while not halt.is_set():
            self.state.beat("pump", beat_allowance)
            item = queue.get(_IDLE_TICK_S)
            if item is not None:
                for records in stream.take(item):
                    self._publish(records, item.read_at)
            try:
                publish.maybe_commit()
            except (FencedError, KafkaSetupError):
                raise
            except PublishError as exc:
                # A commit that cannot finish (no producer can be made, or failures past
                # the outage limit) is the same outage as a refused publish: the writer
                # keeps the transaction's records and the next call tries again.
                self.log.warning("bridge.commit_failed", error=str(exc))
            if publish.unreachable_for() > outage_s and self.upstream.state == "streaming":
                self.log.warning("bridge.kafka_outage", unreachable_s=publish.unreachable_for())
                self._cut(queue, "kafka unreachable")
        self.state.forget("pump")

    def _cut(self, queue: _ChunkQueue | None, reason: str) -> None:
        if queue is not None:
            queue.cut.set()
        self.upstream.disconnect(reason)

    def _drain(self, queue: _ChunkQueue, stream: _Records, reader: threading.Thread) -> None:
        """Publish what is queued, and what the reader still queues while its close runs."""
        # Once the reader has ended, everything it will ever queue is queued.
        while reader.is_alive() or len(queue):
            item = queue.get(_IDLE_TICK_S)
            if item is not None:
                for records in stream.take(item):
                    self._publish(records, item.read_at)
        reader.join()

    def _publish(self, records: list[bytes], read_at: float) -> None:
        publisher, start, outage = self.publisher, 0, False
        while True:
            try:
                publisher.publish_many(records, read_at, start)
                break
            except (FencedError, KafkaSetupError):
                raise
            except PublishError as exc:
                start = exc.resume_at
                if not outage:
                    # Kafka stayed away longer than kafka_outage_s: close upstream cleanly
                    # (Live Stream resumes from there later) and keep offering the rest of
                    # these records, already read, until Kafka takes them.
                    outage = True
                    self._cut(self._queue, "kafka unreachable")
                elif self._halt is not None and self._halt.is_set():
                    raise
                else:
                    self.state.beat("pump", 3 * self.settings.publish.kafka_outage_s)
        self.metrics.records_received.inc(len(records))
        self.metrics.last_record_timestamp.set(read_at)
        self.state.last_record_at = read_at


def _halt_when(halt: threading.Event, stop: threading.Event, lost: threading.Event) -> None:
    while not halt.is_set():
        if stop.wait(_IDLE_TICK_S) or lost.is_set():
            halt.set()
