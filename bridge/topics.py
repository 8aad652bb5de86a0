"""Kafka topic admin: reach the cluster, find (or create) the hits and dead-letter topics,
read a topic's message size limit, probe reachability.

Everything here fails fast with one readable line (``KafkaSetupError``): refused credentials,
missing permissions, a topic that is missing while creating topics is not allowed, a
cluster that does not answer within the deadline. Messages name settings and topics,
never secret values.
"""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._resource import ResourceType
from confluent_kafka.cimpl import NewTopic

from bridge.config import KafkaSettings
from bridge.errors import KafkaSetupError
from bridge.kafkaclients import admin_config
from bridge.kafkaerrors import credentials_problem
from bridge.logs import EventLog
from bridge.secrets import Secrets, secret_values

__all__ = ["CREATE_TOPICS_VAR", "Probe", "ensure_topics", "topic_message_limit"]

log = EventLog("bridge.topics")

CREATE_TOPICS_VAR = "BRIDGE_KAFKA__CREATE_TOPICS"


def _redact(kafka: KafkaSettings, text: str) -> str:
    return Secrets(secret_values(kafka)).scrub(text)


class _ErrorTrap:
    """error_cb that remembers the first credentials problem librdkafka reports."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.problem: str | None = None
        self.last: KafkaError | None = None

    def __call__(self, err: KafkaError) -> None:
        self.last = err
        if self.problem is None:
            self.problem = credentials_problem(self.kafka, err)


def _metadata(admin: AdminClient, kafka: KafkaSettings, trap: _ErrorTrap, timeout: float) -> Any:
    """Cluster metadata, retried in short steps so a refused login surfaces at once."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        # list_topics does not serve the client's queue: without this poll error_cb (the
        # trap) never runs, and refused credentials look like a cluster that stays silent.
        admin.poll(0)
        if trap.problem:
            raise KafkaSetupError(trap.problem)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            md = admin.list_topics(timeout=min(1.0, max(0.1, remaining)))
        except KafkaException as exc:
            err = exc.args[0]
            problem = credentials_problem(kafka, err)
            if problem:
                raise KafkaSetupError(problem) from None
            last = err.str()
            continue
        if md.brokers:
            return md
    detail = trap.last.str() if trap.last is not None else last
    raise KafkaSetupError(
        _redact(
            kafka,
            f"Kafka at {kafka.bootstrap_servers} (BRIDGE_KAFKA__BOOTSTRAP_SERVERS) did not answer "
            f"within {timeout:g}s" + (f": {detail}" if detail else ""),
        )
    )


def ensure_topics(kafka: KafkaSettings, *, timeout: float = 30.0) -> list[str]:
    """Make sure ``kafka.topic`` and ``kafka.dlq_topic`` exist; returns the ones created."""
    trap = _ErrorTrap(kafka)
    admin = AdminClient(admin_config(kafka, trap))
    deadline = time.monotonic() + timeout
    md = _metadata(admin, kafka, trap, timeout)
    wanted = list(dict.fromkeys([kafka.topic, kafka.dlq_topic]))
    missing = [t for t in wanted if t not in md.topics or md.topics[t].error is not None]
    if not missing:
        return []
    if not kafka.create_topics:
        raise KafkaSetupError(
            f"topic {missing[0]!r} does not exist and {CREATE_TOPICS_VAR} is false: create it "
            f"(or set {CREATE_TOPICS_VAR}=true)"
        )
    new = [
        NewTopic(
            name,
            num_partitions=kafka.partitions,
            replication_factor=kafka.replication_factor,
            config=dict(kafka.topic_config),
        )
        for name in missing
    ]
    remaining = max(1.0, deadline - time.monotonic())
    futures = admin.create_topics(new, operation_timeout=remaining, request_timeout=remaining)
    created: list[str] = []
    for name, future in futures.items():
        try:
            future.result(timeout=remaining)
            created.append(name)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # another replica was quicker
            problem = credentials_problem(kafka, err)
            if problem:
                raise KafkaSetupError(f"cannot create topic {name!r}: {problem}") from None
            raise KafkaSetupError(
                _redact(kafka, f"cannot create topic {name!r}: {err.name()}: {err.str()}")
            ) from None
    _wait_led(admin, kafka, trap, missing, deadline)
    for name in created:
        log.info("kafka.topic_created", topic=name, partitions=kafka.partitions)
    return created


def _wait_led(
    admin: AdminClient, kafka: KafkaSettings, trap: _ErrorTrap, names: list[str], deadline: float
) -> None:
    """Wait until every partition of ``names`` has a leader (created topics take a moment)."""
    while True:
        md = _metadata(admin, kafka, trap, max(1.0, deadline - time.monotonic()))
        pending = [
            n
            for n in names
            if n not in md.topics
            or md.topics[n].error is not None
            or not md.topics[n].partitions
            or any(p.leader < 0 for p in md.topics[n].partitions.values())
        ]
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise KafkaSetupError(f"topic {pending[0]!r} was created but has no leader yet")
        time.sleep(0.1)


def topic_message_limit(kafka: KafkaSettings, topic: str, timeout: float = 10.0) -> int | None:
    """The topic's ``max.message.bytes``, or None when it cannot be read (no ACL, ...)."""
    admin = AdminClient(admin_config(kafka))
    resource = ConfigResource(ResourceType.TOPIC, topic)
    try:
        entries = admin.describe_configs([resource], request_timeout=timeout)[resource].result(
            timeout=timeout
        )
        return int(entries["max.message.bytes"].value)
    except (KafkaException, KeyError, ValueError, TypeError, TimeoutError) as exc:
        log.info("kafka.topic_limit_unknown", topic=topic, error=type(exc).__name__)
        return None


class Probe:
    """A cached AdminClient for cheap reachability checks (thread-safe, for /readyz)."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self._admin: AdminClient | None = None

    def reachable(self, timeout: float) -> bool:
        if self._admin is None:
            conf = admin_config(self._kafka)
            conf["log_level"] = 3
            self._admin = AdminClient(conf)
        try:
            md = self._admin.list_topics(timeout=max(0.1, timeout))
        except KafkaException:
            return False
        return bool(md.brokers)
