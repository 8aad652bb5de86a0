"""Kafka start-up checks: topic creation, refusal, unreachable clusters, credential errors."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from bridge.config import KafkaSettings
from bridge.errors import KafkaSetupError
from bridge.topics import Probe, ensure_topics
from tests.kafkautil import admin_client, delete_topics, unique_topic_name
from tests.testutil import free_port


def test_unreachable_cluster_fails_within_the_deadline() -> None:
    """Nothing listening: KafkaSetupError naming the bootstrap variable, within the deadline."""
    kafka = KafkaSettings(
        bootstrap_servers=f"127.0.0.1:{free_port()}",
        properties={"log_level": "0"},
    )
    started = time.monotonic()
    with pytest.raises(KafkaSetupError, match="BRIDGE_KAFKA__BOOTSTRAP_SERVERS"):
        ensure_topics(kafka, timeout=2.0)
    assert time.monotonic() - started < 10
    assert not Probe(kafka).reachable(0.5)


@pytest.mark.integration
def test_creates_missing_topics(kafka_bootstrap: str, request: pytest.FixtureRequest) -> None:
    """Missing hits and dead-letter topics are created with the configured partitions."""
    topic = unique_topic_name(request.node.name)
    dlq = f"{topic}-dlq"
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap,
        topic=topic,
        dlq_topic=dlq,
        partitions=2,
        topic_config={"retention.ms": "3600000"},
    )
    try:
        assert sorted(ensure_topics(kafka)) == sorted([topic, dlq])
        md = admin_client(kafka_bootstrap).list_topics(timeout=10)
        assert len(md.topics[topic].partitions) == 2
        assert len(md.topics[dlq].partitions) == 2
        assert ensure_topics(kafka) == []  # second run: nothing to do
        assert Probe(kafka).reachable(5.0)
    finally:
        delete_topics(kafka_bootstrap, [topic, dlq])


@pytest.mark.integration
def test_missing_topic_without_permission_to_create(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """With create_topics false a missing topic is a KafkaSetupError naming the variable."""
    existing = topic_factory(1)
    missing = f"missing-{uuid.uuid4().hex[:10]}"
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap, topic=existing, dlq_topic=missing, create_topics=False
    )
    with pytest.raises(KafkaSetupError, match="BRIDGE_KAFKA__CREATE_TOPICS") as info:
        ensure_topics(kafka)
    assert missing in str(info.value)
    md = admin_client(kafka_bootstrap).list_topics(timeout=10)
    assert missing not in md.topics
