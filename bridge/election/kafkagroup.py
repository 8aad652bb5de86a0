"""The election group's mechanics, apart from the state machine that drives them: the
consumer properties every member uses, the group metadata that fences a term (renewed at
each rebalance), the watchdog that tells a leader when it can no longer be sure it leads,
and, for standbys, which member holds partition 0.
"""

from __future__ import annotations

import struct
import threading
import time
import warnings
from typing import Any

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from bridge.config import KafkaSettings
from bridge.kafkaclients import kafka_logger
from bridge.logs import EventLog

LOG = EventLog("bridge.election.kafka")

PARTITION = 0
POLL_S = 0.1
CONSUMER = {
    "group.protocol": "classic",
    "partition.assignment.strategy": "cooperative-sticky",
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "isolation.level": "read_committed",
}
warnings.filterwarnings("ignore", r"list_groups\(\) is deprecated", DeprecationWarning)


class KafkaFencing:
    """Offsets and group metadata of one term; renewed while the leader keeps partition 0."""

    def __init__(self, topic: str, offset: int, metadata: object, lost: threading.Event) -> None:
        self._topic, self._offset, self._lost = topic, offset, lost
        self._metadata = metadata
        self._cond = threading.Condition()

    def offsets(self) -> list[TopicPartition]:
        return [TopicPartition(self._topic, PARTITION, self._offset)]

    def group_metadata(self) -> object:
        with self._cond:
            return self._metadata

    def wait_renewed(self, stale: object, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._metadata == stale and not self._lost.is_set():
                if (remaining := deadline - time.monotonic()) <= 0:
                    return False
                self._cond.wait(min(remaining, POLL_S))
            return not self._lost.is_set()

    def renew(self, metadata: object) -> None:
        with self._cond:
            self._metadata = metadata
            self._cond.notify_all()


class Watchdog:
    """Decides when a leader can no longer be sure it leads (all times monotonic)."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.down_since: float | None = None  # first broker error not yet followed by contact
        self.last_contact = 0.0  # the group coordinator last answered (its rx counter grew)
        self.steady = False  # heartbeating: the coordinator answers every heartbeat interval
        self._rx = -1

    def rebase(self) -> None:
        """A new consumer counts its responses from zero."""
        self._rx = -1

    def reset(self, now: float) -> None:
        self.down_since, self.last_contact = None, now

    def broker_error(self, now: float) -> None:
        if self.down_since is None:
            self.down_since = now

    def stats(self, now: float, *, steady: bool, coordinator_up: bool, rx: int | None) -> None:
        self.steady = steady
        if rx is not None:
            if self._rx >= 0 and rx != self._rx:
                self.last_contact, self.down_since = now, None
            self._rx = rx
        if coordinator_up:
            self.down_since = None

    def verdict(self, now: float) -> str | None:
        if self.down_since is not None and now - self.down_since > self.limit_s:
            return f"brokers unreachable for {now - self.down_since:.1f}s"
        if self.steady and now - self.last_contact > self.limit_s:
            return f"group coordinator silent for {now - self.last_contact:.1f}s"
        return None


def describe_leader(admin: AdminClient, group_id: str, topic: str) -> str | None:
    """The client.id (a replica's identity) of the member assigned partition 0, if any."""
    # list_groups, not describe_consumer_groups: with librdkafka 2.16 a
    # DescribeConsumerGroups that timed out while the broker was down can abort the
    # process (assert in rd_kafka_enq_once_del_source_return) when the broker returns.
    for group in admin.list_groups(group_id, timeout=5):
        for member in group.members:
            if (topic, PARTITION) in assigned_partitions(member.assignment or b""):
                return str(member.client_id)
    return None


def assigned_partitions(assignment: bytes) -> list[tuple[str, int]]:
    """(topic, partition) pairs of a serialized consumer-protocol assignment."""
    out: list[tuple[str, int]] = []
    try:
        (topics,) = struct.unpack_from(">i", assignment, 2)  # after the int16 version
        pos = 6
        for _ in range(topics):
            (size,) = struct.unpack_from(">h", assignment, pos)
            topic = assignment[pos + 2 : pos + 2 + size].decode()
            (count,) = struct.unpack_from(">i", assignment, pos + 2 + size)
            pos += 6 + size
            out += [(topic, p) for p in struct.unpack_from(f">{max(0, count)}i", assignment, pos)]
            pos += 4 * max(0, count)
    except (struct.error, UnicodeDecodeError):
        return []
    return out


def election_client_config(
    kafka: KafkaSettings, client: str, props: dict[str, Any]
) -> dict[str, Any]:
    """The configuration of one of the election's Kafka clients, named ``client``."""
    conf: dict[str, Any] = {**kafka.client_config(), **props, "client.id": client}
    conf["logger"] = kafka_logger("election")  # JSON lines, repeats held back
    if conf.pop("group.instance.id", None) is not None:  # no static membership, ever
        LOG.warning("election.static_membership_ignored", property="group.instance.id")
    return conf
