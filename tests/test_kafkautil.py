"""The Kafka test helpers ride out what a freshly created topic answers at first."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from tests import kafkautil
from tests.kafkautil import read_all

pytestmark = pytest.mark.integration


class _NotLeaderYet(Consumer):
    """The real consumer, except that its first offset look-ups fail as they do while a
    new partition's leader is being elected."""

    failures = 0

    def get_watermark_offsets(self, partition: TopicPartition, *args: Any, **kw: Any) -> Any:
        if _NotLeaderYet.failures > 0:
            _NotLeaderYet.failures -= 1
            raise KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))
        return super().get_watermark_offsets(partition, *args, **kw)


def test_read_all_retries_not_leader_for_partition(
    kafka_bootstrap: str, topic_factory: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """NOT_LEADER_FOR_PARTITION from get_watermark_offsets (seen in CI on a new topic) is
    retried until the deadline, and read_all returns every record."""
    topic = topic_factory(2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "log_level": 3})
    producer.produce(topic, b"one", partition=1)
    assert producer.flush(30) == 0
    monkeypatch.setattr(kafkautil, "Consumer", _NotLeaderYet)
    _NotLeaderYet.failures = 3
    got = read_all(kafka_bootstrap, topic, timeout=30)
    assert [r.value for r in got] == [b"one"]
    assert _NotLeaderYet.failures == 0
