"""The transactional writer: messages into Kafka transactions, never losing what it took.

:class:`TransactionalWriter` knows Kafka transactions and nothing of Live Stream. The
publisher hands it each message through ``add``, or most hits at once (``take``). The writer
alone owns the kept messages (every message of the open transaction, kept until it
commits, so an aborted transaction is replayed, never lost), what they count and the
transaction's state machine. Errors are acted on as :func:`bridge.kafkaerrors.classify_error`
says they mean (confluent-kafka's transactional pattern); after a fatal error in a commit,
:mod:`bridge.outcome` finds out whether it committed before anything is replayed.

Outages: ``maybe_commit`` blocks one short step at most, so the caller keeps running and
watches ``unreachable_for()``; ``add`` and ``commit`` wait (back-pressure), then give up with
``PublishError`` after ``publish.kafka_outage_s``, not taking the message (taken ones stay).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from bridge._lane import GENERAL, Lane
from bridge.batch import FULL, REFUSED, TAKEN, TXN_MAX_BYTES, Added, Batch
from bridge.classify import Headers
from bridge.config import KafkaSettings, PublishSettings
from bridge.election.base import Fencing
from bridge.errors import FencedError, KafkaSetupError, PublishError
from bridge.kafkaclients import (
    MESSAGE_MAX_BYTES,
    ErrorLog,
    ProducerFactory,
    bounded,
    discard,
    fatal_error,
    init_transactions,
    producer_config,
    replay,
)
from bridge.kafkaerrors import TOO_LARGE_CODES, Meaning, classify_error, credentials_problem
from bridge.logs import EventLog
from bridge.observability import Metrics
from bridge.outcome import CommitOutcome, Progress

__all__ = ["IDLE", "OPEN", "TransactionalWriter"]

log = EventLog("bridge.publish")

STEP_S = 2.0  # longest single blocking Kafka call made from maybe_commit()
POLL_EVERY_S = 0.05  # how often maybe_commit() serves the producer's events
MAX_REPLAYS = 5  # aborts or producer rebuilds in a row before giving up loudly
ERROR_LOG_EVERY_S = 30.0

# The writer's states; ``state`` holds one of these very objects (compared with ``is``).
OPEN, PENDING, IDLE, FENCED = "open", "pending", "idle", "fenced"
_COUNTERS = (
    *("records_published", "records_dead_lettered", "records_abandoned", "producers_created"),
    *("transactions_committed", "transactions_aborted"),
)
_RENEW_WAIT_S = 15.0  # how long a moved generation waits for the election to renew it


class TransactionalWriter:
    """Messages into Kafka transactions, kept until committed (see module doc).

    ``state`` (OPEN, PENDING, IDLE or FENCED) is for the caller to read, never to set:
    unless it is OPEN, call :meth:`settle` before :meth:`add`. ``max_bytes`` is the largest
    message the producer takes (below the topic's limit).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        publish: PublishSettings,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        producer_factory: ProducerFactory = Producer,
    ) -> None:
        self._kafka, self._cfg, self._metrics = kafka, publish, metrics
        self._clock = clock
        self._make_producer = producer_factory
        self._progress = Progress(clock)
        self._outcome = CommitOutcome(kafka, metrics, self._progress)
        self._interval = publish.commit_interval_ms / 1000.0
        self.max_bytes = MESSAGE_MAX_BYTES
        self.state = IDLE
        self._producer: Any = None
        self._produce: Any = None
        self._fencing: Fencing | None = None
        self._generation: object | None = None  # group metadata sent with the open transaction
        self._batch = Batch(publish.commit_max_records)
        self._need_abort = self._need_begin = self._need_replay = self._offsets_sent = False
        self._failures = 0
        self._n = dict.fromkeys(_COUNTERS, 0)
        self._polled_at = float("-inf")
        self._error_log = ErrorLog(log, ERROR_LOG_EVERY_S)
        metrics.kafka_unreachable.set_function(self.unreachable_for)
        metrics.committed_hits.writing = lambda: self.state is not IDLE  # begun, not ended

    # -- a term -----------------------------------------------------------------------

    def start(self, fencing: Fencing | None, message_limit: int | None) -> None:
        """Forget the last term's transaction, then make a producer: its init_transactions
        fences older writers with our transactional.id. ``message_limit``: the topic's
        ``max.message.bytes`` when known. :meth:`open` opens the first transaction."""
        self._abandon()  # if the caller skipped close()/abort()
        self._drop_producer()
        self._failures = 0
        self._fencing = fencing
        self._need_abort = self._need_replay = self._offsets_sent = False
        self._outcome.forget()
        if message_limit is not None:  # leave room for the batch and record framing
            self.max_bytes = max(1000, min(MESSAGE_MAX_BYTES, message_limit - 512))
        try:
            self._new_producer(deadline=time.monotonic() + max(30.0, self._cfg.kafka_outage_s))
        except PublishError:
            self._progress.trouble()  # a leader that cannot start a writer: Kafka takes no data
            raise

    def open(self) -> None:
        """Open the first transaction of a term (after :meth:`start`)."""
        try:
            self._begin_transaction()
        except KafkaException as exc:
            self.state = PENDING
            self._fail(exc.args[0], "begin_transaction")
        else:
            self.state = OPEN
        self._progress.since = None

    def _new_producer(self, deadline: float) -> None:
        conf = producer_config(self._kafka, self._cfg.compression, self._error_log, self.max_bytes)
        producer = init_transactions(self._make_producer(conf), self._kafka, deadline)
        self._producer, self._produce = producer, producer.produce
        self._n["producers_created"] += 1
        self._need_begin = True

    # -- adding -----------------------------------------------------------------------

    def take(
        self, lane: Lane, records: Sequence[bytes], start: int, received_ms: str, at: float
    ) -> tuple[int, int, tuple[int, int]]:
        """:meth:`Batch.take` while the transaction is open and has its first message (which
        asks for a delivery report to mark the transaction: it comes through :meth:`add`)."""
        if self.state is not OPEN or not self._batch:
            return start, GENERAL, (0, 0)
        return self._batch.take(
            lane, records, start, self._produce, self._outcome.report, received_ms, at
        )

    def add(  # noqa: PLR0917 - the message's parts, as the publisher has them
        self,
        topic: str,
        value: bytes,
        key: str | None,
        headers: Headers,
        reason: str | None = None,
        stamp: object = None,
        sampled_at: float | None = None,
    ) -> Added:
        """Produce one message into the open transaction and keep it; waits while the
        producer is full, ``PublishError`` after the outage limit (then it was not taken).

        ``reason`` None: a hit (``stamp`` its timestamp for the freshness metrics); else a
        dead letter of that reason. ``headers`` is kept as it is: the caller must not
        change it afterwards. ``sampled_at``: the receive time whose publish latency
        the delivery report observes. A hit too large for the topic is ``REFUSED``.
        """
        batch = self._batch
        if not self._send(topic, value, key, headers, reason, sampled_at):
            return REFUSED
        kept = batch.kept
        if not kept:
            batch.started = self._clock()
        kept.append((topic, value, key, reason))
        batch.headers.append(headers)
        size = batch.bytes = batch.bytes + len(value)
        if reason is None:
            batch.hits += 1
            batch.stamps.append(stamp)
        else:
            batch.dlq[reason] += 1  # only once taken: a raise means it comes again
        return FULL if len(kept) >= batch.max_records or size >= TXN_MAX_BYTES else TAKEN

    def _send(  # noqa: PLR0917 - add()'s message, as it came
        self,
        topic: str,
        value: bytes,
        key: str | None,
        headers: Headers,
        reason: str | None,
        sampled_at: float | None,
    ) -> bool:
        """Produce, waiting for room and recovering from errors; False: a hit too large for
        the topic (not taken). True after a fatal or abortable error too: the message is
        kept, and re-produced by the new producer or after the abort."""
        cb = None
        if sampled_at is not None or not self._batch:  # the first one marks the transaction
            cb = self._outcome.report(sampled_at)
        while True:
            try:
                if cb is None:
                    self._produce(topic, value, key, headers=headers)
                else:
                    self._produce(topic, value, key, headers=headers, on_delivery=cb)
                return True
            except BufferError:
                try:
                    self._wait_for_room()
                except KafkaException as exc:  # poll() raises fatal errors, a fence included
                    self._fail(exc.args[0], "produce")  # FencedError, or a new producer
                    return True
            except KafkaException as exc:
                err = fatal_error(self._producer, exc.args[0])
                if err.code() in TOO_LARGE_CODES and reason is None:
                    return False  # the caller dead-letters it
                self._fail(err, "produce")  # raises unless recoverable
                if err.fatal() or err.txn_requires_abort():
                    return True
                self._wait_for_room()

    def _wait_for_room(self) -> None:
        """The producer cannot take the record yet: serve it; give up only after an outage."""
        self._progress.trouble()  # cleared by the next delivery report
        self._progress.give_up_after(self._cfg.kafka_outage_s, len(self._batch))
        self._producer.poll(0.05)

    # -- transactions -----------------------------------------------------------------

    def maybe_commit(self) -> None:
        """Commit when due; one bounded attempt only, so the caller stays responsive."""
        if self.state is IDLE or self.state is FENCED:
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
        if self.state is PENDING:
            self._attempt(STEP_S)
        elif self._batch and now - self._batch.started >= self._interval:
            self.state = PENDING
            self._attempt(STEP_S)

    def commit(self) -> None:
        """Commit the open transaction now (waits through retriable errors, see module doc)."""
        if self.state is OPEN:
            if not self._batch:
                return
            self.state = PENDING
        self.settle()

    def settle(self) -> None:
        """Finish the pending commit, waiting up to the outage limit."""
        if self.state is FENCED:
            raise FencedError("this writer was fenced; begin() again after re-election")
        if self.state is IDLE:
            raise PublishError("the publisher is not begun")
        while not self._attempt(STEP_S):
            self._progress.give_up_after(self._cfg.kafka_outage_s, len(self._batch))

    def _attempt(self, timeout: float) -> bool:
        """One pass of the commit state machine; True once committed (or nothing to commit)."""
        try:
            if self._producer is None:
                self._new_producer(deadline=time.monotonic() + timeout)
                self._need_replay, self._need_abort = bool(self._batch), False
            if self._outcome.already_committed(timeout, len(self._batch)):
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
            if self._batch:
                if self._fencing is not None and not self._offsets_sent:
                    self._send_offsets(timeout)
                self._outcome.committing = True  # from here on the outcome may be unknown
                with self._metrics.transaction_commit.time():  # failed calls too
                    bounded(lambda: producer.commit_transaction(timeout), timeout, "commit")
        except KafkaException as exc:
            self._fail(exc.args[0], "commit")
            return False
        self._committed()
        return True

    def _begin_transaction(self) -> None:
        self._producer.begin_transaction()
        self._outcome.new_transaction()
        self._need_begin = self._offsets_sent = False

    def _send_offsets(self, timeout: float) -> None:
        assert self._fencing is not None
        offsets = self._fencing.offsets()
        # librdkafka skips the offsets commit when no offset is valid, and then a stale
        # generation would go unnoticed.
        if not any(tp.offset >= 0 for tp in offsets):
            raise PublishError("the election gave no valid offset: the commit would not be fenced")
        self._generation = gen = self._fencing.group_metadata()
        send = self._producer.send_offsets_to_transaction
        bounded(lambda: send(offsets, gen, timeout), timeout, "send_offsets")
        self._offsets_sent = True

    def _committed(self) -> None:
        if self._batch:
            self._batch.committed(self._metrics, self._n)
            self._need_begin = True
        if self._need_begin:
            self._begin_transaction()
        self.state, self._failures, self._progress.since = OPEN, 0, None

    def _note_abort(self) -> None:
        self._outcome.committing = False
        self._need_abort, self._need_begin, self._need_replay = False, True, True
        self._metrics.transactions.labels(result="aborted").inc()
        self._n["transactions_aborted"] += 1

    def _replay(self) -> None:
        """Re-produce every kept record into the new transaction, in the original order."""
        try:
            replay(self._producer, self._batch.messages(), self._outcome.report(None))
        except KafkaException:
            self._need_abort = True  # a half replayed transaction must not be committed
            raise
        self._need_replay = False

    def _fail(self, err: KafkaError, what: str) -> None:
        """Act on a Kafka error as its meaning says: raise, or schedule the recovery."""
        meaning = classify_error(err, self._still_leading)
        if meaning is Meaning.RENEWED:
            # A standby joined and the election renewed our metadata: the same records go
            # again in a new transaction.
            log.info("publish.generation_renewed", during=what, error=err.name())
            self.state, self._need_abort = PENDING, True
            return
        if meaning is Meaning.FENCED:
            self.state = FENCED
            log.warning("publish.fenced", during=what, error=err.name(), records=len(self._batch))
            raise FencedError(f"{what}: {err.name()}: {err.str()}")
        if meaning is Meaning.DENIED:
            # A denied topic is not named in the error: name every topic the transaction used.
            topics = self._batch.topics(first=self._kafka.topic)
            raise KafkaSetupError(credentials_problem(self._kafka, err, topics=topics) or what)
        self.state = PENDING
        if meaning is Meaning.FATAL:
            log.error("publish.producer_fatal", during=what, error=err.name(), detail=err.str())
            self._count_failure(err)
            self._outcome.fatal(self._producer, len(self._batch))
            self._drop_producer()
            return
        if meaning is Meaning.ABORT:
            log.warning("publish.transaction_abort", during=what, error=err.name())
            self._count_failure(err)
            self._need_abort = True
            return
        if meaning is Meaning.RETRY:
            self._progress.trouble()
            return
        raise PublishError(f"{what} failed: {err.name()}: {err.str()}")

    def _still_leading(self) -> bool:
        if self._fencing is None or self._generation is None:
            return False
        return self._fencing.wait_renewed(self._generation, _RENEW_WAIT_S)

    def _count_failure(self, err: KafkaError) -> None:
        self._progress.trouble()
        self._failures += 1
        if self._failures > MAX_REPLAYS:
            raise PublishError(f"transaction failed {self._failures} times in a row: {err.str()}")

    # -- health and counts ------------------------------------------------------------

    def unreachable_for(self) -> float:
        """Seconds Kafka has been failing to take data; 0.0 while it takes data."""
        return self._progress.unreachable_for()

    def totals(self) -> dict[str, float]:
        """What this writer committed, abandoned and made since it was created."""
        return {k: float(v) for k, v in self._n.items()}

    def open_records(self) -> int:
        """Messages in the open transaction (kept until it commits)."""
        return len(self._batch)

    def producer_queue(self) -> int:
        producer = self._producer  # read from the HTTP thread: one read, then a local
        return len(producer) if producer is not None else 0

    # -- shutdown ---------------------------------------------------------------------

    def abort(self) -> None:
        """Abandon the open transaction (we no longer lead) and the producer. Never raises."""
        self._abandon()
        if self._producer is not None and self.state is not FENCED:
            try:
                self._producer.abort_transaction(5.0)
                self._note_abort()
            except KafkaException as exc:
                log.warning("publish.abort_failed", error=exc.args[0].name())
        self._drop_producer()
        self.state = IDLE
        self._progress.since = None  # a standby gives Kafka nothing, so Kafka refuses nothing

    def close(self, timeout: float) -> None:
        """Commit what is open if possible, else abort; never raises."""
        if self._producer is None and not self._batch:
            self.state, self._progress.since = IDLE, None
            return
        deadline = time.monotonic() + timeout
        if self.state is not FENCED:
            self.state = PENDING
            try:
                while not self._attempt(min(STEP_S, max(0.1, deadline - time.monotonic()))):
                    if time.monotonic() >= deadline:
                        break
            except (PublishError, KafkaException) as exc:
                log.warning("publish.close_failed", error=str(exc))
        if self.state is OPEN and self._producer is not None:
            self._producer.flush(max(0.0, deadline - time.monotonic()))
            self._drop_producer()
            self.state = IDLE
        else:
            self.abort()

    def _abandon(self) -> None:
        if self._batch:
            self._n["records_abandoned"] += len(self._batch)
            log.warning("publish.abandoned", records=len(self._batch), state=self.state)
        self._batch.clear()

    def _drop_producer(self) -> None:
        producer, self._producer, self._produce = self._producer, None, None
        discard(producer)
