"""Live Stream records into Kafka, exactly once, through Kafka transactions.

One :class:`Publisher` per replica. ``begin`` makes a transactional producer (its
``init_transactions`` fences any older writer with the same ``transactional.id``), seeds
the dedupe window from the tail of the hits topic and opens a transaction. ``publish``
turns each record into one message (value untouched) or one dead-letter message, in the
same transaction; ``maybe_commit`` commits on time or size. Every record of the open
transaction is kept until it commits, so an aborted transaction is replayed, never lost.

Errors follow confluent-kafka's transactional pattern: retriable -> call again; abortable
-> abort, begin, re-produce the kept records; fenced (another producer, or a stale
election generation on the offsets commit) -> ``FencedError`` at once; other fatal
errors -> a new producer, ``init_transactions``, re-produce.

Outages: ``maybe_commit`` never blocks longer than one short step, so the caller keeps
running and watches ``unreachable_for()``; ``publish`` and ``commit`` wait (back-pressure)
and give up with ``PublishError`` after ``publish.kafka_outage_s`` without taking the
record (nothing already taken is dropped: the next call resumes).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer

from bridge.config import KafkaSettings, PublishSettings
from bridge.dedupe import HitIdWindow, hit_id_key, hit_id_text
from bridge.election.base import Fencing
from bridge.errors import FencedError, KafkaSetupError, PublishError
from bridge.observability import EventLog, Metrics
from bridge.topics import (
    FENCED_CODES,
    MESSAGE_MAX_BYTES,
    TOO_LARGE_CODES,
    Probe,
    credentials_problem,
    ensure_topics,
    producer_config,
    read_hit_ids,
    topic_message_limit,
)

__all__ = ["SEED_MAX_RECORDS", "Fencing", "Publisher"]

log = EventLog("bridge.publish")

SEED_MAX_RECORDS = 200_000  # hit ids read back from the topic's tail at begin(), all partitions
SEED_TIMEOUT_S = 60.0
DLQ_HEAD_BYTES = 64 * 1024  # how much of an oversized record the dead-letter topic keeps
TXN_MAX_BYTES = 16 * 1024 * 1024  # commit early when the open transaction holds this much
SAMPLE_EVERY = 16  # latency and freshness are observed on every 16th record
STEP_S = 2.0  # longest single blocking Kafka call made from maybe_commit()
MAX_REPLAYS = 5  # aborts or producer rebuilds in a row before giving up loudly
ERROR_LOG_EVERY_S = 30.0

_OPEN, _PENDING, _IDLE, _FENCED = "open", "pending", "idle", "fenced"
_COUNTERS = (
    *("records_published", "records_deduplicated", "records_dead_lettered", "records_abandoned"),
    *("transactions_committed", "transactions_aborted", "producers_created", "dedupe_seeded"),
)
_loads, _JSONError = orjson.loads, orjson.JSONDecodeError
_U64 = (1 << 64) - 1
# A rejected offsets commit that may only mean "a standby joined": see _fail.
_GENERATION_MOVED = frozenset({KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS})
_RENEW_WAIT_S = 15.0

# One kept message: topic, value, key, headers, dead-letter reason (None: a hit). Tuples
# only: a kept message holds no list or dict, so the cyclic GC untracks it the first time it
# sees it instead of promoting thousands of them per transaction to the oldest generation
# (whose collections would then walk the whole heap every few transactions).
_Header = tuple[str, str]
_Kept = tuple[str, bytes, str | None, tuple[_Header, ...], str | None]


class Publisher:
    """Records in, Kafka messages out; one open transaction at a time (see module doc)."""

    def __init__(
        self,
        kafka: KafkaSettings,
        publish: PublishSettings,
        metrics: Metrics,
        *,
        report_suite: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        seed_max_records: int = SEED_MAX_RECORDS,
    ) -> None:
        self._kafka, self._cfg, self._metrics = kafka, publish, metrics
        self._topic, self._dlq = kafka.topic, kafka.dlq_topic
        self._suite = report_suite
        self._clock = clock
        self._seed_max = seed_max_records
        self._visitor_key = publish.key == "visitor"
        self._interval = publish.commit_interval_ms / 1000.0
        self._probe = Probe(kafka)
        self._producer: Any = None
        self._produce: Any = None
        self._fencing: Fencing | None = None
        self._generation: object | None = None  # group metadata sent with the open transaction
        self._window: HitIdWindow | None = None
        self._state = _IDLE
        self._kept: list[_Kept] = []
        self._txn_bytes = 0
        self._txn_started = 0.0
        self._txn_hits = 0
        self._txn_dlq: Counter[str] = Counter()
        self._need_abort = self._need_begin = self._need_replay = self._offsets_sent = False
        self._failures = 0
        self._stuck_since: float | None = None
        self._seq = 0
        # The received-at header of the last read time (every record of a chunk shares it).
        self._ms_for: tuple[float, _Header] = (-1.0, ("received-at", ""))
        self._suite_header: _Header = ("report-suite", "")
        self._max_records = publish.commit_max_records
        self._n = dict.fromkeys(_COUNTERS, 0)
        self._logged: dict[str, float] = {}
        self._max_bytes = MESSAGE_MAX_BYTES
        self.resume_at = 0  # see publish_many
        self._retry_id: tuple[int, int] | None = None  # see _send_hit

    # -- set-up ---------------------------------------------------------------------------

    def ensure_topics(self) -> None:
        ensure_topics(self._kafka, timeout=max(30.0, self._cfg.kafka_outage_s))

    def reachable(self, timeout: float) -> bool:
        return self._probe.reachable(timeout)

    def begin(self, fencing: Fencing | None) -> None:
        """Fence older writers, seed the dedupe window, open a transaction."""
        if self._kept:  # the caller skipped close()/abort(): say what is dropped
            self._n["records_abandoned"] += len(self._kept)
            log.warning("publish.abandoned", records=len(self._kept), state=self._state)
        self._drop_producer()
        self._kept.clear()
        self._txn_bytes = self._txn_hits = self._failures = 0
        self._txn_dlq.clear()
        self._fencing = fencing
        self._need_abort = self._need_replay = self._offsets_sent = False
        self._retry_id = None
        limit = topic_message_limit(self._kafka, self._topic)
        if limit is not None:  # leave room for the batch and record framing
            self._max_bytes = max(1000, min(MESSAGE_MAX_BYTES, limit - 512))
        self._new_producer(deadline=time.monotonic() + max(30.0, self._cfg.kafka_outage_s))
        self._seed()
        try:
            self._producer.begin_transaction()
        except KafkaException as exc:
            self._state = _PENDING
            self._fail(exc.args[0], "begin_transaction")
        else:
            self._need_begin = False
            self._state = _OPEN
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

    def _drop_window(self) -> None:
        # The window is only right for one term (begin() seeds a new one): free ~114 MB now.
        if self._window is not None:
            self._window.close()
            self._window = None

    def _seed(self) -> None:
        self._drop_window()
        capacity = self._cfg.dedupe_window
        if capacity <= 0:
            return
        window = self._window = HitIdWindow(capacity)
        if not self._cfg.dedupe_seed:
            return
        limit = min(capacity, self._seed_max)
        started = time.monotonic()
        before = len(window)
        read_hit_ids(self._kafka, self._topic, limit, window.seen_or_add, timeout=SEED_TIMEOUT_S)
        added = len(window) - before
        self._n["dedupe_seeded"] += added
        log.info("publish.seeded", ids=added, seconds=round(time.monotonic() - started, 3))

    # -- the hot path -----------------------------------------------------------------------

    def publish(self, record: bytes, received_at: float) -> None:
        """Take one record: published, dead-lettered or (a replay) dropped. See module doc."""
        self.publish_many((record,), received_at)

    def publish_many(  # noqa: PLR0912, PLR0915 - inlined on purpose: the loop runs once per hit
        self, records: Sequence[bytes], received_at: float, start: int = 0
    ) -> None:
        """Take ``records[start:]`` in order, as :meth:`publish` would one by one.

        On ``PublishError`` the records before ``resume_at`` were taken and the one at
        ``resume_at`` was not: call again with ``start=resume_at``.
        """
        # The hot path: one JSON parse (it is also the validation), the id, key and header
        # rules inlined for the forms Live Stream sends (the general helpers in
        # bridge.dedupe handle the rest identically), one produce. Nothing else is
        # allocated per record.
        window, kept, topic = self._window, self._kept, self._topic
        visitor_key, default_suite = self._visitor_key, self._suite
        last, stamp = self._ms_for
        if received_at != last:
            stamp = ("received-at", str(int(received_at * 1000)))
            self._ms_for = (received_at, stamp)
        for i in range(start, len(records)):
            self.resume_at = i
            record = records[i]
            if self._state is not _OPEN:
                self._settle()
            if type(record) is not bytes and hasattr(record, "size"):
                self._dead_letter(record, "oversized", received_at, int(record.size))
                continue
            try:
                obj = _loads(record)
            except _JSONError:
                self._dead_letter(record, "not_json", received_at)
                continue
            if type(obj) is not dict:
                self._dead_letter(record, "not_object", received_at)
                continue
            get = obj.get
            high: Any = get("hitIdHigh")
            low: Any = get("hitIdLow")
            type_h, type_l = type(high), type(low)
            if (
                type_h is str
                and type_l is str
                and len(high) < 20  # up to 19 digits is always below 2**64
                and len(low) < 20
                and high.isdigit()
                and low.isdigit()
                and high.isascii()
                and low.isascii()
            ):
                n_high, n_low = int(high), int(low)
                text: str | None = f"{high}:{low}"
            elif type_h is int and type_l is int and 0 <= high <= _U64 and 0 <= low <= _U64:
                n_high, n_low = high, low
                text = f"{high}:{low}"
            else:
                text = None
                ids = hit_id_key(high, low)
                if ids is None:
                    if self._cfg.require_hit_id:
                        self._dead_letter(record, "missing_hit_id", received_at)
                        continue
                    n_high = n_low = -1
                else:
                    n_high, n_low = ids
            if n_high < 0:
                headers: list[_Header] = []
            else:
                if window is not None and window.seen_or_add(n_high, n_low):
                    if self._retry_id != (n_high, n_low):
                        self._n["records_deduplicated"] += 1
                        self._metrics.records_deduplicated.inc()
                        continue
                    self._retry_id = None  # offered again after an outage: not a replay
                headers = [("hit-id", text or hit_id_text(high, low) or "")]
            key = None
            if visitor_key:
                vh, vl = get("visIdHigh"), get("visIdLow")
                if ((type(vh) is str and vh) or type(vh) is int) and (
                    (type(vl) is str and vl) or type(vl) is int
                ):
                    key = f"{vh}:{vl}"
                else:
                    key = hit_id_text(vh, vl) or hit_id_text(get("mcVisIdHigh"), get("mcVisIdLow"))
            suite = get("reportSuite") or default_suite
            if suite:
                if type(suite) is not str:
                    suite = str(suite)
                suite_header = self._suite_header
                if suite != suite_header[1]:  # one report suite per stream: one shared header
                    suite_header = self._suite_header = ("report-suite", suite)
                headers.append(suite_header)
            headers.append(stamp)
            self._txn_hits += 1
            seq = self._seq = self._seq + 1
            if seq % SAMPLE_EVERY:
                try:
                    self._produce(topic, record, key, headers=headers)
                except (BufferError, KafkaException):
                    self._send_hit(topic, record, key, headers, high=n_high, low=n_low)
                else:
                    if not kept:
                        self._txn_started = self._clock()
                    kept.append((topic, record, key, tuple(headers), None))
                    self._txn_bytes += len(record)
            else:
                self._observe_freshness(get("receivedTimeGMT"), received_at)
                self._send_hit(
                    topic, record, key, headers, high=n_high, low=n_low, sampled_at=received_at
                )
            if len(kept) >= self._max_records or self._txn_bytes >= TXN_MAX_BYTES:
                self.resume_at = i + 1  # taken: if the commit fails, it must not come again
                self.commit()
        self.resume_at = len(records)

    def _send_hit(
        self,
        topic: str,
        record: bytes,
        key: str | None,
        headers: list[_Header],
        *,
        high: int,
        low: int,
        sampled_at: float | None = None,
    ) -> None:
        """``_send`` for a hit whose id (if any, ``high`` >= 0) is already in the window.

        If Kafka does not take the hit, the id is remembered: the caller offers the same
        record again after the outage, and that must not count as a replay (a loss).
        """
        try:
            self._send(topic, record, key, headers, None, sampled_at=sampled_at)
        except PublishError:
            self._txn_hits -= 1  # counted by the caller, not taken
            self._retry_id = (high, low) if high >= 0 else None
            raise

    def _received_ms(self, received_at: float) -> str:
        # The pump stamps every record of a chunk with one time: format it once.
        last, stamp = self._ms_for
        if received_at != last:
            stamp = ("received-at", str(int(received_at * 1000)))
            self._ms_for = (received_at, stamp)
        return stamp[1]

    def _observe_freshness(self, sent: object, received_at: float) -> None:
        with contextlib.suppress(TypeError, ValueError):
            self._metrics.hit_freshness.observe(max(0.0, received_at - float(sent)))  # type: ignore[arg-type]

    def _dead_letter(
        self, record: bytes, reason: str, received_at: float | str, size: int | None = None
    ) -> None:
        if not isinstance(received_at, str):
            received_at = self._received_ms(received_at)
        headers = [("reason", reason), ("received-at", received_at)]
        value = bytes(record)
        room = self._max_bytes - 2048  # whatever the reason, the DLQ message must fit
        if size is not None or len(value) > room:
            value = value[: min(DLQ_HEAD_BYTES, room) if size is not None else room]
            headers.append(("original-size", str(len(record) if size is None else size)))
        self._txn_dlq[reason] += 1
        self._send(self._dlq, value, None, headers, reason)

    def _send(
        self,
        topic: str,
        value: bytes,
        key: str | None,
        headers: list[tuple[str, str]],
        reason: str | None,
        *,
        sampled_at: float | None = None,
    ) -> None:
        cb = None if sampled_at is None else functools.partial(self._on_sampled, sampled_at)
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
                    self._txn_hits -= 1  # counted as a hit by the caller; dead-lettered instead
                    self._dead_letter(value, "oversized", headers[-1][1], len(value))
                    return
                self._fail(err, "produce")  # raises unless recoverable
                if err.fatal() or err.txn_requires_abort():
                    break  # kept below, re-produced after the abort / by the new producer
                self._wait_for_room()
        if not self._kept:
            self._txn_started = self._clock()
        self._kept.append((topic, value, key, tuple(headers), reason))
        self._txn_bytes += len(value)  # the caller commits when the transaction is full

    def _wait_for_room(self) -> None:
        """The producer cannot take the record yet: serve it; give up only after an outage."""
        self._trouble()  # cleared by the next delivery report
        if self.unreachable_for() > self._cfg.kafka_outage_s:
            raise PublishError(self._outage_message())
        self._producer.poll(0.05)

    # -- transactions ---------------------------------------------------------------------

    def maybe_commit(self) -> None:
        """Commit when due; one bounded attempt only, so the caller stays responsive."""
        if self._state is _IDLE or self._state is _FENCED:
            return
        producer = self._producer
        if producer is not None:
            try:
                producer.poll(0)  # raises a fatal error (a fence included) as KafkaException
            except KafkaException as exc:
                self._fail(exc.args[0], "poll")  # FencedError, or a new producer next time
                return
            self._metrics.producer_queue.set(len(producer))
        if self._state is _PENDING:
            self._attempt(STEP_S)
        elif self._kept and self._clock() - self._txn_started >= self._interval:
            self._state = _PENDING
            self._attempt(STEP_S)

    def commit(self) -> None:
        """Commit the open transaction now (waits through retriable errors, see module doc)."""
        if self._state is _OPEN:
            if not self._kept:
                return
            self._state = _PENDING
        self._settle()

    def _settle(self) -> None:
        """Finish the pending commit, waiting up to the outage limit."""
        if self._state is _FENCED:
            raise FencedError("this writer was fenced; begin() again after re-election")
        if self._state is _IDLE:
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
            producer = self._producer
            if self._need_abort:
                producer.abort_transaction(timeout)
                self._note_abort()
            if self._need_begin:
                producer.begin_transaction()
                self._need_begin, self._offsets_sent = False, False
            if self._need_replay:
                self._replay()
            if self._kept:
                if self._fencing is not None and not self._offsets_sent:
                    self._send_offsets(timeout)
                producer.commit_transaction(timeout)
        except KafkaException as exc:
            self._fail(exc.args[0], "commit")
            return False
        self._committed()
        return True

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
            self._kept.clear()
            self._txn_bytes = self._txn_hits = 0
            self._txn_dlq.clear()
            self._need_begin = True
        if self._need_begin:
            self._producer.begin_transaction()
            self._need_begin, self._offsets_sent = False, False
        self._state, self._failures, self._stuck_since = _OPEN, 0, None

    def _note_abort(self) -> None:
        self._need_abort, self._need_begin, self._need_replay = False, True, True
        self._metrics.transactions.labels(result="aborted").inc()
        self._n["transactions_aborted"] += 1

    def _replay(self) -> None:
        """Re-produce every kept record into the new transaction, in the original order."""
        produce, poll = self._producer.produce, self._producer.poll
        try:
            for topic, value, key, headers, _ in self._kept:
                while True:
                    try:
                        produce(topic, value, key, headers=list(headers))
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
            self._state, self._need_abort = _PENDING, True
            return
        if code in FENCED_CODES:
            self._state = _FENCED
            log.warning("publish.fenced", during=what, error=err.name(), records=len(self._kept))
            raise FencedError(f"{what}: {err.name()}: {err.str()}")
        problem = credentials_problem(self._kafka, err)
        if problem:
            raise KafkaSetupError(problem)
        self._state = _PENDING
        if err.fatal():
            log.error("publish.producer_fatal", during=what, error=err.name(), detail=err.str())
            self._count_failure(err)
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

    # -- health ---------------------------------------------------------------------------

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

    def _on_sampled(self, received_at: float, err: KafkaError | None, _msg: object) -> None:
        if err is None:
            self._stuck_since = None
            self._metrics.publish_latency.observe(max(0.0, time.time() - received_at))
        else:
            self._trouble()

    def _on_error(self, err: KafkaError) -> None:
        # librdkafka repeats connection errors every few seconds during an outage.
        now, name = time.monotonic(), err.name()
        if now - self._logged.get(name, -1e9) >= ERROR_LOG_EVERY_S or err.fatal():
            self._logged[name] = now
            log.warning("kafka.error", error=name, detail=err.str(), fatal=err.fatal())

    # -- shutdown ---------------------------------------------------------------------------

    def abort(self) -> None:
        """Abandon the open transaction (we no longer lead) and the producer. Never raises."""
        if self._kept:
            self._n["records_abandoned"] += len(self._kept)
            log.warning("publish.abandoned", records=len(self._kept), state=self._state)
        if self._producer is not None and self._state is not _FENCED:
            try:
                self._producer.abort_transaction(5.0)
                self._note_abort()
            except KafkaException as exc:
                log.warning("publish.abort_failed", error=exc.args[0].name())
        self._kept.clear()
        self._drop_producer()
        self._drop_window()
        self._state = _IDLE

    def close(self, timeout: float) -> None:
        """Commit what is open if possible, else abort; never raises."""
        if self._producer is None and not self._kept:
            self._drop_window()
            self._state = _IDLE
            return
        deadline = time.monotonic() + timeout
        if self._state is not _FENCED:
            self._state = _PENDING
            try:
                while not self._attempt(min(STEP_S, max(0.1, deadline - time.monotonic()))):
                    if time.monotonic() >= deadline:
                        break
            except (PublishError, KafkaException) as exc:
                log.warning("publish.close_failed", error=str(exc))
        if self._state is _OPEN and self._producer is not None:
            self._producer.flush(max(0.0, deadline - time.monotonic()))
            self._drop_producer()
            self._drop_window()
            self._state = _IDLE
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

    @property
    def counters(self) -> dict[str, float]:
        out: dict[str, float] = {k: float(v) for k, v in self._n.items()}
        out["open_transaction_records"] = float(len(self._kept))
        producer, window = self._producer, self._window  # read from the HTTP thread
        out["producer_queue"] = float(len(producer)) if producer is not None else 0.0
        out["dedupe_window_ids"] = float(len(window)) if window is not None else 0.0
        out["unreachable_for_s"] = round(self.unreachable_for(), 3)
        return out
