"""Publisher: record rules, dedupe and dead letters with a fake producer, and exactly-once
against the real broker. The transactional writer under it is pinned in test_transactions.py."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import pytest
from confluent_kafka import Producer

from bridge.classify import DLQ_HEAD_BYTES
from bridge.config import PublishSettings
from bridge.decode import OversizedRecord
from bridge.errors import PublishError
from bridge.observability import Metrics
from bridge.publish import Publisher
from tests.kafkautil import read_all
from tests.publishing import (
    NOW,
    FakeClock,
    FakeProducer,
    Timeouts,
    fake_fixture,  # noqa: F401 - the `fake` fixture: pytest finds it in this module
    fake_publisher,
    header,
    kafka_settings,
    make_bodies,
    make_hit,
    run_publisher,
    sent,
)


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
    assert value == head[:DLQ_HEAD_BYTES]


def test_hit_id_not_required_publishes_without_dedupe(fake: type[FakeProducer]) -> None:
    """With require_hit_id off, records without an id are published, never deduplicated."""
    pub, _ = fake_publisher(require_hit_id=False)
    pub.begin(None)
    record = b'{"visIdHigh":1,"visIdLow":2}'
    for at in (NOW, NOW + 1):  # two reads: a latency-observed hit each
        pub.publish_many([record] * 3, at)
    out = sent(fake.instances[0])
    assert [(t, v) for t, v, _, _ in out] == [("hits", record)] * 6
    assert "hit-id" not in out[0][3]


def test_duplicates_are_dropped_and_counted(fake: type[FakeProducer]) -> None:
    """A hit id seen before (number or string form) is dropped and counted."""
    pub, metrics = fake_publisher()
    pub.begin(None)
    pub.publish(b'{"hitIdHigh":1,"hitIdLow":2,"a":1}', NOW)
    pub.publish(b'{"hitIdHigh":"1","hitIdLow":"2","a":2}', NOW)
    assert len(sent(fake.instances[0])) == 1
    assert metrics.records_deduplicated._value.get() == 1


def test_ids_that_print_alike_are_different_hits(fake: type[FakeProducer]) -> None:
    """Zero-padded and colon-bearing ids that used to share a dedupe key are all published;
    a true repeat (number or canonical string form) is still dropped."""
    pub, metrics = fake_publisher()
    pub.begin(None)
    records = [
        b'{"hitIdHigh":"0123","hitIdLow":"1"}',
        b'{"hitIdHigh":"123","hitIdLow":"1"}',
        b'{"hitIdHigh":"a:b","hitIdLow":"c"}',
        b'{"hitIdHigh":"a","hitIdLow":"b:c"}',
        b'{"hitIdHigh":"7","hitIdLow":"00"}',
        b'{"hitIdHigh":"7","hitIdLow":"0"}',
    ]
    pub.publish_many([*records, b'{"hitIdHigh":123,"hitIdLow":1}'], NOW)
    assert [v for _, v, _, _ in sent(fake.instances[0])] == records
    assert metrics.records_deduplicated._value.get() == 1


def test_dead_letters_are_counted_once_when_offered_again(fake: type[FakeProducer]) -> None:
    """A dead letter that Kafka did not take during an outage, offered again and committed,
    counts once: the counts follow what is committed."""
    clock = FakeClock()
    pub, metrics = fake_publisher(clock, kafka_outage_s=5)
    pub.begin(None)
    records = [b"not json", b'{"hitIdHigh":1,"hitIdLow":1}']
    fake.script["produce"] = Timeouts(clock)
    with pytest.raises(PublishError, match="KAFKA_OUTAGE_S") as raised:
        pub.publish_many(records, NOW)
    assert raised.value.resume_at == 0
    fake.script["produce"] = []
    pub.publish_many(records, NOW, raised.value.resume_at)
    pub.commit()
    assert [v for _, v, _, _ in fake.instances[0].committed] == records
    assert metrics.records_dead_lettered.labels(reason="not_json")._value.get() == 1
    assert pub.counters["records_dead_lettered"] == 1
    assert metrics.records_published._value.get() == 1


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
    with pytest.raises(PublishError, match="KAFKA_OUTAGE_S") as raised:
        pub.publish_many(records, NOW, 4)
    # A failed commit comes after its record was taken; a failed produce before.
    assert raised.value.resume_at == (6 if failing == "commit_transaction" else 4)
    fake.script[failing] = []
    pub.publish_many(records, NOW, raised.value.resume_at)
    pub.commit()
    assert [v for _, v, _, _ in fake.instances[0].committed] == records
    assert metrics.records_deduplicated._value.get() == 0
    assert metrics.records_published._value.get() == len(records)


# -- integration: the real broker -----------------------------------------------------------


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
    started, wall = time.perf_counter(), time.time()
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
        assert [name for name, _ in rec.headers] == ["hit-id", "report-suite", "received-at"]
    assert sorted(r.value for r in got if r.value) == sorted(records)
    assert read_all(kafka_bootstrap, dlq) == []
    # Each message has the time it was produced, and each key one partition (the
    # partitioner's choice): the native lane passes produce() its parameters by position.
    assert all(wall - 1 <= r.timestamp / 1000 <= wall + elapsed + 1 for r in got)
    partitions: dict[bytes | None, set[int]] = {}
    for rec in got:
        partitions.setdefault(rec.key, set()).add(rec.partition)
    assert {len(p) for p in partitions.values()} == {1}
    assert len({r.partition for r in got}) == 3
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
    assert big.value is not None and len(big.value) == DLQ_HEAD_BYTES


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
