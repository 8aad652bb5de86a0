"""A transactional producer that never loses what it was given.

:class:`TransactionalWriter` is the half of the publisher that knows Kafka transactions and
nothing of Live Stream: every message of the open transaction is kept until the transaction
commits, so an aborted transaction is replayed, never lost.

Errors follow confluent-kafka's transactional pattern: retriable -> call again; abortable
-> abort, begin, re-produce the kept messages; fenced (another producer, or a stale
election generation on the offsets commit) -> ``FencedError`` at once; other fatal
errors -> a new producer, ``init_transactions``, re-produce (unless the commit they
interrupted turns out to have committed: :mod:`bridge.outcome`); a denial ->
``KafkaSetupError`` naming the ACL to grant.

Outages: ``maybe_commit`` never blocks longer than one short step, so the caller keeps
running and watches ``unreachable_for()``; producing and ``commit`` wait (back-pressure)
and give up with ``PublishError`` after ``publish.kafka_outage_s`` without taking the
message (nothing already taken is dropped: the next call resumes).
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from bridge.config import KafkaSettings, PublishSettings
from bridge.election.base import Fencing
from bridge.errors import FencedError, KafkaSetupError, PublishError
from bridge.observability import EventLog, Metrics
from bridge.outcome import CommitOutcome
from bridge.topics import (
    FENCED_CODES,
    MESSAGE_MAX_BYTES,
    TOO_LARGE_CODES,
    credentials_problem,
    producer_config,
)

__all__ = ["OPEN", "TXN_MAX_BYTES", "Header", "Kept", "TransactionalWriter"]

log = EventLog("bridge.publish")

TXN_MAX_BYTES = 16 * 1024 * 1024  # commit early when the open transaction holds this much
STEP_S = 2.0  # longest single blocking Kafka call made from maybe_commit()
POLL_EVERY_S = 0.05  # how often maybe_commit() serves the producer's events
MAX_REPLAYS = 5  # aborts or producer rebuilds in a row before giving up loudly
ERROR_LOG_EVERY_S = 30.0

# The writer's states; ``_state`` holds one of these very objects (compared with ``is``).
OPEN, PENDING, IDLE, FENCED = "open", "pending", "idle", "fenced"
_COUNTERS = (
    *("records_published", "records_dead_lettered", "records_abandoned", "producers_created"),
    *("transactions_committed", "transactions_aborted"),
)
# A rejected offsets commit that may only mean "a standby joined": see _fail.
_GENERATION_MOVED = frozenset({KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS})
_RENEW_WAIT_S = 15.0

# One kept message: topic, value, key, headers, dead-letter reason (None: a hit). Tuples
# only: a kept message holds no list or dict, so the cyclic GC untracks it the first time it
# sees it instead of promoting thousands of them per transaction to the oldest generation
# (whose collections would then walk the whole heap every few transactions).
Header = tuple[str, str]
Kept = tuple[str, bytes, str | None, tuple[Header, ...], str | None]


class TransactionalWriter(CommitOutcome):
    """Messages into Kafka transactions, kept until committed (see module doc).

    Counts what it commits: ``_txn_hits`` hits and ``_txn_dlq`` dead letters per reason,
    which the caller raises as it produces them.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        publish: PublishSettings,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._kafka, self._cfg, self._metrics = kafka, publish, metrics
        self._clock = clock
        self._interval = publish.commit_interval_ms / 1000.0
        self._max_records = publish.commit_max_records
        self._max_bytes = MESSAGE_MAX_BYTES
        self._producer: Any = None
        self._produce: Any = None
        self._fencing: Fencing | None = None
        self._generation: object | None = None  # group metadata sent with the open transaction
        self._state = IDLE
        self._kept: list[Kept] = []
        self._txn_bytes = 0
        self._txn_started = 0.0
        self._txn_hits = 0
        # Each taken hit's timestamp as parsed (see bridge.freshness), observed at commit.
        self._txn_stamps: list[object] = []
        self._txn_dlq: Counter[str] = Counter()
        self._need_abort = self._need_begin = self._need_replay = self._offsets_sent = False
        self._failures = 0
        self._stuck_since: float | None = None
        self._n = dict.fromkeys(_COUNTERS, 0)
        self._logged: dict[str, float] = {}
        self._polled_at = float("-inf")
        metrics.kafka_unreachable.set_function(self.unreachable_for)
        metrics.committed_hits.writing = lambda: self._state is not IDLE  # begun, not ended

    def _start(self, fencing: Fencing | None) -> None:
        """Forget the last term's transaction (saying what is dropped) before a new one."""
        if self._kept:  # the caller skipped close()/abort()
            self._n["records_abandoned"] += len(self._kept)
            log.warning("publish.abandoned", records=len(self._kept), state=self._state)
        self._drop_producer()
        self._kept.clear()
        self._txn_stamps.clear()
        self._txn_bytes = self._txn_hits = self._failures = 0
        self._txn_dlq.clear()
        self._fencing = fencing
        self._need_abort = self._need_replay = self._offsets_sent = False
        self._verify = False

    def _open(self) -> None:
        """Open the first transaction of a term (the producer is new and initialised)."""
        try:
            self._begin_transaction()
        except KafkaException as exc:
            self._state = PENDING
            self._fail(exc.args[0], "begin_transaction")
        else:
            self._state = OPEN
        self._stuck_since = None

    def _new_producer(self, deadline: float) -> None:
        conf = producer_config(self._kafka, self._cfg.compression, self._on_error, self._max_bytes)
        producer = Producer(conf)
        while True:
            remaining = deadline - time.monotonic()
            try:
                producer.init_transactions(max(1.0, min(remaining, 30.0)))
                break
            except KafkaException as exc:
                err = exc.args[0]
                problem = credentials_problem(self._kafka, err)
                if problem:
                    raise KafkaSetupError(problem) from None
                if err.retriable() and remaining > 0:
                    continue
                raise PublishError(f"init_transactions failed: {err.name()}: {err.str()}") from None
        self._producer, self._produce = producer, producer.produce
        self._n["producers_created"] += 1
        self._need_begin = True

    # -- producing --------------------------------------------------------------------

    def _send(
        self,
        topic: str,
        value: bytes,
        key: str | None,
        headers: list[tuple[str, str]],
        reason: str | None,
        *,
        sampled_at: float | None = None,
    ) -> bool:
        """Produce one message into the open transaction and keep it; waits while the
        producer is full. False (not taken): a hit too large for the topic."""
        cb = None
        if sampled_at is not None or not self._kept:  # the first one marks the transaction
            cb = functools.partial(self._on_delivered, self._txn_no, sampled_at)
        while True:
            try:
                if cb is None:
                    self._produce(topic, value, key, headers=headers)
                else:
                    self._produce(topic, value, key, headers=headers, on_delivery=cb)
                break
            except BufferError:
                try:
                    self._wait_for_room()
                except KafkaException as exc:  # poll() raises fatal errors, a fence included
                    self._fail(exc.args[0], "produce")  # FencedError, or a new producer
                    break  # kept below, re-produced by the new producer
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() in TOO_LARGE_CODES and reason is None:
                    return False  # the caller dead-letters it
                self._fail(err, "produce")  # raises unless recoverable
                if err.fatal() or err.txn_requires_abort():
                    break  # kept below, re-produced after the abort / by the new producer
                self._wait_for_room()
        if not self._kept:
            self._txn_started = self._clock()
        self._kept.append((topic, value, key, tuple(headers), reason))
        self._txn_bytes += len(value)  # the caller commits when the transaction is full
        return True

    def _wait_for_room(self) -> None:
        """The producer cannot take the record yet: serve it; give up only after an outage."""
        self._trouble()  # cleared by the next delivery report
        if self.unreachable_for() > self._cfg.kafka_outage_s:
            raise PublishError(self._outage_message())
        self._producer.poll(0.05)

    # -- transactions -----------------------------------------------------------------

    def maybe_commit(self) -> None:
        """Commit when due; one bounded attempt only, so the caller stays responsive."""
        if self._state is IDLE or self._state is FENCED:
            return
        producer = self._producer
        now = self._clock()
        if producer is not None and now - self._polled_at >= POLL_EVERY_S:
            # Not on every call: confluent-kafka takes the GIL back once per delivered
            # message while serving delivery reports, and next to the reader thread each
            # take can wait. Polling every chunk cost the pump 0.54 s per 300k hits, every
            # 50 ms 0.18-0.25 s (commit_transaction serves what is left).
            self._polled_at = now
            try:
                producer.poll(0)  # raises a fatal error (a fence included) as KafkaException
            except KafkaException as exc:
                self._fail(exc.args[0], "poll")  # FencedError, or a new producer next time
                return
            self._metrics.producer_queue.set(len(producer))
        if self._state is PENDING:
            self._attempt(STEP_S)
        elif self._kept and now - self._txn_started >= self._interval:
            self._state = PENDING
            self._attempt(STEP_S)

    def commit(self) -> None:
        """Commit the open transaction now (waits through retriable errors, see module doc)."""
        if self._state is OPEN:
            if not self._kept:
                return
            self._state = PENDING
        self._settle()

    def _settle(self) -> None:
        """Finish the pending commit, waiting up to the outage limit."""
        if self._state is FENCED:
            raise FencedError("this writer was fenced; begin() again after re-election")
        if self._state is IDLE:
            raise PublishError("the publisher is not begun")
        while not self._attempt(STEP_S):
            if self.unreachable_for() > self._cfg.kafka_outage_s:
                raise PublishError(self._outage_message())

    def _attempt(self, timeout: float) -> bool:
        """One pass of the commit state machine; True once committed (or nothing to commit)."""
        try:
            if self._producer is None:
                self._new_producer(deadline=time.monotonic() + timeout)
                self._need_replay, self._need_abort = bool(self._kept), False
            if self._verify is not False and self._already_committed(timeout, len(self._kept)):
                self._need_replay = False
                self._committed()
                return True
            producer = self._producer
            if self._need_abort:
                producer.abort_transaction(timeout)
                self._note_abort()
            if self._need_begin:
                self._begin_transaction()
            if self._need_replay:
                self._replay()
            if self._kept:
                if self._fencing is not None and not self._offsets_sent:
                    self._send_offsets(timeout)
                self._committing = True  # from here on the outcome may be unknown
                with self._metrics.transaction_commit.time():  # failed calls too
                    producer.commit_transaction(timeout)
        except KafkaException as exc:
            self._fail(exc.args[0], "commit")
            return False
        self._committed()
        return True

    def _begin_transaction(self) -> None:
        self._producer.begin_transaction()
        self._new_transaction()
        self._need_begin = self._offsets_sent = False

    def _send_offsets(self, timeout: float) -> None:
        assert self._fencing is not None
        offsets = self._fencing.offsets()
        # librdkafka skips the offsets commit when no offset is valid, and then a stale
        # generation would go unnoticed.
        if not any(tp.offset >= 0 for tp in offsets):
            raise PublishError("the election gave no valid offset: the commit would not be fenced")
        self._generation = self._fencing.group_metadata()
        self._producer.send_offsets_to_transaction(offsets, self._generation, timeout)
        self._offsets_sent = True

    def _committed(self) -> None:
        m, n = self._metrics, self._n
        if self._kept:
            m.records_published.inc(self._txn_hits)
            n["records_published"] += self._txn_hits
            for reason, count in self._txn_dlq.items():
                m.records_dead_lettered.labels(reason=reason).inc(count)
                n["records_dead_lettered"] += count
            m.transactions.labels(result="committed").inc()
            n["transactions_committed"] += 1
            m.committed_hits.committed(self._txn_stamps, time.time())
            self._txn_stamps.clear()  # in place: publish_many holds it
            self._kept.clear()
            self._txn_bytes = self._txn_hits = 0
            self._txn_dlq.clear()
            self._need_begin = True
        if self._need_begin:
            self._begin_transaction()
        self._state, self._failures, self._stuck_since = OPEN, 0, None

    def _note_abort(self) -> None:
        self._committing = False
        self._need_abort, self._need_begin, self._need_replay = False, True, True
        self._metrics.transactions.labels(result="aborted").inc()
        self._n["transactions_aborted"] += 1

    def _replay(self) -> None:
        """Re-produce every kept record into the new transaction, in the original order."""
        produce, poll = self._producer.produce, self._producer.poll
        mark = functools.partial(self._on_delivered, self._txn_no, None)
        try:
            for i, (topic, value, key, headers, _) in enumerate(self._kept):
                while True:
                    try:
                        kw = {} if i else {"on_delivery": mark}  # the first marks it
                        produce(topic, value, key, headers=list(headers), **kw)
                        break
                    except BufferError:
                        poll(0.05)
        except KafkaException:
            self._need_abort = True  # a half replayed transaction must not be committed
            raise
        self._need_replay = False

    def _fail(self, err: KafkaError, what: str) -> None:
        """Classify a Kafka error per the transactional pattern; raise or schedule recovery."""
        code = err.code()
        if code in _GENERATION_MOVED and self._still_leading():
            # A standby joining moves the group generation while we keep the partition; the
            # election renews our metadata, and the same records go again in a new
            # transaction. Only a lost term makes this a fencing.
            log.info("publish.generation_renewed", during=what, error=err.name())
            self._state, self._need_abort = PENDING, True
            return
        if code in FENCED_CODES:
            self._state = FENCED
            log.warning("publish.fenced", during=what, error=err.name(), records=len(self._kept))
            raise FencedError(f"{what}: {err.name()}: {err.str()}")
        # A denied topic is not named in the error: name every topic the transaction used.
        topics = sorted({m[0] for m in self._kept}, key=lambda t: t != self._kafka.topic)
        problem = credentials_problem(self._kafka, err, topics=topics)
        if problem:
            raise KafkaSetupError(problem)
        self._state = PENDING
        if err.fatal():
            log.error("publish.producer_fatal", during=what, error=err.name(), detail=err.str())
            self._count_failure(err)
            self._fatal(self._producer, len(self._kept))  # see bridge.outcome
            self._drop_producer()
            return
        if err.txn_requires_abort():
            log.warning("publish.transaction_abort", during=what, error=err.name())
            self._count_failure(err)
            self._need_abort = True
            return
        if err.retriable():
            self._trouble()
            return
        raise PublishError(f"{what} failed: {err.name()}: {err.str()}")

    def _still_leading(self) -> bool:
        if self._fencing is None or self._generation is None:
            return False
        return self._fencing.wait_renewed(self._generation, _RENEW_WAIT_S)

    def _count_failure(self, err: KafkaError) -> None:
        self._trouble()
        self._failures += 1
        if self._failures > MAX_REPLAYS:
            raise PublishError(f"transaction failed {self._failures} times in a row: {err.str()}")

    # -- health -----------------------------------------------------------------------

    def _trouble(self) -> None:
        if self._stuck_since is None:
            self._stuck_since = self._clock()

    def unreachable_for(self) -> float:
        """Seconds Kafka has been failing to take data; 0.0 while it takes data."""
        since = self._stuck_since
        return 0.0 if since is None else max(1e-9, self._clock() - since)

    def _outage_message(self) -> str:
        return (
            f"Kafka has not taken data for {self.unreachable_for():.0f}s "
            f"(BRIDGE_PUBLISH__KAFKA_OUTAGE_S={self._cfg.kafka_outage_s:g}); "
            f"{len(self._kept)} records wait in the open transaction"
        )

    def _on_error(self, err: KafkaError) -> None:
        # librdkafka repeats connection errors every few seconds during an outage.
        now, name = time.monotonic(), err.name()
        if now - self._logged.get(name, -1e9) >= ERROR_LOG_EVERY_S or err.fatal():
            self._logged[name] = now
            log.warning("kafka.error", error=name, detail=err.str(), fatal=err.fatal())

    # -- shutdown ---------------------------------------------------------------------

    def abort(self) -> None:
        """Abandon the open transaction (we no longer lead) and the producer. Never raises."""
        if self._kept:
            self._n["records_abandoned"] += len(self._kept)
            log.warning("publish.abandoned", records=len(self._kept), state=self._state)
        if self._producer is not None and self._state is not FENCED:
            try:
                self._producer.abort_transaction(5.0)
                self._note_abort()
            except KafkaException as exc:
                log.warning("publish.abort_failed", error=exc.args[0].name())
        self._kept.clear()
        self._txn_stamps.clear()
        self._drop_producer()
        self._state = IDLE
        self._stuck_since = None  # a standby gives Kafka nothing, so Kafka refuses nothing

    def close(self, timeout: float) -> None:
        """Commit what is open if possible, else abort; never raises."""
        if self._producer is None and not self._kept:
            self._state, self._stuck_since = IDLE, None
            return
        deadline = time.monotonic() + timeout
        if self._state is not FENCED:
            self._state = PENDING
            try:
                while not self._attempt(min(STEP_S, max(0.1, deadline - time.monotonic()))):
                    if time.monotonic() >= deadline:
                        break
            except (PublishError, KafkaException) as exc:
                log.warning("publish.close_failed", error=str(exc))
        if self._state is OPEN and self._producer is not None:
            self._producer.flush(max(0.0, deadline - time.monotonic()))
            self._drop_producer()
            self._state = IDLE
        else:
            self.abort()

    def _drop_producer(self) -> None:
        producer, self._producer, self._produce = self._producer, None, None
        if producer is not None:
            try:
                producer.purge()
                producer.flush(0)
            except (KafkaException, RuntimeError):
                pass
