"""The reader-to-pump hand-off of one term of leadership.

Two threads carry the data. The *reader* (``upstream-reader``, running ``Upstream.run``)
only moves compressed bytes from the socket into a queue bounded in bytes; the *pump* (the
thread that calls ``Pipeline.pump``: the service's main thread) gunzips, frames, publishes
and commits. Keeping the socket read on its own thread means a blocked read never delays
a commit, and a full queue pushes back on the socket instead of growing memory.

A ``Pipeline`` is built from what it uses: the settings, the upstream, the publisher, the
term's two cancel scopes (``halt``: stop reading; ``deposed``: drop what is queued),
metrics, state and log. It knows nothing of elections or processes, so it can be driven
with a fake upstream and a fake publisher.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from bridge.cancel import Cancel
from bridge.config import Settings
from bridge.decode import RecordDecoder
from bridge.errors import FencedError, KafkaSetupError, PublishError, UpstreamLost
from bridge.livestream import ChunkSink
from bridge.logs import EventLog
from bridge.observability import Metrics, State

__all__ = ["ChunkQueue", "Item", "Kind", "Pipeline", "Reader", "Sender"]

IDLE_TICK_S = 0.05  # the pump's pace with nothing queued: how often it looks at commits


class Kind(Enum):
    """What a queued item says: a stream opened, body bytes arrived, the stream closed."""

    OPEN = "open"
    DATA = "data"
    CLOSE = "close"


@dataclass(slots=True)
class Item:
    kind: Kind
    connection: int
    data: bytes = b""  # compressed body bytes, as read
    read_at: float = 0.0
    reason: str = ""


class Reader(Protocol):
    """The upstream as the pipeline uses it (``bridge.livestream.Upstream``)."""

    close_linger_s: float

    @property
    def state(self) -> str: ...

    def run(self, sink: ChunkSink, stop: Cancel, *, first_delay: float = 0.0) -> None: ...

    def disconnect(self, reason: str) -> None: ...


class Sender(Protocol):
    """The publisher as the pipeline uses it (``bridge.publish.Publisher``)."""

    def publish_many(self, records: list[bytes], received_at: float, start: int = 0) -> None: ...

    def maybe_commit(self) -> None: ...

    def unreachable_for(self) -> float: ...

    def top_up(self) -> None: ...


class ChunkQueue:
    """Reader-to-pump hand-over, bounded by the bytes it holds (back-pressure)."""

    def __init__(self, max_bytes: int, deposed: Cancel, cut_wait_s: float) -> None:
        self._items: deque[Item] = deque()
        self._bytes = 0
        self._max = max_bytes
        # A reader waiting for room is woken once the queue has drained to half, not by
        # every get: it then refills in a burst of full-size reads from the socket buffer
        # that filled meanwhile. Woken per get, it made one small read per chunk taken, at
        # twice the reader's CPU per hit. The bound and its back-pressure are as before.
        self._low = max_bytes // 2
        self._deposed = deposed
        self._cond = threading.Condition()
        # Set when the pump wants the current connection gone. The bytes the server still
        # sends until its FIN were delivered as far as Live Stream knows, so the reader keeps
        # queueing them. A full queue then waits at most ``cut_wait_s`` (the reader's close
        # linger) for room before it takes the chunk over the bound: by then the reader's
        # close has been forced, so this happens once per close at most, and memory stays
        # bounded by ``max_bytes`` plus one chunk.
        self._cut = False
        self._cut_wait_s = cut_wait_s
        deposed.subscribe(self._wake)  # a put waiting for room gives up at once

    def put(self, item: Item) -> bool:
        """Queue ``item``; blocks while full. False once we are deposed (drop it all)."""
        with self._cond:
            deadline: float | None = None
            while self._bytes >= self._max and item.kind is Kind.DATA:
                if self._deposed.is_set():
                    return False
                timeout: float | None = None  # until get() makes room or a wake
                if self._cut:
                    now = time.monotonic()
                    deadline = now + self._cut_wait_s if deadline is None else deadline
                    if now >= deadline:
                        break
                    timeout = deadline - now
                self._cond.wait(timeout)
            if self._deposed.is_set() and item.kind is Kind.DATA:
                return False
            self._items.append(item)
            self._bytes += len(item.data)
            self._cond.notify_all()
        return True

    def get(self, timeout: float) -> Item | None:
        with self._cond:
            if not self._items and not self._cond.wait_for(lambda: bool(self._items), timeout):
                return None
            item = self._items.popleft()
            self._bytes -= len(item.data)
            if self._bytes < self._low or self._cut:
                self._cond.notify_all()
            return item

    def cut(self) -> None:
        """The current connection is being closed: see the constructor."""
        with self._cond:
            self._cut = True
            self._cond.notify_all()

    def uncut(self) -> None:
        """A new connection opened: the bound holds strictly again."""
        with self._cond:
            self._cut = False

    @property
    def bytes(self) -> int:
        """Compressed bytes queued (one read of an int: no lock needed for a gauge)."""
        return self._bytes

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def _wake(self, _reason: str) -> None:
        with self._cond:
            self._cond.notify_all()


class _Sink:
    """The ChunkSink the reader thread writes to: compressed bytes into the queue, as read.

    Gunzip and framing stay on the pump. Done here they would be slower, not faster: zlib
    lets go of the GIL for each block of output and then waits to get it back from the busy
    pump, so a second thread decompressing next to it ran at a small fraction of its speed.
    """

    def __init__(
        self,
        queue: ChunkQueue,
        publisher: Sender,
        halt: Cancel,
        state: State,
        *,
        announce: Callable[[], None],
        agree: Callable[[], bool],
    ) -> None:
        self._queue, self._publisher, self._halt = queue, publisher, halt
        self._state, self._announce, self._agree = state, announce, agree
        # The pump tops up the dedupe window once, just before the first connection.
        self.top_up_wanted, self.topped_up = threading.Event(), threading.Event()
        self.waiting = "waiting_kafka"

    def ready(self, timeout: float) -> bool:
        # Reconnecting while Kafka cannot take data would only fill the queue again and
        # then drop the connection again: a reconnect storm by another name. And no
        # connection at all while another slot may hold one with another maxConnections
        # (bridge.election.agreement).
        if self._publisher.unreachable_for() > 0.0:
            self.waiting = "waiting_kafka"
        elif not self._agree():
            self.waiting = "waiting_slots"
        else:
            self.top_up_wanted.set()
            return self.topped_up.wait(timeout)
        self._halt.wait(timeout)
        return False

    def opened(self, connection_id: int) -> None:
        self._queue.uncut()
        self._queue.put(Item(Kind.OPEN, connection_id))
        self._state.upstream = "streaming"
        self._announce()

    def chunk(self, data: bytes) -> bool:
        return self._queue.put(Item(Kind.DATA, 0, data, time.time()))

    def closed(self, connection_id: int, reason: str) -> None:
        self._queue.put(Item(Kind.CLOSE, connection_id, reason=reason))
        self._state.upstream = "reconnecting"


class _Records:
    """The pump's side of the stream: one decoder per connection, fed in queue order."""

    def __init__(
        self, settings: Settings, metrics: Metrics, log: EventLog, cut: Callable[[str], None]
    ) -> None:
        self._limits = (
            settings.livestream.max_record_bytes,
            settings.livestream.max_compression_ratio,
        )
        self._metrics, self._log, self._cut = metrics, log, cut
        self._decoder: RecordDecoder | None = None

    def take(self, item: Item) -> Iterator[list[bytes]]:
        """The records ``item`` completes, in bounded batches (publish each before the next:
        that is what bounds memory when a small chunk inflates to a great many records);
        none for open/close and after a corrupt chunk."""
        if item.kind is Kind.OPEN:
            self._decoder = RecordDecoder(*self._limits)
            return
        decoder = self._decoder
        if item.kind is Kind.CLOSE or decoder is None:
            # A record cut off by the drop dies with the decoder; Live Stream resends it on
            # resume. After a corrupt chunk the rest of that connection cannot be decoded.
            self._decoder = None
            return
        before = decoder.decompressed_bytes
        try:
            yield from decoder.batches(item.data)
        except UpstreamLost as exc:  # close this connection; the reconnect rules apply
            self._decoder = None
            self._log.warning("bridge.corrupt_stream", error=str(exc))
            self._cut(str(exc))
        finally:
            self._metrics.bytes_decompressed.inc(decoder.decompressed_bytes - before)


class Pipeline:
    """One term's reader thread, queue, decoding and publishing (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        upstream: Reader,
        publisher: Sender,
        *,
        halt: Cancel,
        deposed: Cancel,
        metrics: Metrics,
        state: State,
        log: EventLog,
        announce: Callable[[], None] = lambda: None,
        agree: Callable[[], bool] = lambda: True,
    ) -> None:
        self._settings, self._halt = settings, halt
        self._upstream, self._publisher = upstream, publisher
        self._metrics, self._state, self._log = metrics, state, log
        self._queue = ChunkQueue(settings.livestream.queue_bytes, deposed, upstream.close_linger_s)
        self._sink = _Sink(self._queue, publisher, halt, state, announce=announce, agree=agree)
        self._records = _Records(settings, metrics, log, self.cut)
        self._reader: threading.Thread | None = None
        self.failure: BaseException | None = None  # what ended the reader, if it raised

    @property
    def queued_bytes(self) -> int:
        """Compressed bytes read and not yet taken by the pump."""
        return self._queue.bytes

    def start(self, first_delay: float) -> None:
        """Start the reader: the first connection after ``first_delay`` seconds."""
        self._reader = threading.Thread(
            target=self._read, args=(first_delay,), name="upstream-reader", daemon=True
        )
        self._reader.start()

    def pump(self) -> None:
        """Decode, publish and commit until ``halt`` fires. Raises ``FencedError`` and
        ``KafkaSetupError``, which retrying cannot fix."""
        publisher, queue, records = self._publisher, self._queue, self._records
        outage_s = self._settings.publish.kafka_outage_s
        beat_allowance = max(30.0, 3 * outage_s)
        while not self._halt.is_set():
            self._state.beat("pump", beat_allowance)
            item = queue.get(IDLE_TICK_S)
            if item is not None:
                for batch in records.take(item):
                    self.publish(batch, item.read_at)
            elif self._sink.top_up_wanted.is_set() and not self._sink.topped_up.is_set():
                publisher.top_up()
                self._sink.topped_up.set()
            try:
                publisher.maybe_commit()
            except (FencedError, KafkaSetupError):
                raise
            except PublishError as exc:
                # A commit that cannot finish (no producer can be made, or failures past
                # the outage limit) is the same outage as a refused publish: the writer
                # keeps the transaction's records and the next call tries again.
                self._log.warning("bridge.commit_failed", error=str(exc))
            if publisher.unreachable_for() > outage_s and self._upstream.state == "streaming":
                self._log.warning("bridge.kafka_outage", unreachable_s=publisher.unreachable_for())
                self.cut("kafka unreachable")
        self._state.forget("pump")

    def cut(self, reason: str) -> None:
        """Close the current connection cleanly; the reader reconnects by the rules."""
        self._queue.cut()
        self._upstream.disconnect(reason)

    def join_reader(self) -> None:
        """Wait for the reader to end (``halt`` has fired: it is closing)."""
        if self._reader is not None:
            self._reader.join()

    def drain(self) -> None:
        """Publish what is queued, and what the reader still queues while its close runs."""
        reader, queue = self._reader, self._queue
        # Once the reader has ended, everything it will ever queue is queued.
        while (reader is not None and reader.is_alive()) or len(queue):
            item = queue.get(IDLE_TICK_S)
            if item is not None:
                for batch in self._records.take(item):
                    self.publish(batch, item.read_at)
        self.join_reader()

    def publish(self, records: list[bytes], read_at: float) -> None:
        """Hand ``records`` to Kafka, retrying through an outage from the first record not
        yet taken (``PublishError.resume_at``)."""
        publisher, start, outage = self._publisher, 0, False
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
                    self.cut("kafka unreachable")
                elif self._halt.is_set():
                    raise
                else:
                    self._state.beat("pump", 3 * self._settings.publish.kafka_outage_s)
        self._metrics.records_received.inc(len(records))
        self._metrics.last_record_timestamp.set(read_at)
        self._state.last_record_at = read_at

    def _read(self, first_delay: float) -> None:
        try:
            self._upstream.run(self._sink, self._halt, first_delay=first_delay)
        except BaseException as exc:  # handed to the pump's thread, which decides the exit
            self.failure = exc
            self._halt.fire("upstream failed")
