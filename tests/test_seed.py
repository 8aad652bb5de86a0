"""The dedupe seed of a new term, against the real broker: it covers what Live Stream can
replay, not a fixed number of ids; a partition that fails at first does not cost the others;
ids that only the record can tell apart are seeded from the record."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

import bridge.seed as seed_mod
from bridge.config import PublishSettings
from bridge.observability import Metrics
from bridge.publish import Publisher
from tests.kafkautil import read_all
from tests.publishing import NOW, header, kafka_settings, make_bodies, make_hit, run_publisher

pytestmark = pytest.mark.integration


def _publish(kafka: Any, records: list[bytes], **settings: Any) -> Publisher:
    pub = Publisher(kafka, PublishSettings(**settings), Metrics())
    pub.begin(None)
    run_publisher(pub, records)
    pub.close(60)
    return pub


@pytest.mark.timeout(600)
def test_replays_of_more_than_200k_hits_across_a_failover_are_dropped(
    kafka_bootstrap: str, topic_factory: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Writer A publishes 250,000 hits; writer B (a new term, same transactional.id) seeds
    from the topic and is offered all of them again: the topic holds each exactly once."""
    topic, dlq = topic_factory(3), topic_factory(1)
    kafka = kafka_settings(kafka_bootstrap, topic, dlq)
    bodies = make_bodies(200)
    n = 250_000
    records = [make_hit(bodies, i) for i in range(n)]
    _publish(kafka, records)
    started = time.monotonic()
    b = _publish(kafka, records)
    took = time.monotonic() - started
    got = read_all(kafka_bootstrap, topic, timeout=240)
    twice = sum(c - 1 for c in Counter(header(r, "hit-id") for r in got).values() if c > 1)
    with capsys.disabled():
        print(
            f"\nseed: {b.counters['dedupe_seeded']:,.0f} ids seeded, "
            f"{b.counters['records_deduplicated']:,.0f} replays dropped, {twice:,} published "
            f"twice; term B (seed + 250k offers) {took:.1f}s"
        )
    assert twice == 0
    assert len(got) == n
    assert b.counters["records_deduplicated"] == n


class _FlakyOffsets(Consumer):
    """The real consumer, except that the seed's first offset look-ups of partition 1 fail
    as they do while a leader moves."""

    failures = 2

    def get_watermark_offsets(self, partition: TopicPartition, *args: Any, **kw: Any) -> Any:
        if partition.partition == 1 and _FlakyOffsets.failures > 0:
            _FlakyOffsets.failures -= 1
            raise KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))
        return super().get_watermark_offsets(partition, *args, **kw)


def test_a_partition_failing_at_first_neither_loses_its_ids_nor_the_others(
    kafka_bootstrap: str, topic_factory: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """NOT_LEADER_FOR_PARTITION on one partition's first offset look-ups: the seed retries
    it and reads every partition, so no replay is published twice."""
    topic, dlq = topic_factory(3), topic_factory(1)
    kafka = kafka_settings(kafka_bootstrap, topic, dlq)
    records = [make_hit(make_bodies(50), i) for i in range(3000)]
    _publish(kafka, records)
    monkeypatch.setattr(seed_mod, "Consumer", _FlakyOffsets)
    _FlakyOffsets.failures = 2
    b = _publish(kafka, records)
    assert _FlakyOffsets.failures == 0, "the injected failure was never hit"
    assert b.counters["dedupe_seeded"] == len(records)
    assert len(read_all(kafka_bootstrap, topic)) == len(records)


def test_ids_only_the_record_tells_apart_are_seeded_from_the_record(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """Hit ids whose hit-id header is ambiguous (colons, leading zeros) survive a failover:
    each distinct one is published once, and offered again after the failover, dropped."""
    topic, dlq = topic_factory(3), topic_factory(1)
    kafka = kafka_settings(kafka_bootstrap, topic, dlq)
    ids = [("a:b", "c"), ("a", "b:c"), ("0123", "1"), ("123", "1"), ("x", "7"), ("7", "x")]
    records = [
        b'{"hitIdHigh":"%s","hitIdLow":"%s","visIdHigh":1,"visIdLow":%d}'
        % (h.encode(), lo.encode(), i)
        for i, (h, lo) in enumerate(ids)
    ]
    _publish(kafka, records)
    b = _publish(kafka, records)
    assert b.counters["records_deduplicated"] == len(records)
    got = read_all(kafka_bootstrap, topic)
    assert sorted(r.value for r in got if r.value) == sorted(records)
    assert NOW  # the records carry the shared receive time of tests.publishing


def test_a_top_up_adds_what_another_slot_committed_after_the_seed(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """A slot holder seeds, another slot's writer then commits more hits to the same topic,
    and the holder's top-up before its first connection reads only those: offered again,
    every one of them is dropped."""
    topic, dlq = topic_factory(3), topic_factory(1)
    kafka = kafka_settings(kafka_bootstrap, topic, dlq)
    bodies = make_bodies(50)
    first = [make_hit(bodies, i) for i in range(2000)]
    later = [make_hit(bodies, i) for i in range(2000, 3000)]
    _publish(kafka, first)
    mine = kafka.model_copy(update={"transactional_id": kafka.transactional_id + "-0"})
    holder = Publisher(mine, PublishSettings(), Metrics())
    holder.begin(None)
    assert holder.counters["dedupe_seeded"] == len(first)
    other_slot = kafka.model_copy(update={"transactional_id": kafka.transactional_id + "-1"})
    _publish(other_slot, later)
    holder.top_up()
    assert holder.counters["dedupe_seeded"] == len(first) + len(later)  # read once each
    run_publisher(holder, later + first[:10])
    holder.close(60)
    assert holder.counters["records_deduplicated"] == len(later) + 10
    assert len(read_all(kafka_bootstrap, topic)) == len(first) + len(later)
