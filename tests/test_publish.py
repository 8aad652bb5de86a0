"""Publisher: message rules with a fake producer, and exactly-once against the real broker."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, SupportsIndex

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

import bridge.publish as publish_mod
from bridge.config import KafkaSettings, PublishSettings
from bridge.decode import OversizedRecord
from bridge.errors import FencedError, PublishError
from bridge.observability import Metrics
from bridge.publish import Publisher
from tests.kafkautil import Record, read_all

# -- realistic hits ------------------------------------------------------------------------

_PAGES = ("Accueil", "Café & Crème: Nos produits", "東京の天気予報", "Checkout: Payment")


def make_bodies(count: int, seed: int = 7) -> list[bytes]:
    """JSON bodies (everything after the hit id) shaped like Live Stream hits."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        vh, vl = rng.getrandbits(62), rng.getrandbits(62)
        ids: dict[str, Any]
        if i % 5 == 0:
            ids = {"mcVisIdHigh": str(vh), "mcVisIdLow": str(vl)}
        elif i % 2:
            ids = {"visIdHigh": vh, "visIdLow": vl}
        else:
            ids = {"visIdHigh": str(vh), "visIdLow": str(vl)}
        body = {
            "timeGMT": 1_780_000_000 + i,
            "receivedTimeGMT": 1_780_000_002 + i,
            "reportSuite": "sim.demo.prod",
            **ids,
            "pageName": rng.choice(_PAGES),
            "pageURL": f"https://www.example.com/p/{rng.randrange(10**6)}?q=a+b",
            "evars": {"evar1": "x" * rng.randrange(20, 400), "evar7": "ünïcödé"},
            "events": [{"id": "event1", "value": 1}],
            "geoCountry": "fra",
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64)",
        }
        out.append(orjson.dumps(body)[1:])  # drop the opening brace
    return out


def make_hit(bodies: list[bytes], n: int, *, high: int = 3_141_592_653_589_793_238) -> bytes:
    """Hit number ``n``: its hit id is (high, n), alternately as strings and numbers."""
    if n % 2:
        return b'{"hitIdHigh":"%d","hitIdLow":"%d",%s' % (high, n, bodies[n % len(bodies)])
    return b'{"hitIdHigh":%d,"hitIdLow":%d,%s' % (high, n, bodies[n % len(bodies)])


def header(rec: Record, name: str) -> bytes | None:
    return next((v for k, v in rec.headers if k == name), None)


# -- the fake producer (pure logic only) ----------------------------------------------------


class FakeProducer:
    """Records what the publisher asks of librdkafka; raises what a test scripts."""

    instances: ClassVar[list[FakeProducer]] = []
    script: ClassVar[dict[str, list[KafkaError]]] = {}

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        self.calls: list[str] = []
        self.open: list[tuple[str, bytes, Any, Any]] = []
        self.committed: list[tuple[str, bytes, Any, Any]] = []
        self.offsets: list[Any] = []
        FakeProducer.instances.append(self)

    def _maybe_fail(self, call: str) -> None:
        self.calls.append(call)
        errors = FakeProducer.script.get(call)
        if errors:
            raise KafkaException(errors.pop(0))

    def init_transactions(self, timeout: float) -> None:
        self._maybe_fail("init_transactions")

    def begin_transaction(self) -> None:
        self._maybe_fail("begin_transaction")

    def produce(self, topic: str, value: bytes, key: Any = None, **kw: Any) -> None:
        self._maybe_fail("produce")
        self.open.append((topic, bytes(value), key, kw.get("headers")))

    def send_offsets_to_transaction(self, offsets: Any, meta: Any, timeout: float) -> None:
        self._maybe_fail("send_offsets_to_transaction")
        self.offsets.append((offsets, meta))

    def commit_transaction(self, timeout: float) -> None:
        self._maybe_fail("commit_transaction")
        self.committed += self.open
        self.open = []

    def abort_transaction(self, timeout: float) -> None:
        self._maybe_fail("abort_transaction")
        self.open = []

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0

    def purge(self) -> None:
        self.open = []

    def __len__(self) -> int:
        return 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeProducer]]:
    FakeProducer.instances = []
    FakeProducer.script = {}
    monkeypatch.setattr(publish_mod, "Producer", FakeProducer)
    monkeypatch.setattr(publish_mod, "read_hit_ids", lambda *a, **k: 0)
    monkeypatch.setattr(publish_mod, "topic_message_limit", lambda *a, **k: None)
    yield FakeProducer


def fake_publisher(
    clock: Callable[[], float] | None = None, report_suite: str | None = None, **publish: Any
) -> tuple[Publisher, Metrics]:
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1", topic="hits", dlq_topic="dlq")
    metrics = Metrics()
    settings = PublishSettings(**{"dedupe_window": 1000, **publish})
    pub = Publisher(kafka, settings, metrics, report_suite=report_suite, clock=clock or FakeClock())
    return pub, metrics


def sent(producer: FakeProducer) -> list[tuple[str, bytes, Any, dict[str, Any]]]:
    return [(t, v, k, dict(h or [])) for t, v, k, h in producer.committed + producer.open]


NOW = 1_780_000_000.25


def test_key_and_headers_follow_the_rules(fake: type[FakeProducer]) -> None:
    """Key is visId, else mcVisId, else none; hit-id, report-suite and received-at headers."""
    pub, _ = fake_publisher(report_suite="configured.rs")
    pub.begin(None)
    records = [
        b'{"hitIdHigh":1,"hitIdLow":2,"visIdHigh":10,"visIdLow":"11","reportSuite":"rs1"}',
        b'{"hitIdHigh":"0003","hitIdLow":"4","visIdHigh":10,"mcVisIdHigh":"m1","mcVisIdLow":7}',
        b'{"hitIdHigh":5,"hitIdLow":6}',
    ]
    for record in records:
        pub.publish(record, NOW)
    out = sent(fake.instances[0])
    assert [v for _, v, _, _ in out] == records  # bytes exactly as received
    assert [k for _, _, k, _ in out] == ["10:11", "m1:7", None]
    assert [h["hit-id"] for _, _, _, h in out] == ["1:2", "0003:4", "5:6"]
    assert [h["report-suite"] for _, _, _, h in out] == ["rs1", "configured.rs", "configured.rs"]
    assert {h["received-at"] for _, _, _, h in out} == {"1780000000250"}
    assert {t for t, _, _, _ in out} == {"hits"}


def test_no_key_when_configured_and_no_suite_header_when_unknown(
    fake: type[FakeProducer],
) -> None:
    """publish.key=none never sets a key; without any report suite the header is omitted."""
    pub, _ = fake_publisher(key="none")
    pub.begin(None)
    pub.publish(b'{"hitIdHigh":1,"hitIdLow":2,"visIdHigh":10,"visIdLow":11}', NOW)
    ((_, _, key, headers),) = sent(fake.instances[0])
    assert key is None
    assert set(headers) == {"hit-id", "received-at"}


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (b"not json at all", "not_json"),
        (b'{"pageName":"caf\xe9 \xff broken utf-8","hitIdHigh":1,"hitIdLow":2}', "not_json"),
        (b'{"hitIdHigh":1,', "not_json"),
        (b"[1,2,3]", "not_object"),
        (b"42", "not_object"),
        (b'{"hitIdHigh":1}', "missing_hit_id"),
        (b'{"hitIdHigh":"","hitIdLow":"2"}', "missing_hit_id"),
    ],
)
def test_malformed_records_are_dead_lettered(
    fake: type[FakeProducer], record: bytes, reason: str
) -> None:
    """Each kind of malformed record goes to the DLQ, raw, with its reason; none to the topic."""
    pub, metrics = fake_publisher()
    pub.begin(None)
    pub.publish(record, NOW)
    pub.commit()
    ((topic, value, key, headers),) = sent(fake.instances[0])
    assert (topic, value, key) == ("dlq", record, None)
    assert headers["reason"] == reason
    counted = metrics.records_dead_lettered.labels(reason=reason)._value.get()
    assert counted == 1
    assert metrics.records_published._value.get() == 0


def test_oversized_record_keeps_its_head_and_size(fake: type[FakeProducer]) -> None:
    """An OversizedRecord is dead-lettered as oversized: the head only, plus original-size."""
    pub, _ = fake_publisher()
    pub.begin(None)
    head = b'{"hitIdHigh":1,"hitIdLow":2,"pad":"' + b"x" * 200_000
    pub.publish(OversizedRecord(head, 5_000_000), NOW)
    ((topic, value, _, headers),) = sent(fake.instances[0])
    assert topic == "dlq"
    assert headers["reason"] == "oversized"
    assert headers["original-size"] == "5000000"
    assert value == head[: publish_mod.DLQ_HEAD_BYTES]


def test_hit_id_not_required_publishes_without_dedupe(fake: type[FakeProducer]) -> None:
    """With require_hit_id off, records without an id are published, never deduplicated."""
    pub, _ = fake_publisher(require_hit_id=False)
    pub.begin(None)
    record = b'{"visIdHigh":1,"visIdLow":2}'
    count = 2 * publish_mod.SAMPLE_EVERY + 1  # the sampled (latency-observed) path included
    pub.publish_many([record] * count, NOW)
    out = sent(fake.instances[0])
    assert [(t, v) for t, v, _, _ in out] == [("hits", record)] * count
    assert "hit-id" not in out[0][3]


def test_duplicates_are_dropped_and_counted(fake: type[FakeProducer]) -> None:
    """A hit id seen before (number or string form) is dropped and counted."""
    pub, metrics = fake_publisher()
    pub.begin(None)
    pub.publish(b'{"hitIdHigh":1,"hitIdLow":2,"a":1}', NOW)
    pub.publish(b'{"hitIdHigh":"1","hitIdLow":"2","a":2}', NOW)
    assert len(sent(fake.instances[0])) == 1
    assert metrics.records_deduplicated._value.get() == 1


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


class StubFencing:
    """An election's fencing side whose generation renews (a standby joined) or not."""

    def __init__(self, renewed: bool = False) -> None:
        self.renewed = renewed
        self.metadata = "metadata-1"

    def offsets(self) -> list[TopicPartition]:
        return [TopicPartition("election", 0, 5)]

    def group_metadata(self) -> object:
        return self.metadata

    def wait_renewed(self, stale: object, timeout_s: float) -> bool:
        if self.renewed:
            self.metadata = "metadata-2"
        return self.renewed


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


class Timeouts(list[KafkaError]):
    """A script entry that times out every call, one second of ``clock`` each."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def pop(self, index: SupportsIndex = -1) -> KafkaError:
        self.clock.now += 1.0
        return KafkaError(KafkaError._TIMED_OUT, retriable=True)

    def __bool__(self) -> bool:
        return True


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


@pytest.mark.parametrize("failing", ["commit_transaction", "produce"])
def test_publish_many_names_where_to_resume_after_an_outage(
    fake: type[FakeProducer], failing: str
) -> None:
    """A batch cut short by an outage says which record it did not take; resuming there
    publishes every record exactly once, whether the commit or the produce failed."""
    clock = FakeClock()
    pub, metrics = fake_publisher(clock, kafka_outage_s=5, commit_max_records=3)
    pub.begin(None)
    records = [b'{"hitIdHigh":1,"hitIdLow":%d}' % n for n in range(8)]
    pub.publish_many(records[:4], NOW)  # one commit (at the third record), one record open
    fake.script[failing] = Timeouts(clock)
    with pytest.raises(PublishError, match="KAFKA_OUTAGE_S"):
        pub.publish_many(records, NOW, 4)
    # A failed commit comes after its record was taken; a failed produce before.
    assert pub.resume_at == (6 if failing == "commit_transaction" else 4)
    fake.script[failing] = []
    pub.publish_many(records, NOW, pub.resume_at)
    pub.commit()
    assert [v for _, v, _, _ in fake.instances[0].committed] == records
    assert metrics.records_deduplicated._value.get() == 0
    assert metrics.records_published._value.get() == len(records)


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


def kafka_settings(bootstrap: str, topic: str, dlq: str, **extra: Any) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=bootstrap,
        topic=topic,
        dlq_topic=dlq,
        transactional_id=f"test-{uuid.uuid4().hex[:10]}",
        partitions=3,
        replication_factor=1,
        properties={"log_level": "3"},
        **extra,
    )


def run_publisher(pub: Publisher, records: list[bytes]) -> None:
    for i, record in enumerate(records):
        pub.publish(record, NOW)
        if i % 200 == 0:
            pub.maybe_commit()


@pytest.mark.integration
def test_100k_records_land_exactly_once(
    kafka_bootstrap: str, topic_factory: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    """100,000 hits land once each, byte-identical, with their keys and headers."""
    topic, dlq = topic_factory(3), topic_factory(1)
    bodies = make_bodies(1000)
    n = 100_000
    records = [make_hit(bodies, i) for i in range(n)]
    pub = Publisher(kafka_settings(kafka_bootstrap, topic, dlq), PublishSettings(), Metrics())
    pub.begin(None)
    started = time.perf_counter()
    run_publisher(pub, records)
    pub.close(30)
    elapsed = time.perf_counter() - started

    baseline_topic = topic_factory(3)
    bare = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 10, "log_level": 3})
    started = time.perf_counter()
    for record in records:
        while True:
            try:
                bare.produce(baseline_topic, record)
                break
            except BufferError:
                bare.poll(0.05)
    bare.flush(30)
    bare_elapsed = time.perf_counter() - started

    got = read_all(kafka_bootstrap, topic, timeout=120)
    assert len(got) == n
    by_id = {header(r, "hit-id"): r for r in got}
    assert len(by_id) == n
    for i in (0, 1, 2, 5, 4242, n - 1):
        rec = by_id[b"3141592653589793238:%d" % i]
        assert rec.value == records[i]
        obj = orjson.loads(records[i])
        vis = ("visIdHigh", "visIdLow") if "visIdHigh" in obj else ("mcVisIdHigh", "mcVisIdLow")
        assert rec.key == f"{obj[vis[0]]}:{obj[vis[1]]}".encode()
        assert header(rec, "report-suite") == b"sim.demo.prod"
        assert header(rec, "received-at") == b"1780000000250"
    assert sorted(r.value for r in got if r.value) == sorted(records)
    assert read_all(kafka_bootstrap, dlq) == []
    with capsys.disabled():
        print(
            f"\npublish: {n / elapsed:,.0f} records/s through Publisher; bare produce loop "
            f"{n / bare_elapsed:,.0f} records/s; ratio {bare_elapsed / elapsed:.2f}"
        )


@pytest.mark.integration
def test_malformed_lines_reach_only_the_dlq(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """Malformed lines end up in the DLQ with their reason; the hits topic holds none."""
    topic, dlq = topic_factory(3), topic_factory(1)
    bad = {
        b"garbage": "not_json",
        b'{"a":"\xff\xfe"}': "not_json",
        b"[1]": "not_object",
        b'{"hitIdLow":1}': "missing_hit_id",
    }
    pub = Publisher(kafka_settings(kafka_bootstrap, topic, dlq), PublishSettings(), Metrics())
    pub.begin(None)
    good = [make_hit(make_bodies(10), i) for i in range(20)]
    for i, record in enumerate(good):
        pub.publish(record, NOW)
        if i < len(bad):
            pub.publish(list(bad)[i], NOW)
    pub.publish(OversizedRecord(b'{"hitIdHigh":1,"x":"' + b"y" * 100_000, 3_000_000), NOW)
    pub.close(30)
    assert sorted(r.value for r in read_all(kafka_bootstrap, topic) if r.value) == sorted(good)
    dead = read_all(kafka_bootstrap, dlq)
    reasons = {r.value: header(r, "reason") for r in dead}
    assert {v: reasons[v] for v in bad} == {k: v.encode() for k, v in bad.items()}
    (big,) = [r for r in dead if header(r, "reason") == b"oversized"]
    assert header(big, "original-size") == b"3000000"
    assert big.value is not None and len(big.value) == publish_mod.DLQ_HEAD_BYTES


@pytest.mark.integration
def test_record_too_large_for_the_topic_is_dead_lettered(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """A hit above the topic's max.message.bytes is dead-lettered; the transaction commits."""
    topic, dlq = topic_factory(1, config={"max.message.bytes": "20000"}), topic_factory(1)
    pub = Publisher(kafka_settings(kafka_bootstrap, topic, dlq), PublishSettings(), Metrics())
    pub.begin(None)
    bodies = make_bodies(5)
    big = b'{"hitIdHigh":9,"hitIdLow":9,"pad":"' + b"z" * 30_000 + b'"}'
    small = [make_hit(bodies, i) for i in range(10)]
    for record in [*small[:5], big, *small[5:]]:
        pub.publish(record, NOW)
    pub.close(30)
    assert sorted(r.value for r in read_all(kafka_bootstrap, topic) if r.value) == sorted(small)
    (dead,) = read_all(kafka_bootstrap, dlq)
    assert header(dead, "reason") == b"oversized"
    assert header(dead, "original-size") == str(len(big)).encode()
    assert header(dead, "received-at") == b"1780000000250"
    assert dead.value is not None and big.startswith(dead.value)


@pytest.mark.integration
def test_replays_after_restart_are_dropped(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """Publisher B (same transactional.id) seeds from the topic; a replay adds only new ids."""
    topic, dlq = topic_factory(3), topic_factory(1)
    kafka = kafka_settings(kafka_bootstrap, topic, dlq)
    bodies = make_bodies(50)
    n = 5000
    a = Publisher(kafka, PublishSettings(), Metrics())
    a.begin(None)
    run_publisher(a, [make_hit(bodies, i) for i in range(1, n + 1)])
    a.close(30)
    b = Publisher(kafka, PublishSettings(), Metrics())
    b.begin(None)
    assert b.counters["dedupe_seeded"] == n
    run_publisher(b, [make_hit(bodies, i) for i in range(n - 100, n + 101)])
    b.close(30)
    assert b.counters["records_deduplicated"] == 101
    ids = sorted(int(header(r, "hit-id").split(b":")[1]) for r in read_all(kafka_bootstrap, topic))  # type: ignore[union-attr]
    assert ids == list(range(1, n + 101))


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
        def offsets(self) -> list[TopicPartition]:
            return [TopicPartition(election, 0, 0)]

        def group_metadata(self) -> object:
            return stale

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
    got = read_all(kafka_bootstrap, topic)
    assert [header(r, "hit-id") for r in got] == [b"3141592653589793238:1"]
