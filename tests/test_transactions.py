"""TransactionalWriter (through the Publisher that holds it): its state machine on a fake
producer; fencing on the real broker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from bridge.config import KafkaSettings, PublishSettings
from bridge.errors import FencedError, PublishError
from bridge.observability import Metrics
from bridge.publish import Publisher
from tests.kafkautil import read_all
from tests.publishing import (
    NOW,
    FakeClock,
    FakeProducer,
    StubFencing,
    Timeouts,
    fake_fixture,  # noqa: F401 - the `fake` fixture: pytest finds it in this module
    fake_publisher,
    header,
    kafka_settings,
    make_bodies,
    make_hit,
    run_publisher,
)


def test_commits_on_interval_and_on_size(fake: type[FakeProducer]) -> None:
    """maybe_commit commits after commit_interval_ms; publish commits at commit_max_records."""
    clock = FakeClock()
    pub, metrics = fake_publisher(clock, commit_interval_ms=100, commit_max_records=3)
    pub.begin(None)
    producer = fake.instances[0]
    pub.publish(b'{"hitIdHigh":1,"hitIdLow":1}', NOW)
    pub.maybe_commit()
    assert producer.calls.count("commit_transaction") == 0
    clock.now += 0.1
    pub.maybe_commit()
    assert producer.calls.count("commit_transaction") == 1
    assert metrics.records_published._value.get() == 1
    for n in range(2, 5):
        pub.publish(b'{"hitIdHigh":1,"hitIdLow":%d}' % n, NOW)
    assert producer.calls.count("commit_transaction") == 2
    assert metrics.records_published._value.get() == 4


def test_abortable_commit_replays_the_kept_records(fake: type[FakeProducer]) -> None:
    """txn_requires_abort on commit: abort, begin, re-produce the same records, commit."""
    pub, metrics = fake_publisher()
    pub.begin(None)
    records = [b'{"hitIdHigh":1,"hitIdLow":%d}' % n for n in range(5)]
    for record in records:
        pub.publish(record, NOW)
    fake.script["commit_transaction"] = [
        KafkaError(KafkaError._MSG_TIMED_OUT, "timed out", txn_requires_abort=True)
    ]
    pub.commit()
    producer = fake.instances[0]
    assert [v for _, v, _, _ in producer.committed] == records
    assert "abort_transaction" in producer.calls
    assert metrics.transactions.labels(result="aborted")._value.get() == 1
    assert metrics.records_published._value.get() == 5


def test_retriable_errors_are_retried(fake: type[FakeProducer]) -> None:
    """A retriable commit error is retried; nothing is lost or duplicated."""
    pub, _ = fake_publisher()
    pub.begin(None)
    pub.publish(b'{"hitIdHigh":1,"hitIdLow":1}', NOW)
    fake.script["commit_transaction"] = [KafkaError(KafkaError._TIMED_OUT, retriable=True)] * 2
    pub.commit()
    producer = fake.instances[0]
    assert producer.calls.count("commit_transaction") == 3
    assert len(producer.committed) == 1


def test_fatal_error_rebuilds_the_producer_and_replays(fake: type[FakeProducer]) -> None:
    """A fatal (not fenced) error: new producer, init_transactions, same records re-produced."""
    pub, _ = fake_publisher()
    pub.begin(None)
    pub.publish(b'{"hitIdHigh":1,"hitIdLow":1}', NOW)
    fake.script["commit_transaction"] = [KafkaError(KafkaError._INCONSISTENT, "bad", fatal=True)]
    pub.commit()
    assert len(fake.instances) == 2
    assert fake.instances[1].calls[:2] == ["init_transactions", "begin_transaction"]
    assert [v for _, v, _, _ in fake.instances[1].committed] == [b'{"hitIdHigh":1,"hitIdLow":1}']


def test_moved_generation_with_a_live_term_retries_the_same_records(
    fake: type[FakeProducer],
) -> None:
    """ILLEGAL_GENERATION while the election still holds the partition: abort, then the same
    records commit in a new transaction with the renewed metadata; no FencedError."""
    pub, metrics = fake_publisher()
    pub.begin(StubFencing(renewed=True))
    pub.publish(b'{"hitIdHigh":1,"hitIdLow":1}', NOW)
    fake.script["send_offsets_to_transaction"] = [
        KafkaError(KafkaError.ILLEGAL_GENERATION, txn_requires_abort=True)
    ]
    pub.commit()
    producer = fake.instances[0]
    assert producer.calls.count("abort_transaction") == 1
    assert [v for _, v, _, _ in producer.committed] == [b'{"hitIdHigh":1,"hitIdLow":1}']
    assert metrics.records_published._value.get() == 1


@pytest.mark.parametrize(
    "code",
    [
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError.REBALANCE_IN_PROGRESS,
    ],
)
def test_fencing_errors_raise_fenced_error(fake: type[FakeProducer], code: int) -> None:
    """Fenced producer or stale group generation on the offsets commit -> FencedError, no commit."""

    pub, metrics = fake_publisher()
    pub.begin(StubFencing())
    pub.publish(b'{"hitIdHigh":1,"hitIdLow":1}', NOW)
    fake.script["send_offsets_to_transaction"] = [KafkaError(code, txn_requires_abort=True)]
    with pytest.raises(FencedError):
        pub.commit()
    assert "commit_transaction" not in fake.instances[0].calls
    with pytest.raises(FencedError):
        pub.publish(b'{"hitIdHigh":1,"hitIdLow":2}', NOW)
    pub.abort()  # what the service does next; must not raise
    pub.close(1.0)
    assert metrics.records_published._value.get() == 0


@pytest.mark.parametrize(
    ("record", "tries"),
    [
        (b'{"hitIdHigh":1,"hitIdLow":2}', 1),  # no visitor id: the general path alone
        (b'{"hitIdHigh":1,"hitIdLow":2,"visIdHigh":3,"visIdLow":4}', 2),  # the lane first
    ],
)
def test_a_bare_fatal_from_produce_surfaces_the_fence_behind_it(
    fake: type[FakeProducer], record: bytes, tries: int
) -> None:
    """Once fenced, produce() raises only _FATAL; the writer asks poll() for the cause and
    raises FencedError (stepping down), not a plain PublishError, whichever path tried."""

    class FencedProducer(FakeProducer):
        def poll(self, timeout: float = 0) -> int:
            if "produce" in FakeProducer.script and not FakeProducer.script["produce"]:
                raise KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))
            return 0

    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1", topic="hits", dlq_topic="dlq")
    pub = Publisher(kafka, PublishSettings(), Metrics(), producer_factory=FencedProducer)
    pub.begin(None)
    pub.publish(b'{"hitIdHigh":1,"hitIdLow":1}', NOW)
    # librdkafka answers every produce() so (the fake until each path has tried once).
    fake.script["produce"] = [KafkaError(KafkaError._FATAL, "Unable to produce message")] * tries
    with pytest.raises(FencedError, match="_FENCED"):
        pub.publish(record, NOW)


def test_fencing_offsets_go_with_every_commit(fake: type[FakeProducer]) -> None:
    """The election's offsets and group metadata are sent before each commit."""
    pub, _ = fake_publisher()
    pub.begin(StubFencing())
    for n in range(2):
        pub.publish(b'{"hitIdHigh":1,"hitIdLow":%d}' % n, NOW)
        pub.commit()
    calls = [c for c in fake.instances[0].calls if c.startswith(("send_", "commit_"))]
    assert calls[-4:] == [
        "send_offsets_to_transaction",
        "commit_transaction",
        "send_offsets_to_transaction",
        "commit_transaction",
    ]
    assert fake.instances[0].offsets[0][1] == "metadata-1"


def test_fencing_without_a_valid_offset_is_refused(fake: type[FakeProducer]) -> None:
    """Offsets that librdkafka would skip (no valid offset) mean no fencing: refuse loudly."""

    class NoOffset(StubFencing):
        def offsets(self) -> list[TopicPartition]:
            return [TopicPartition("election", 0, -1001)]

    pub, _ = fake_publisher()
    pub.begin(NoOffset())
    pub.publish(b'{"hitIdHigh":1,"hitIdLow":1}', NOW)
    with pytest.raises(PublishError, match="no valid offset"):
        pub.commit()


def test_outage_is_measured_and_reported(fake: type[FakeProducer]) -> None:
    """While commits time out, unreachable_for grows; commit gives up after kafka_outage_s."""
    clock = FakeClock()
    pub, _ = fake_publisher(clock, kafka_outage_s=5)
    pub.begin(None)
    assert pub.unreachable_for() == 0.0
    pub.publish(b'{"hitIdHigh":1,"hitIdLow":1}', NOW)
    fake.script["commit_transaction"] = Timeouts(clock)
    clock.now += 1.0
    pub.maybe_commit()  # one bounded attempt, no exception
    assert pub.unreachable_for() > 0
    with pytest.raises(PublishError, match="KAFKA_OUTAGE_S"):
        pub.commit()
    assert pub.counters["open_transaction_records"] == 1
    fake.script["commit_transaction"] = []
    pub.maybe_commit()  # Kafka is back: the pending commit completes
    assert pub.unreachable_for() == 0.0
    assert len(fake.instances[0].committed) == 1


def test_producer_config_is_transactional_and_bounded(fake: type[FakeProducer]) -> None:
    """The producer is idempotent and transactional with acks=all and a bounded queue."""
    pub, _ = fake_publisher(compression="zstd")
    pub.begin(None)
    conf = fake.instances[0].conf
    assert conf["transactional.id"] == "livestream-bridge"
    assert conf["enable.idempotence"] is True
    assert conf["acks"] == "all"
    assert conf["compression.type"] == "zstd"
    assert conf["queue.buffering.max.kbytes"] == 65_536
    assert conf["message.max.bytes"] >= 1_000_000 + 1024


# -- integration: the real broker -----------------------------------------------------------


@pytest.mark.integration
def test_older_producer_is_fenced_and_its_batch_never_visible(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """A second producer with the same transactional.id fences the first; its batch is aborted."""
    topic, dlq = topic_factory(3), topic_factory(1)
    kafka = kafka_settings(kafka_bootstrap, topic, dlq)
    bodies = make_bodies(20)
    old = Publisher(kafka, PublishSettings(commit_interval_ms=60_000), Metrics())
    old.begin(None)
    run_publisher(old, [make_hit(bodies, i) for i in range(100)])
    old.maybe_commit()  # not due: the batch stays open
    new = Publisher(kafka, PublishSettings(), Metrics())
    new.begin(None)
    with pytest.raises(FencedError):
        old.commit()
    old.close(5)  # a fenced publisher closes quietly
    run_publisher(new, [make_hit(bodies, i) for i in range(1000, 1010)])
    newest = Publisher(kafka, PublishSettings(), Metrics())
    newest.begin(None)  # fences `new` while its batch is open; new finds out in close()
    new.close(5)
    newest.close(5)
    got = read_all(kafka_bootstrap, topic)
    assert got == []  # neither fenced batch was ever committed
    assert read_all(kafka_bootstrap, topic, isolation="read_uncommitted") != []


def _join_group(bootstrap: str, group: str, topic: str, timeout: float = 30.0) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "group.protocol": "classic",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            "log_level": 3,
        }
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + timeout
    while not consumer.assignment():
        assert time.monotonic() < deadline, "consumer never got its assignment"
        consumer.poll(0.1)
    return consumer


@pytest.mark.integration
def test_stale_election_generation_fences_the_commit(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """Group metadata of a consumer that lost the group makes the commit raise FencedError."""
    topic, dlq, election = topic_factory(3), topic_factory(1), topic_factory(1)
    group = f"election-{uuid.uuid4().hex[:8]}"
    first = _join_group(kafka_bootstrap, group, election)
    stale = first.consumer_group_metadata()

    class StaleTerm:
        """The fencing side of a term whose generation is gone for good: the election never
        renews it, so whichever code the broker answers (ILLEGAL_GENERATION, which asks
        wait_renewed, or UNKNOWN_MEMBER_ID, which does not) the commit is fenced."""

        asked: ClassVar[list[object]] = []

        def offsets(self) -> list[TopicPartition]:
            return [TopicPartition(election, 0, 0)]

        def group_metadata(self) -> object:
            return stale

        def wait_renewed(self, stale: object, timeout_s: float) -> bool:
            StaleTerm.asked.append(stale)
            return False

    pub = Publisher(
        kafka_settings(kafka_bootstrap, topic, dlq),
        PublishSettings(commit_interval_ms=60_000),
        Metrics(),
    )
    pub.begin(StaleTerm())
    pub.publish(make_hit(make_bodies(1), 1), NOW)
    pub.commit()  # the generation is still current: accepted
    first.close()  # leaves the group; the next member starts a new generation
    second = _join_group(kafka_bootstrap, group, election)
    try:
        for i in range(2, 50):
            pub.publish(make_hit(make_bodies(1), i), NOW)
        with pytest.raises(FencedError):
            pub.commit()
        pub.abort()
    finally:
        second.close()
    assert StaleTerm.asked in ([], [stale])  # asked at most once, about the stale metadata
    got = read_all(kafka_bootstrap, topic)
    assert [header(r, "hit-id") for r in got] == [b"3141592653589793238:1"]


class _FatalAfterCommit:
    """The real producer, except that its first commit_transaction commits for real (or,
    with ``commits=False``, does not) and then raises a fatal error: a commit whose outcome
    the writer cannot know from the error alone."""

    def __init__(self, conf: dict[str, Any], commits: bool) -> None:
        self._real = Producer(conf)
        self._commits = commits
        self.armed = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def __len__(self) -> int:
        return len(self._real)

    def commit_transaction(self, timeout: float) -> None:
        if self.armed:
            self.armed = False
            if self._commits:
                self._real.commit_transaction(timeout)
            raise KafkaException(KafkaError(KafkaError._INCONSISTENT, "injected", fatal=True))
        self._real.commit_transaction(timeout)


@pytest.mark.integration
@pytest.mark.parametrize("commits", [True, False], ids=["committed", "not-committed"])
def test_fatal_error_in_commit_replays_only_what_did_not_commit(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    commits: bool,
) -> None:
    """A fatal error from commit_transaction: the writer finds out whether the transaction
    committed before replaying; each record is in the topic exactly once either way."""
    topic, dlq = topic_factory(3), topic_factory(1)
    made: list[Any] = []

    def producer(conf: dict[str, Any]) -> Any:
        made.append(_FatalAfterCommit(conf, commits) if not made else Producer(conf))
        return made[-1]

    bodies = make_bodies(50)
    first = [make_hit(bodies, i) for i in range(1, 501)]
    later = [make_hit(bodies, i) for i in range(501, 601)]
    metrics = Metrics()
    pub = Publisher(
        kafka_settings(kafka_bootstrap, topic, dlq),
        PublishSettings(commit_interval_ms=60_000),
        metrics,
        producer_factory=producer,
    )
    pub.begin(None)
    run_publisher(pub, [*first, b"not json"])
    pub.commit()  # fails fatally once, then settles
    assert len(made) == 2, "the fatal error did not rebuild the producer"
    run_publisher(pub, later)
    pub.close(30)
    got = read_all(kafka_bootstrap, topic)
    assert sorted(r.value for r in got if r.value) == sorted(first + later)
    assert [r.value for r in read_all(kafka_bootstrap, dlq)] == [b"not json"]
    assert metrics.records_published._value.get() == len(first) + len(later)
    assert metrics.records_dead_lettered.labels(reason="not_json")._value.get() == 1


def test_a_wedged_send_offsets_replaces_the_producer_and_replays(
    fake: type[FakeProducer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A send_offsets_to_transaction that outstays its timeout (librdkafka can block there
    for good when the group coordinator left the cluster) no longer holds the writer: past a
    grace the producer is given up as fatal, and a new one commits the same records."""
    import threading

    from bridge import kafkaclients

    monkeypatch.setattr(kafkaclients, "WEDGE_GRACE_S", 0.2)
    release = threading.Event()

    class WedgedProducer(FakeProducer):
        def send_offsets_to_transaction(self, offsets: Any, meta: Any, timeout: float) -> None:
            if self is FakeProducer.instances[0]:
                release.wait(30)  # librdkafka's wedged call: never returns by itself
            super().send_offsets_to_transaction(offsets, meta, timeout)

    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1", topic="hits", dlq_topic="dlq")
    pub = Publisher(kafka, PublishSettings(), Metrics(), producer_factory=WedgedProducer)
    try:
        pub.begin(StubFencing())
        pub.publish(b'{"hitIdHigh":1,"hitIdLow":1}', NOW)
        began = time.monotonic()
        pub.commit()
        assert time.monotonic() - began < 10  # STEP_S (2 s) + the grace, not forever
        assert len(fake.instances) == 2
        assert [v for _, v, _, _ in fake.instances[0].committed] == []
        assert [v for _, v, _, _ in fake.instances[1].committed] == [
            b'{"hitIdHigh":1,"hitIdLow":1}'
        ]
    finally:
        release.set()
