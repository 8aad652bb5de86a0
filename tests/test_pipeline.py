"""The reader-to-pump hand-off, driven without processes: a fake upstream that calls the
sink as ``Upstream.run`` does, and a fake publisher (pure unit tests of our own logic)."""

from __future__ import annotations

import gzip
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bridge.cancel import Cancel
from bridge.config import AuthSettings, KafkaSettings, LivestreamSettings, Settings
from bridge.errors import FencedError, PublishError
from bridge.livestream import ChunkSink
from bridge.logs import EventLog
from bridge.observability import Metrics, State
from bridge.pipeline import ChunkQueue, Item, Kind, Pipeline
from tests.testutil import wait_until


def gz(*records: bytes) -> bytes:
    return gzip.compress(b"".join(r + b"\r\n" for r in records))


class FakeUpstream:
    """Stands in for ``Upstream``: ``run`` opens connection 1, hands ``chunks`` to the
    sink, then holds the stream until stop fires or ``disconnect`` is called; after a
    disconnect it hands over ``after_fin`` (what a server sends until its own FIN)."""

    close_linger_s = 0.5

    def __init__(self, chunks: list[bytes], after_fin: list[bytes] | None = None) -> None:
        self.chunks, self.after_fin = chunks, after_fin or []
        self.disconnects: list[str] = []
        self.closing = threading.Event()
        self.delivered = threading.Event()
        self.fail: BaseException | None = None
        self._state = "idle"

    @property
    def state(self) -> str:
        return self._state

    def run(self, sink: ChunkSink, stop: Cancel, *, first_delay: float = 0.0) -> None:
        if self.fail is not None:
            raise self.fail
        leave = stop.subscribe(self.disconnect)
        try:
            sink.opened(1)
            self._state = "streaming"
            for data in self.chunks:
                if not sink.chunk(data):
                    break
            self.delivered.set()
            self.closing.wait(10)
            for data in self.after_fin:
                sink.chunk(data)
            self._state = "waiting"
            sink.closed(1, self.disconnects[0] if self.disconnects else "eof")
        finally:
            leave()

    def disconnect(self, reason: str) -> None:
        self.disconnects.append(reason)
        self.closing.set()


class FakePublisher:
    """Records every publish_many call; ``refusals`` calls raise PublishError first, each
    having taken ``taken`` records of the batch."""

    def __init__(self, refusals: int = 0, taken: int = 0) -> None:
        self.calls: list[tuple[list[bytes], int]] = []
        self.published: list[bytes] = []
        self.refusals, self.taken = refusals, taken
        self.unreachable = 0.0
        self.commits = 0
        self.fenced = False
        self.top_ups = 0

    def publish_many(self, records: list[bytes], received_at: float, start: int = 0) -> None:
        self.calls.append((list(records), start))
        if self.fenced:
            raise FencedError("another writer owns the topic")
        if self.refusals:
            self.refusals -= 1
            self.published.extend(records[start : start + self.taken])
            exc = PublishError("kafka unreachable (fake)")
            exc.resume_at = start + self.taken
            raise exc
        self.published.extend(records[start:])

    def maybe_commit(self) -> None:
        self.commits += 1

    def top_up(self) -> None:
        self.top_ups += 1

    def unreachable_for(self) -> float:
        return self.unreachable


def settings(**livestream: Any) -> Settings:
    livestream.setdefault("queue_bytes", 65536)
    return Settings(
        _env_file=None,
        livestream=LivestreamSettings(url="http://127.0.0.1:9/x", **livestream),
        auth=AuthSettings(access_token="t"),
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"),  # never contacted here
    )


class Rig:
    """A Pipeline over the fakes, its pump on a thread; ``halt`` and ``deposed`` are the
    term's scopes."""

    def __init__(
        self,
        upstream: FakeUpstream,
        publisher: FakePublisher,
        agree: Callable[[], bool] = lambda: True,
        **ls: Any,
    ) -> None:
        self.upstream, self.publisher = upstream, publisher
        self.halt, self.deposed = Cancel(), Cancel()
        self.metrics, self.state = Metrics(), State(identity="test")
        self.announced = threading.Event()
        self.pipeline = Pipeline(
            settings(**ls),
            upstream,
            publisher,
            halt=self.halt,
            deposed=self.deposed,
            metrics=self.metrics,
            state=self.state,
            log=EventLog("bridge.service"),
            announce=self.announced.set,
            agree=agree,
        )
        self.raised: list[BaseException] = []
        self.pumped = threading.Event()
        self.thread = threading.Thread(target=self._pump, daemon=True)

    def start(self) -> Rig:
        self.pipeline.start(0.0)
        self.thread.start()
        return self

    def _pump(self) -> None:
        try:
            self.pipeline.pump()
        except BaseException as exc:
            self.raised.append(exc)
        finally:
            self.pumped.set()

    def stop(self, reason: str = "shutdown") -> None:
        self.halt.fire(reason)
        assert self.pumped.wait(5), "the pump must end once halt fires"


@pytest.fixture
def finish() -> Iterator[Callable[[Rig], None]]:
    rigs: list[Rig] = []
    yield rigs.append
    for rig in rigs:
        rig.halt.fire("test over")
        rig.upstream.closing.set()
        rig.pipeline.join_reader()


def test_records_flow_in_order_and_are_counted(finish: Callable[[Rig], None]) -> None:
    """Records of every chunk reach the publisher in stream order, the connection is
    announced, and records_received counts them."""
    records = [b'{"n":%d}' % i for i in range(30)]
    rig = Rig(FakeUpstream([gz(*records[:10]), gz(*records[10:])]), FakePublisher()).start()
    finish(rig)
    wait_until(lambda: rig.publisher.published == records, 5, "all records published")
    assert rig.announced.is_set()
    assert rig.metrics.records_received._value.get() == 30
    assert rig.state.upstream == "streaming"


def test_outage_retry_resumes_at_resume_at_and_cuts_once(
    finish: Callable[[Rig], None],
) -> None:
    """A refused batch is offered again from PublishError.resume_at, never from 0, and the
    first refusal closes upstream cleanly ("kafka unreachable") exactly once."""
    records = [b'{"n":%d}' % i for i in range(10)]
    rig = Rig(FakeUpstream([gz(*records)]), FakePublisher(refusals=3, taken=2)).start()
    finish(rig)
    wait_until(lambda: rig.publisher.published == records, 5, "the batch to be taken")
    assert [start for _, start in rig.publisher.calls] == [0, 2, 4, 6]
    assert rig.upstream.disconnects == ["kafka unreachable"]


def test_halt_during_an_outage_gives_up_the_batch(finish: Callable[[Rig], None]) -> None:
    """While Kafka keeps refusing, a fired halt makes the retry loop raise the
    PublishError instead of retrying forever."""
    rig = Rig(FakeUpstream([gz(b'{"n":1}')]), FakePublisher(refusals=10**6)).start()
    finish(rig)
    wait_until(lambda: len(rig.publisher.calls) > 3, 5, "retries under the outage")
    rig.stop()
    assert len(rig.raised) == 1 and type(rig.raised[0]) is PublishError


def test_fenced_is_raised_at_once(finish: Callable[[Rig], None]) -> None:
    """FencedError from the publisher ends the pump at once, without a retry."""
    publisher = FakePublisher()
    publisher.fenced = True
    rig = Rig(FakeUpstream([gz(b'{"n":1}')]), publisher).start()
    finish(rig)
    assert rig.pumped.wait(5)
    assert isinstance(rig.raised[0], FencedError) and len(publisher.calls) == 1


def test_corrupt_stream_is_cut_and_the_rest_of_it_dropped(
    finish: Callable[[Rig], None], caplog: pytest.LogCaptureFixture
) -> None:
    """A chunk that is not gzip logs bridge.corrupt_stream, closes the connection, and what
    that connection sends after it is not decoded."""
    caplog.set_level(logging.WARNING, logger="bridge")
    good = gz(b'{"n":1}')
    rig = Rig(FakeUpstream([good, b"this is not gzip", gz(b'{"n":2}')]), FakePublisher())
    rig.start()
    finish(rig)
    wait_until(lambda: rig.upstream.disconnects != [], 5, "the cut")
    wait_until(lambda: rig.pipeline.queued_bytes == 0, 5, "the queue to be taken")
    assert rig.publisher.published == [b'{"n":1}']
    assert "corrupt_stream" in caplog.text
    assert rig.upstream.disconnects[0] != "kafka unreachable"


def test_outage_while_streaming_cuts_upstream(finish: Callable[[Rig], None]) -> None:
    """Kafka unreachable past kafka_outage_s while streaming closes upstream cleanly."""
    publisher = FakePublisher()
    rig = Rig(FakeUpstream([gz(b'{"n":1}')]), publisher)
    rig.start()
    finish(rig)
    wait_until(rig.upstream.delivered.is_set, 5, "the stream to open")
    publisher.unreachable = 61.0  # past the default kafka_outage_s of 60
    wait_until(lambda: rig.upstream.disconnects == ["kafka unreachable"], 5, "the cut")


def test_drain_publishes_what_was_queued_and_what_came_after_the_cut(
    finish: Callable[[Rig], None],
) -> None:
    """Halt stops the pump; drain then publishes everything queued, including the records
    the server sent between our FIN and its own."""
    before = [b'{"n":%d}' % i for i in range(5)]
    after = [b'{"n":%d}' % i for i in range(5, 9)]
    # One gzip stream: what comes after our FIN continues the same member.
    body = gz(*before, *after)
    upstream = FakeUpstream([body[:20]], after_fin=[body[20:]])
    rig = Rig(upstream, FakePublisher()).start()
    finish(rig)
    assert upstream.delivered.wait(5)
    rig.stop()
    rig.pipeline.cut("shutdown")
    rig.pipeline.drain()
    assert rig.publisher.published == before + after
    assert rig.pipeline.queued_bytes == 0
    assert upstream.disconnects[0] == "shutdown"


def test_reader_failure_is_kept_and_halts(finish: Callable[[Rig], None]) -> None:
    """An exception from the upstream's run is handed over as ``failure`` and ends the pump."""
    upstream = FakeUpstream([])
    upstream.fail = RuntimeError("fatal upstream")
    rig = Rig(upstream, FakePublisher()).start()
    finish(rig)
    assert rig.pumped.wait(5)
    assert rig.raised == []
    assert isinstance(rig.pipeline.failure, RuntimeError)
    assert rig.halt.reason == "upstream failed"


def test_sink_is_not_ready_while_kafka_is_unreachable() -> None:
    """The reader does not connect while the publisher reports Kafka unreachable, nor
    before the pump has topped up the dedupe window."""
    publisher = FakePublisher()
    rig = Rig(FakeUpstream([]), publisher)
    sink = rig.pipeline._sink
    assert not sink.ready(0)  # asks the pump for the top-up first
    assert sink.top_up_wanted.is_set()
    sink.topped_up.set()
    assert sink.ready(0)
    publisher.unreachable = 1.0
    assert not sink.ready(0)


def test_the_pump_tops_up_the_window_once_before_the_first_connection(
    finish: Callable[[Rig], None],
) -> None:
    """The first ready() makes the idle pump top up the dedupe window, once per term."""
    rig = Rig(FakeUpstream([]), FakePublisher()).start()
    sink = rig.pipeline._sink
    assert sink.ready(5)
    assert sink.ready(0)
    assert rig.publisher.top_ups == 1
    finish(rig)


def test_no_connection_and_no_top_up_until_the_slots_agree() -> None:
    """While another slot may be connected with another maxConnections, the reader waits
    (and the window is not topped up yet); it connects once they agree."""
    verdicts = [False, False, True]
    rig = Rig(FakeUpstream([]), FakePublisher(), agree=lambda: verdicts.pop(0))
    sink = rig.pipeline._sink
    assert not sink.ready(0)
    assert not sink.ready(0)
    assert sink.waiting == "waiting_slots"
    assert not sink.top_up_wanted.is_set()
    sink.topped_up.set()
    assert sink.ready(0)
    assert verdicts == []


# -- the queue itself --------------------------------------------------------------------


def data(n: int) -> Item:
    return Item(Kind.DATA, 0, b"x" * n)


def put_on_thread(queue: ChunkQueue, item: Item) -> tuple[threading.Thread, list[bool]]:
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(queue.put(item)), daemon=True)
    thread.start()
    return thread, result


def test_full_queue_pushes_back_until_room_is_made() -> None:
    """A put on a full queue blocks the reader until the pump takes an item."""
    queue = ChunkQueue(100, Cancel(), 0.5)
    assert queue.put(data(100))
    thread, result = put_on_thread(queue, data(10))
    thread.join(0.2)
    assert thread.is_alive(), "a full queue must block the reader"
    got = queue.get(1)
    assert got is not None and len(got.data) == 100
    thread.join(2)
    assert result == [True] and queue.bytes == 10


def test_a_blocked_put_resumes_once_the_queue_has_drained_below_half() -> None:
    """A reader blocked on a full queue is not woken by each get, only once the pump has
    taken it below half its bound; then its chunk goes in."""
    queue = ChunkQueue(100, Cancel(), 0.5)
    for _ in range(4):
        assert queue.put(data(25))
    thread, result = put_on_thread(queue, data(10))
    assert queue.get(1) is not None and queue.get(1) is not None  # 50 left: not below half
    thread.join(0.2)
    assert thread.is_alive() and queue.bytes == 50
    assert queue.get(1) is not None  # 25 left
    thread.join(2)
    assert result == [True] and queue.bytes == 35


def test_deposition_wakes_a_blocked_put_which_drops_its_chunk() -> None:
    """Firing deposed wakes a put blocked on a full queue at once; it returns False and
    queues nothing, and later data is refused while opens and closes still pass."""
    deposed = Cancel()
    queue = ChunkQueue(100, deposed, 30.0)
    queue.put(data(100))
    thread, result = put_on_thread(queue, data(10))
    thread.join(0.1)
    assert thread.is_alive()
    started = time.monotonic()
    deposed.fire("leadership ended")
    thread.join(2)
    assert result == [False] and time.monotonic() - started < 1.0
    assert not queue.put(data(1))
    assert queue.put(Item(Kind.CLOSE, 1, reason="leadership ended"))
    assert len(queue) == 2


def test_a_cut_lets_a_full_queue_overflow_by_one_chunk_after_the_linger() -> None:
    """Once the connection is being cut, a put waiting for room takes the chunk over the
    bound after at most the close linger (bytes still arriving must not be lost)."""
    queue = ChunkQueue(100, Cancel(), 0.3)
    queue.put(data(100))
    thread, result = put_on_thread(queue, data(10))
    thread.join(0.1)
    assert thread.is_alive()
    started = time.monotonic()
    queue.cut()
    thread.join(3)
    waited = time.monotonic() - started
    assert result == [True] and queue.bytes == 110
    assert 0.25 <= waited < 2.0
    queue.uncut()
    thread, result = put_on_thread(queue, data(10))
    thread.join(0.5)
    assert thread.is_alive(), "after a new open the bound holds strictly again"
    queue.get(0)
    thread.join(2)
    assert result == [True]
