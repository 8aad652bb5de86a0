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

This module is the state machine (threads, callbacks, terms); the group's mechanics
(consumer properties, fencing, watchdog, who holds partition 0) are
``bridge.election.kafkagroup``, the topic as a log ``bridge.election.kafkalog``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from bridge.cancel import Cancel
from bridge.config import Settings
from bridge.election.base import CLAIMED, CONNECTED, RELEASED, RoleReporter, Term
from bridge.election.kafkagroup import (
    CONSUMER,
    PARTITION,
    POLL_S,
    KafkaFencing,
    Watchdog,
    describe_leader,
    election_client_config,
)
from bridge.election.kafkalog import ElectionLog, ensure_topic
from bridge.errors import ElectionError
from bridge.logs import EventLog
from bridge.observability import Metrics, State

LOG = EventLog("bridge.election.kafka")
UNREACHABLE = {KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT}
REFUSED = {KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError.TOPIC_AUTHORIZATION_FAILED}


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
        self._max_connections = settings.livestream.max_connections
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
        self._log: ElectionLog | None = None
        self._admin: AdminClient | None = None
        self._threads: list[threading.Thread] = []

    def _config(self, client: str, props: dict[str, Any]) -> dict[str, Any]:
        return election_client_config(self._kafka, client, props)

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
            ensure_topic(self._admin, self.topic, self._kafka, self._stopping)
            self._log = ElectionLog(
                self.topic, self.group_id, self.identity, self._config, self._max_connections
            )
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
        if self._log is not None:
            if not any(t.is_alive() for t in self._threads):
                self._log.close_reader()
            self._log.flush()
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

    def claim(self) -> bool:
        if (term := self._live_term()) is None:
            return False
        return self._append(CLAIMED, clean=False, term=term.number)

    def release(self, *, clean: bool) -> None:
        if (term := self._live_term()) is None:
            return
        self._append(RELEASED, clean=clean, term=term.number)
        self._left.clear()
        self._leave_requested.set()
        if not self._left.wait(timeout=max(10.0, self.session_s)) and self._live_term() is term:
            self._lose("released")  # the thread is stuck; at least stop acting as leader

    def _append(self, kind: str, *, clean: bool, term: int) -> bool:
        if self._log is None:
            raise ElectionError("election not started")
        return self._log.append(kind, clean=clean, term=term)

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
        assert self._log is not None
        if (last := self._log.read_last()) is None:
            return None  # logged; the next step retries
        high, predecessor = last
        with self._cond:
            self._terms += 1
            lost = Cancel()
            fencing = KafkaFencing(self.topic, high, metadata, lost)
            term = self._term = Term(self._terms, lost, predecessor, fencing)
            self._cond.notify_all()
        self._watchdog.reset(now := self._clock())
        self._last_step = now
        self._roles.leader(term.number)
        p = predecessor
        LOG.info("election.term", term=term.number, offset=high, predecessor=p and p.identity)
        return None

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
                leader = describe_leader(self._admin, self.group_id, self.topic)
            except (KafkaException, AttributeError) as exc:
                LOG.debug("election.describe_failed", error=str(exc))
                continue
            with self._cond:
                self._seen_leader = leader
            self._roles.seen_leader(leader)
