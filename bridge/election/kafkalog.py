"""The election topic as a log: created with one partition; the leader appends
``connected`` when it opened its upstream connection and ``released`` when it let go, and
a new leader reads the last record back as its predecessor (``Term.grace_s``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from bridge.config import KafkaSettings
from bridge.election.base import CONNECTED, Predecessor
from bridge.election.kafkagroup import CONSUMER, PARTITION, POLL_S
from bridge.errors import ElectionError
from bridge.logs import EventLog

# The backend's own logger: these lines are the election's, wherever the code lives.
LOG = EventLog("bridge.election.kafka")
RETENTION_MS = str(7 * 24 * 3600 * 1000)
FLUSH_S, READ_S = 5.0, 5.0
ClientConfig = Callable[[str, dict[str, Any]], dict[str, Any]]


def ensure_topic(
    admin: AdminClient, topic: str, kafka: KafkaSettings, stopping: threading.Event
) -> None:
    """Create the one-partition election topic when allowed, then insist it exists with
    exactly one partition."""
    if kafka.create_topics:
        config = {"cleanup.policy": "delete", "retention.ms": RETENTION_MS}
        new = NewTopic(topic, 1, kafka.replication_factor, config=config)
        try:
            admin.create_topics([new], request_timeout=15)[topic].result(timeout=20)
            LOG.info("election.topic_created", topic=topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    deadline = time.monotonic() + 15
    while (md := admin.list_topics(timeout=15).topics.get(topic)) is None or md.error:
        if time.monotonic() > deadline:  # a new topic takes a moment to show up
            raise ElectionError(f"election topic {topic} does not exist")
        stopping.wait(POLL_S)
    if len(md.partitions) != 1:
        raise ElectionError(f"election topic {topic} has {len(md.partitions)} partitions")


class ElectionLog:
    """One replica's writer and reader of the election topic. ``read_last`` is called only
    from the election thread; the reader is closed only once that thread has ended."""

    def __init__(
        self,
        topic: str,
        group_id: str,
        identity: str,
        config: ClientConfig,
        max_connections: int = 1,
    ) -> None:
        self.topic, self._identity, self._max_connections = topic, identity, max_connections
        log_props = {"enable.idempotence": True, "acks": "all", "linger.ms": 0}
        self._producer = Producer(config(f"{identity}.election-log", log_props))
        reader_props = log_reader_props(f"{group_id}.reader")
        self._reader = Consumer(config(f"{identity}.election-reader", reader_props))

    def append(self, kind: str, *, clean: bool, term: int) -> bool:
        """Write one record and wait for the broker's acknowledgement; True once stored."""
        record = {"identity": self._identity, "kind": kind, "at": time.time(), "clean": clean}
        record["max_connections"] = self._max_connections
        errors: list[KafkaError] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(err)

        value = json.dumps({**record, "term": term}).encode()
        key = self._identity.encode()
        self._producer.produce(self.topic, value, key, PARTITION, on_delivery=delivered)
        if (pending := self._producer.flush(FLUSH_S)) or errors:
            LOG.error("election.record_failed", kind=kind, pending=pending, errors=errors[:1])
            return False
        LOG.info("election.record", kind=kind, clean=clean, term=term)
        return True

    def read_last(self) -> tuple[int, Predecessor | None] | None:
        """(high watermark, the predecessor its last record names); None when the
        watermarks could not be read (logged; the caller tries again)."""
        tp = TopicPartition(self.topic, PARTITION)
        try:
            # librdkafka sends the watermark query to the partition leader it has cached,
            # and an idle reader's cache is not refreshed when that broker dies: the query
            # then times out until the dead connection is dropped (35-60 s seen on a
            # three-broker cluster). Asking for the topic's metadata first routes it to
            # the current leader as soon as one is elected.
            self._reader.list_topics(self.topic, timeout=READ_S)
            low, high = self._reader.get_watermark_offsets(tp, timeout=READ_S, cached=False)
        except (KafkaException, TypeError) as exc:  # TypeError: None on timeout
            LOG.warning("election.watermarks_failed", error=str(exc))
            return None
        return high, read_last_record(self._reader, self.topic, low, high)

    def flush(self) -> None:
        self._producer.flush(FLUSH_S)

    def close_reader(self) -> None:
        self._reader.close()


def log_reader_props(group_id: str) -> dict[str, Any]:
    """A consumer that reads an election log by assignment; ``group_id`` is never joined."""
    return {
        **CONSUMER,
        "group.id": group_id,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
    }


def read_last_record(reader: Consumer, topic: str, low: int, high: int) -> Predecessor | None:
    """The record below ``high`` in the election log ``topic`` (None when it is empty),
    read with ``reader`` (a consumer that never joins a group)."""
    if high <= 0:
        return None  # nothing was ever written: a fresh deployment
    last: Message | None = None
    if high > low:
        reader.assign([TopicPartition(topic, PARTITION, high - 1)])
        deadline = time.monotonic() + READ_S
        try:
            while last is None and time.monotonic() < deadline:
                if (msg := reader.poll(POLL_S)) is None:
                    continue
                offset = msg.offset() or 0
                if (err := msg.error()) is None and offset >= high - 1:
                    last = msg
                elif err is not None and err.code() == KafkaError._PARTITION_EOF and offset >= high:
                    break
        finally:
            reader.unassign()
    try:
        if last is None:
            raise ValueError("no readable record below the high watermark")
        return Predecessor.from_record(json.loads(last.value() or b""))
    except ValueError as exc:
        # Expired or unreadable: assume the worst, a holder that died connected.
        LOG.warning("election.predecessor_unknown", offset=high - 1, error=str(exc))
        return Predecessor("unknown", CONNECTED, time.time(), False)
