"""Helpers for tests that talk to a real Kafka broker.

Import them directly (``from tests.kafkautil import read_all``); the fixtures in
``tests/conftest.py`` are thin wrappers around them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bridge.kafkaerrors import transient

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_LOCAL = REPO_ROOT / "scripts" / "kafka-local"
T = TypeVar("T")

_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9._-]+")
RETRY_STEP_S = 0.1


def passing(err: KafkaError) -> bool:
    """Will ``err`` clear up by itself? The bridge's own rule (a topic just created answers
    NOT_LEADER_FOR_PARTITION and the like for a moment)."""
    return transient(err)


def retrying(call: Callable[[], T], deadline: float, what: str) -> T:
    """``call()`` again while it raises a passing ``KafkaException``, until ``deadline``."""
    while True:
        try:
            return call()
        except KafkaException as exc:
            if not passing(exc.args[0]):
                raise
            if time.monotonic() >= deadline:
                raise AssertionError(f"{what}: still {exc.args[0]} at the deadline") from exc
        time.sleep(RETRY_STEP_S)


class Record(NamedTuple):
    """One message as read back by :func:`read_all`."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    timestamp: int  # milliseconds since the epoch (create or log-append time)


def admin_client(bootstrap: str) -> AdminClient:
    """An AdminClient for ``bootstrap`` with librdkafka's logging kept quiet."""
    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})


def unique_topic_name(base: str) -> str:
    """A legal, unique topic name derived from ``base`` (e.g. a test's node name)."""
    stem = _NAME_UNSAFE.sub("-", base).strip("-.")[:180] or "topic"
    return f"{stem}-{uuid.uuid4().hex[:12]}"


def create_topic(
    bootstrap: str,
    name: str,
    *,
    partitions: int = 3,
    replication: int = 1,
    config: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> str:
    """Create ``name`` and wait until every partition has a leader; return the name."""
    admin = admin_client(bootstrap)
    new = NewTopic(
        name, num_partitions=partitions, replication_factor=replication, config=config or {}
    )
    deadline = time.monotonic() + timeout
    tried = False

    def create() -> None:
        nonlocal tried
        futures = admin.create_topics([new], operation_timeout=timeout, request_timeout=timeout)
        try:
            futures[name].result(timeout=timeout)
        except KafkaException as exc:  # a retried create may find its first attempt done
            if not (tried and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise
        finally:
            tried = True

    retrying(create, deadline, f"create topic {name}")
    wait_for_topic(bootstrap, name, partitions=partitions, timeout=timeout, admin=admin)
    return name


def wait_for_topic(
    bootstrap: str,
    name: str,
    *,
    partitions: int,
    timeout: float = 30.0,
    admin: AdminClient | None = None,
) -> None:
    """Block until the metadata of ``name`` shows ``partitions`` partitions, all led."""
    admin = admin or admin_client(bootstrap)
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            md = admin.list_topics(topic=name, timeout=5).topics.get(name)
        except KafkaException as exc:
            last = exc
            md = None
        if md is not None and md.error is None:
            led = [p for p in md.partitions.values() if p.leader >= 0 and p.error is None]
            if len(led) == partitions:
                return
            last = f"{len(led)}/{partitions} partitions led"
        elif md is not None:
            last = md.error
        time.sleep(0.1)
    raise AssertionError(f"topic {name} not ready within {timeout}s: {last}")


def delete_topics(bootstrap: str, names: list[str], *, timeout: float = 30.0) -> None:
    """Delete ``names`` and wait for the deletions to be accepted (missing topics are fine)."""
    if not names:
        return
    admin = admin_client(bootstrap)  # keep a reference: the futures die with the client
    deadline = time.monotonic() + timeout
    for name in names:

        def delete(name: str = name) -> None:
            try:
                admin.delete_topics([name], operation_timeout=timeout)[name].result(timeout=timeout)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:  # gone: fine
                    raise

        retrying(delete, deadline, f"delete topic {name}")


def read_all(
    bootstrap: str,
    topic: str,
    *,
    isolation: str = "read_committed",
    timeout: float = 30.0,
) -> list[Record]:
    """Read every message of ``topic`` that exists when called, in offset order per partition.

    The end of each partition is fixed first, with ``get_watermark_offsets(cached=False)``
    on a consumer whose ``isolation.level`` is ``isolation``: librdkafka sends its
    ListOffsets request with that isolation level, so for ``read_committed`` the "high"
    offset it returns is the last stable offset (messages of open transactions are not
    waited for), for ``read_uncommitted`` it is the high watermark. The consumer is then
    assigned every partition from the beginning (no group join, no commits) and polled
    until each partition reached that end, either by a message at ``end - 1`` or by a
    partition-EOF event at or past it (needed when the tail holds transaction markers or
    aborted messages, which a ``read_committed`` consumer never returns). Messages
    appended later are ignored. Missing the deadline raises ``AssertionError``.

    Returns records sorted by (partition, offset).
    """
    if isolation not in ("read_committed", "read_uncommitted"):
        raise ValueError(f"isolation must be read_committed or read_uncommitted, not {isolation}")
    deadline = time.monotonic() + timeout
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-all-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": isolation,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "log_level": 3,
        }
    )
    try:
        bounds = _partition_bounds(consumer, topic, deadline)
        pending = {p for p, (low, high) in bounds.items() if high > low}
        out: list[Record] = []
        if pending:
            consumer.assign([TopicPartition(topic, p, bounds[p][0]) for p in sorted(pending)])
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                got = {p: sum(1 for r in out if r.partition == p) for p in bounds}
                raise AssertionError(
                    f"read_all({topic}) timed out after {timeout}s; partitions still open: "
                    f"{sorted(pending)}, (start, end) {bounds}, records per partition {got}"
                )
            msg = consumer.poll(min(1.0, remaining))
            if msg is None:
                continue
            (part, off), err = _place(msg), msg.error()
            end = bounds[part][1] if part in bounds else -1
            if err is None and off < end:
                _ts_type, ts = msg.timestamp()
                out.append(Record(part, off, msg.key(), msg.value(), _headers(msg), ts))
                if off >= end - 1:
                    pending.discard(part)
            elif err is not None and err.code() == KafkaError._PARTITION_EOF:
                if off >= end:
                    pending.discard(part)
            elif err is not None and err.fatal():
                raise KafkaException(err)
        out.sort(key=lambda r: (r.partition, r.offset))
        return out
    finally:
        consumer.close()


def _place(msg: Message) -> tuple[int, int]:
    """``msg``'s partition and offset, -1 for either it lacks (a client-level error): no
    partition has that number, so ``read_all`` takes such a message for no partition's."""
    part, off = msg.partition(), msg.offset()
    return (-1 if part is None else part, -1 if off is None else off)


def _headers(msg: Message) -> list[tuple[str, bytes | None]]:
    """The headers of a consumed message, as (name, value) pairs."""
    # cast: the stub types what produce() takes (a dict too, str values); consumed are pairs
    return cast("list[tuple[str, bytes | None]]", list(msg.headers() or []))


def _partition_bounds(
    consumer: Consumer, topic: str, deadline: float
) -> dict[int, tuple[int, int]]:
    """(first offset, end offset) of every partition, end per the consumer's isolation level."""

    def step() -> float:
        return max(1.0, min(10.0, deadline - time.monotonic()))

    def partitions() -> list[int]:
        tmd = consumer.list_topics(topic, timeout=step()).topics.get(topic)
        if tmd is None:
            raise KafkaException(KafkaError(KafkaError._UNKNOWN_TOPIC))
        if tmd.error is not None:
            raise KafkaException(tmd.error)
        return sorted(tmd.partitions)

    bounds: dict[int, tuple[int, int]] = {}
    for p in retrying(partitions, deadline, f"topic {topic} unknown"):
        bounds[p] = retrying(
            lambda p=p: consumer.get_watermark_offsets(  # type: ignore[misc]
                TopicPartition(topic, p), timeout=step(), cached=False
            ),
            deadline,
            f"offsets of {topic} [{p}]",
        )
    return bounds


def kafka_local(
    *args: str, env: dict[str, str] | None = None, timeout: float = 900.0
) -> subprocess.CompletedProcess[str]:
    """Run ``scripts/kafka-local`` with ``args``; stdout and stderr are captured as text.

    ``env`` defaults to this process's environment; KAFKA_LOCAL_PYTHON is pointed at this
    interpreter (which has confluent_kafka) unless set, for the fast readiness check.
    """
    full_env = dict(os.environ if env is None else env)
    full_env.setdefault("KAFKA_LOCAL_PYTHON", sys.executable)
    return subprocess.run(
        [str(KAFKA_LOCAL), *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
