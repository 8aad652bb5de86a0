"""Backend ``kafka``: every replica joins one consumer group on a one-partition topic; the
member assigned partition 0 leads.

The group uses the classic protocol with cooperative-sticky assignment, so a standby that
joins never takes the partition from a healthy leader. The election consumer is touched
only by its own thread (a librdkafka call from a second thread blocks while another thread
polls); that thread also notices when it was not scheduled, or the group coordinator did
not answer, for half a session and then steps down before anyone else could be elected.

The topic doubles as an election log: the leader appends ``connected`` when it opened
its upstream connection and ``released`` when it let go, and a new leader reads the last
record to decide how long to wait before connecting (``Term.grace_s``).
"""

from __future__ import annotations

import json
import struct
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from bridge.config import Settings
from bridge.election.base import CONNECTED, RELEASED, Predecessor, RoleReporter, Term
from bridge.errors import ElectionError
from bridge.observability import EventLog, Metrics, State
from bridge.topics import kafka_logger

LOG = EventLog("bridge.election.kafka")
PARTITION = 0
RETENTION_MS = str(7 * 24 * 3600 * 1000)
POLL_S, FLUSH_S, READ_S = 0.1, 5.0, 5.0
UNREACHABLE = {KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT}
REFUSED = {KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError.TOPIC_AUTHORIZATION_FAILED}
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


class KafkaElection:
    """Leader election through a Kafka consumer group (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        state: State,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        e = settings.election
        self.identity, self.topic, self.group_id = e.identity, e.topic, e.group_id
        self.session_s = e.session_timeout_ms / 1000
        self._kafka, self._clock = settings.kafka, clock
        self._roles = RoleReporter(self.identity, metrics, state, LOG)
        self._health = state
        self._watchdog = Watchdog(0.5 * self.session_s)
        self._cond = threading.Condition()  # guards _term, _seen_leader, _failure, _closed
        self._term: Term | None = None
        self._terms = 0
        self._seen_leader: str | None = None
        self._failure: BaseException | None = None
        self._closed = False
        self._stopping, self._want_join, self._observe = (threading.Event() for _ in "123")
        self._leave_requested, self._left = threading.Event(), threading.Event()
        self._rejoin_not_before, self._last_step = 0.0, clock()
        # Election-thread state, written only by that thread (and its callbacks).
        self._owns = self._broken = self._logged_unreachable = False
        self._assigned_md: object | None = None
        self._refused: str | None = None
        self._consumer: Consumer | None = None
        self._reader: Consumer | None = None
        self._producer: Producer | None = None
        self._admin: AdminClient | None = None
        self._threads: list[threading.Thread] = []

    def _config(self, client: str, props: dict[str, Any]) -> dict[str, Any]:
        conf: dict[str, Any] = {**self._kafka.client_config(), **props, "client.id": client}
        conf["logger"] = kafka_logger("election")  # JSON lines, repeats held back
        if conf.pop("group.instance.id", None) is not None:  # no static membership, ever
            LOG.warning("election.static_membership_ignored", property="group.instance.id")
        return conf

    def _consumer_config(self) -> dict[str, Any]:
        ms = round(self.session_s * 1000)
        return self._config(
            self.identity,  # standbys find the leader's identity by its client.id
            {
                **CONSUMER,
                "group.id": self.group_id,
                "session.timeout.ms": ms,
                "heartbeat.interval.ms": max(1, ms // 5),
                "statistics.interval.ms": min(1000, max(100, ms // 10)),
                "stats_cb": self._on_stats,
                "error_cb": self._on_error,
            },
        )

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._threads or self._closed:
            return
        try:
            self._admin = AdminClient(self._config(f"{self.identity}.election-admin", {}))
            self._ensure_topic(self._admin)
            log_props = {"enable.idempotence": True, "acks": "all", "linger.ms": 0}
            self._producer = Producer(self._config(f"{self.identity}.election-log", log_props))
            reader_props = {**CONSUMER, "group.id": f"{self.group_id}.reader"}  # never joins
            reader_props.update({"enable.partition.eof": True, "auto.offset.reset": "earliest"})
            self._reader = Consumer(self._config(f"{self.identity}.election-reader", reader_props))
            self._consumer = self._new_consumer()
        except (KafkaException, TimeoutError) as exc:
            detail = exc.args[0] if exc.args else "timed out"
            raise ElectionError(f"election on topic {self.topic}: {detail}") from None
        self._want_join.set()
        self._roles.standby(None)
        for target, name in ((self._run, "election"), (self._observe_loop, "election-observer")):
            thread = threading.Thread(target=target, name=f"{name}-{self.identity}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _ensure_topic(self, admin: AdminClient) -> None:
        if self._kafka.create_topics:
            config = {"cleanup.policy": "delete", "retention.ms": RETENTION_MS}
            new = NewTopic(self.topic, 1, self._kafka.replication_factor, config=config)
            try:
                admin.create_topics([new], request_timeout=15)[self.topic].result(timeout=20)
                LOG.info("election.topic_created", topic=self.topic)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
        deadline = time.monotonic() + 15
        while (md := admin.list_topics(timeout=15).topics.get(self.topic)) is None or md.error:
            if time.monotonic() > deadline:  # a new topic takes a moment to show up
                raise ElectionError(f"election topic {self.topic} does not exist")
            self._stopping.wait(POLL_S)
        if len(md.partitions) != 1:
            raise ElectionError(f"election topic {self.topic} has {len(md.partitions)} partitions")

    def _new_consumer(self) -> Consumer:
        consumer = Consumer(self._consumer_config())
        on = {"on_assign": self._on_assign, "on_revoke": self._on_revoke, "on_lost": self._on_lost}
        consumer.subscribe([self.topic], **on)
        self._owns, self._assigned_md, self._broken = False, None, False
        self._watchdog.rebase()
        return consumer

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._stopping.set()
        self._observe.set()
        for thread in self._threads:
            thread.join(timeout=max(10.0, 2 * self.session_s))
        if self._reader is not None and not any(t.is_alive() for t in self._threads):
            self._reader.close()
        if self._producer is not None:
            self._producer.flush(FLUSH_S)
        self._lose("closed")

    # -- what the service calls -----------------------------------------------------------

    def wait_for_leadership(self, stop: threading.Event) -> Term | None:
        self._want_join.set()
        with self._cond:
            while not stop.is_set() and not self._closed:
                if self._failure is not None:
                    raise ElectionError(f"election failed: {self._failure}")
                if self._term is not None and not self._term.lost.is_set():
                    return self._term
                self._cond.wait(POLL_S)
        return None

    def leader(self) -> str | None:
        with self._cond:
            if self._term is not None and not self._term.lost.is_set():
                return self.identity
            return None if self._seen_leader == self.identity else self._seen_leader

    def announce_connected(self) -> None:
        if (term := self._live_term()) is None:
            LOG.warning("election.announce_skipped", reason="not leader")
            return
        self._append(CONNECTED, clean=False, term=term.number)

    def release(self, *, clean: bool) -> None:
        if (term := self._live_term()) is None:
            return
        self._append(RELEASED, clean=clean, term=term.number)
        self._left.clear()
        self._leave_requested.set()
        if not self._left.wait(timeout=max(10.0, self.session_s)) and self._live_term() is term:
            self._lose("released")  # the thread is stuck; at least stop acting as leader

    def _append(self, kind: str, *, clean: bool, term: int) -> None:
        if self._producer is None:
            raise ElectionError("election not started")
        record = {"identity": self.identity, "kind": kind, "at": time.time(), "clean": clean}
        errors: list[KafkaError] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(err)

        value = json.dumps({**record, "term": term}).encode()
        key = self.identity.encode()
        self._producer.produce(self.topic, value, key, PARTITION, on_delivery=delivered)
        if (pending := self._producer.flush(FLUSH_S)) or errors:
            LOG.error("election.record_failed", kind=kind, pending=pending, errors=errors[:1])
        else:
            LOG.info("election.record", kind=kind, clean=clean, term=term)

    # -- the election thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                # /healthz turns red when this loop hangs (a stuck client call), which no
                # self-demotion can notice from inside the loop.
                self._health.beat("election", 2 * self.session_s + 10)
                if self._leave_requested.is_set():
                    self._leave()
                if (consumer := self._consumer) is None:
                    if self._want_join.is_set() and self._clock() >= self._rejoin_not_before:
                        self._consumer, self._last_step = self._new_consumer(), self._clock()
                    else:
                        self._stopping.wait(POLL_S)
                    continue
                try:
                    self._step(consumer)
                except KafkaException as exc:
                    self._demote(f"election consumer failed: {exc.args[0]}")
                    self._rejoin_not_before = self._clock() + 1.0
        except BaseException as exc:
            with self._cond:
                self._failure = exc
                self._cond.notify_all()
            LOG.error("election.failed", error=str(exc))
        finally:
            self._health.forget("election")
            self._lose("closed")
            self._drop_consumer()

    def _step(self, consumer: Consumer) -> None:
        now = self._clock()
        gap, self._last_step = now - self._last_step, now
        if self._live_term() is not None and gap > self._watchdog.limit_s:
            return self._demote(f"election loop not scheduled for {gap:.1f}s")
        self._poll(consumer)
        if self._refused is not None:
            raise ElectionError(self._refused)
        if self._broken:
            return self._demote("fatal Kafka error")
        if self._owns and self._assigned_md is not None and self._live_term() is None:
            self._begin_term(self._assigned_md)
        if self._live_term() is not None and (why := self._watchdog.verdict(self._clock())):
            self._demote(why)
        return None

    def _poll(self, consumer: Consumer) -> None:
        msg = consumer.poll(POLL_S)  # serves the callbacks; group errors come as messages
        if msg is not None and (err := msg.error()) is not None:
            self._on_error(err)

    def _leave(self) -> None:
        """release(): leave the group so a standby gets partition 0 at once; rejoin only
        when asked to lead again, and not before a session passed (the standby wins)."""
        self._leave_requested.clear()
        self._lose("released")
        self._drop_consumer()
        self._rejoin_not_before = self._clock() + self.session_s
        self._want_join.clear()
        self._left.set()

    def _demote(self, reason: str) -> None:
        """Step down on our own and leave the group, so partition 0 moves on; rejoin."""
        LOG.warning("election.self_demotion", reason=reason)
        self._lose(reason)
        self._drop_consumer()

    def _drop_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        self._owns, self._assigned_md = False, None
        if consumer is not None:
            try:
                consumer.close()  # LeaveGroup: the partition moves at once
            except (KafkaException, RuntimeError) as exc:
                LOG.warning("election.close_failed", error=str(exc))

    def _begin_term(self, metadata: object) -> None:
        assert self._reader is not None
        tp = TopicPartition(self.topic, PARTITION)
        try:
            low, high = self._reader.get_watermark_offsets(tp, timeout=READ_S, cached=False)
        except (KafkaException, TypeError) as exc:  # TypeError: None on timeout
            return LOG.warning("election.watermarks_failed", error=str(exc))  # next step retries
        predecessor = self._read_predecessor(self._reader, low, high)
        with self._cond:
            self._terms += 1
            lost = threading.Event()
            fencing = KafkaFencing(self.topic, high, metadata, lost)
            term = self._term = Term(self._terms, lost, predecessor, fencing)
            self._cond.notify_all()
        self._watchdog.reset(now := self._clock())
        self._last_step = now
        self._roles.leader(term.number)
        p = predecessor
        LOG.info("election.term", term=term.number, offset=high, predecessor=p and p.identity)
        return None

    def _read_predecessor(self, reader: Consumer, low: int, high: int) -> Predecessor | None:
        if high <= 0:
            return None  # nothing was ever written: a fresh deployment
        last: Message | None = None
        if high > low:
            reader.assign([TopicPartition(self.topic, PARTITION, high - 1)])
            deadline = time.monotonic() + READ_S
            try:
                while last is None and time.monotonic() < deadline:
                    if (msg := reader.poll(POLL_S)) is None:
                        continue
                    offset = msg.offset() or 0
                    if (err := msg.error()) is None and offset >= high - 1:
                        last = msg
                    elif (
                        err is not None
                        and err.code() == KafkaError._PARTITION_EOF
                        and offset >= high
                    ):
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

    def _live_term(self) -> Term | None:
        with self._cond:
            term = self._term
        return term if term is not None and not term.lost.is_set() else None

    def _lose(self, reason: str) -> None:
        with self._cond:
            term = self._term
            ended = term is not None and term.lose(reason)
            self._cond.notify_all()
        if term is not None and ended:
            LOG.info("election.lost", term=term.number, reason=reason)
            self._roles.standby(None, term.number)
            self._observe.set()

    # -- librdkafka callbacks (served by poll on the election thread) ---------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.incremental_assign(partitions)
        if mine := [tp for tp in partitions if self._ours(tp)]:
            consumer.pause(mine)  # nothing to read on the election consumer
            self._owns = True
        if self._owns:
            # Every rebalance moves the generation; a leader that kept partition 0 renews
            # its fencing, else its next transaction is rejected as stale.
            metadata = consumer.consumer_group_metadata()
            term = self._live_term()
            if term is not None and isinstance(term.fencing, KafkaFencing):
                term.fencing.renew(metadata)
            else:
                self._assigned_md = metadata
        self._observe.set()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._give_up(consumer, partitions, "partition revoked")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._give_up(consumer, partitions, "partition lost")

    def _give_up(self, consumer: Consumer, partitions: list[TopicPartition], why: str) -> None:
        if any(self._ours(tp) for tp in partitions):
            self._owns, self._assigned_md = False, None
            self._lose(why)
        consumer.incremental_unassign(partitions)
        self._observe.set()

    def _ours(self, tp: TopicPartition) -> bool:
        return tp.topic == self.topic and tp.partition == PARTITION

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in REFUSED:
            self._refused = f"election group {self.group_id} or topic {self.topic}: {err.str()}"
        elif err.code() in UNREACHABLE:
            self._watchdog.broker_error(self._clock())
            if not self._logged_unreachable:  # librdkafka repeats these every few ms
                self._logged_unreachable = True
                LOG.warning("election.broker_error", error=err.str())
        else:
            LOG.warning("election.kafka_error", error=err.str(), fatal=err.fatal())
            self._broken = self._broken or err.fatal()

    def _on_stats(self, raw: str) -> None:
        try:
            stats = json.loads(raw)
            cgrp = stats.get("cgrp") or {}
            coordinator = (stats.get("brokers") or {}).get("GroupCoordinator") or {}
        except (ValueError, AttributeError):
            return
        up = cgrp.get("state") == "up" and coordinator.get("state") == "UP"
        self._logged_unreachable = self._logged_unreachable and not up
        rx = coordinator.get("rx")
        steady = cgrp.get("join_state") == "steady"
        rx = rx if isinstance(rx, int) else None
        self._watchdog.stats(self._clock(), steady=steady, coordinator_up=up, rx=rx)

    # -- who leads, for standbys ----------------------------------------------------------

    def _observe_loop(self) -> None:
        while not self._stopping.is_set():
            self._observe.wait(timeout=30.0)
            self._observe.clear()
            if self._stopping.is_set() or self._admin is None:
                return
            if self._watchdog.down_since is not None:
                continue  # asked again after the next rebalance
            try:
                leader = self._describe_leader(self._admin)
            except (KafkaException, AttributeError) as exc:
                LOG.debug("election.describe_failed", error=str(exc))
                continue
            with self._cond:
                self._seen_leader = leader
            self._roles.seen_leader(leader)

    def _describe_leader(self, admin: AdminClient) -> str | None:
        # list_groups, not describe_consumer_groups: with librdkafka 2.16 a
        # DescribeConsumerGroups that timed out while the broker was down can abort the
        # process (assert in rd_kafka_enq_once_del_source_return) when the broker returns.
        for group in admin.list_groups(self.group_id, timeout=5):
            for member in group.members:
                if (self.topic, PARTITION) in assigned_partitions(member.assignment or b""):
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
