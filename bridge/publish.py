"""Live Stream records into Kafka, exactly once, through Kafka transactions.

One :class:`Publisher` per replica. ``begin`` has its writer make a transactional producer
(its ``init_transactions`` fences any older writer with the same ``transactional.id``),
seeds the dedupe window from the tail of the hits topic (:mod:`bridge.seed`) and opens a
transaction. ``publish_many`` classifies each record (:mod:`bridge.classify`), drops
replays (:mod:`bridge.dedupe`) and hands one message per record, a hit (value untouched)
or a dead letter, to the writer (:mod:`bridge.transactions`), which owns the transaction:
kept messages, counts, commits, replays after an abort, outages. Nearly every hit takes
the native lane (``bridge/_lane.c``), which does all of that in C for the form Live
Stream sends; ``_publish_one`` is the definition it is tested against, and takes the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Producer

from bridge._lane import FULL as LANE_FULL
from bridge._lane import UNTAKEN as LANE_UNTAKEN
from bridge._lane import Lane
from bridge.batch import FULL, REFUSED, Added
from bridge.classify import (
    MISSING_HIT_ID,
    OVERSIZED,
    Headers,
    dead_letter,
    received_at_header,
    visitor_key,
)
from bridge.config import KafkaSettings, PublishSettings
from bridge.decode import OversizedRecord
from bridge.dedupe import HitIdWindow, hit_id_key, hit_id_text
from bridge.election.base import Fencing
from bridge.errors import PublishError
from bridge.fields import FieldReader, Fields
from bridge.kafkaclients import ProducerFactory
from bridge.kafkaerrors import PRODUCE_ERRORS
from bridge.logs import EventLog
from bridge.observability import Metrics
from bridge.seed import read_hit_ids
from bridge.topics import Probe, ensure_topics, topic_message_limit
from bridge.transactions import OPEN, TransactionalWriter

__all__ = ["Fencing", "Publisher"]

log = EventLog("bridge.publish")

# Seeding reads 45-70k ids/s of 1.8 KB hits on the 2-core test machine: 10k hits/s over the
# default 300 s (3M ids) takes 45-70 s. A read that stalls ends sooner (seed.STALL_S).
SEED_TIMEOUT_S = 300.0

_U64 = (1 << 64) - 1


def _hit_id(high: Any, low: Any) -> tuple[int, int, str] | None:
    """A record's hit id as (high, low, its hit-id header), or None when it has none."""
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
        and high[0] != "0"  # "0123" is not 123 (and "0" takes the general path)
        and low[0] != "0"
    ):
        return int(high), int(low), f"{high}:{low}"
    if type_h is int and type_l is int and 0 <= high <= _U64 and 0 <= low <= _U64:
        return high, low, f"{high}:{low}"
    ids = hit_id_key(high, low)
    return None if ids is None else (*ids, hit_id_text(high, low) or "")


def _visitor_key(doc: Fields) -> str | None:
    """bridge.classify.visitor_key, with the form Live Stream sends first."""
    vh, vl = doc.visIdHigh, doc.visIdLow
    if ((type(vh) is str and vh) or type(vh) is int) and (
        (type(vl) is str and vl) or type(vl) is int
    ):
        return f"{vh}:{vl}"
    return visitor_key(doc)


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
        producer_factory: ProducerFactory = Producer,
    ) -> None:
        self._writer = TransactionalWriter(
            kafka, publish, metrics, clock=clock, producer_factory=producer_factory
        )
        self._kafka, self._cfg, self._metrics = kafka, publish, metrics
        self._topic, self._dlq = kafka.topic, kafka.dlq_topic
        self._suite = report_suite
        self._visitor_key = publish.key == "visitor"
        self._probe = Probe(kafka)
        self._window: HitIdWindow | None = None
        self._lane: Lane | None = None  # for one term, like the window it checks
        self._seeded_to: dict[int, int] | None = None  # per partition, where the seed ended
        # The read whose first hit had its publish latency observed (each path observes
        # one hit per read: every hit's delivery report would cost a tenth of the pump).
        self._sampled_at: float | None = None
        self._fields = FieldReader()
        # The received-at header value of the last read time (a chunk's records share it).
        self._ms_for: tuple[float, str] = (-1.0, "")
        self._n = {
            "records_deduplicated": 0,
            "dedupe_seeded": 0,
            "dedupe_seed_partitions_failed": 0,
        }
        # A hit whose id went into the window but Kafka did not take: offered again after
        # the outage, it is not a replay (dropping it would lose it).
        self._retry_id: tuple[int, int] | None = None
        metrics.dedupe_window_capacity.set(max(0, publish.dedupe_window))
        metrics.dedupe_window_ids.set_function(self._window_ids)

    # -- set-up ---------------------------------------------------------------------------

    def ensure_topics(self) -> None:
        ensure_topics(self._kafka, timeout=max(30.0, self._cfg.kafka_outage_s))

    def reachable(self, timeout: float) -> bool:
        return self._probe.reachable(timeout)

    def begin(self, fencing: Fencing | None) -> None:
        """Fence older writers, seed the dedupe window, open a transaction."""
        self._retry_id = None
        self._writer.start(fencing, topic_message_limit(self._kafka, self._topic))
        self._seed()
        parse, object_type = self._fields.validator
        self._lane = Lane(
            parse,
            object_type,
            self._window,
            self._topic,
            self._visitor_key,
            self._suite,
            PRODUCE_ERRORS,
        )
        self._writer.open()

    def _drop_window(self) -> None:
        # The window is only right for one term (begin() seeds a new one): free ~114 MB now.
        self._lane = None
        if self._window is not None:
            self._window.close()
            self._window = None

    def top_up(self) -> None:
        """Just before the term's first connection: add what was committed since the
        seed (by other slots' holders while this one waited its grace and agreement),
        which Live Stream may resend here when visitors move between connections."""
        if self._window is not None and self._cfg.dedupe_seed and self._seeded_to is not None:
            self._read_ids(self._window, "publish.seed_topped_up")

    def _seed(self) -> None:
        self._drop_window()
        self._seeded_to = None
        capacity = self._cfg.dedupe_window
        if capacity <= 0:
            return
        window = self._window = HitIdWindow(capacity)
        if self._cfg.dedupe_seed:
            self._read_ids(window, "publish.seeded")

    def _read_ids(self, window: HitIdWindow, event: str) -> None:
        capacity = self._cfg.dedupe_window
        started = time.monotonic()
        before = len(window)
        found = read_hit_ids(
            self._kafka,
            self._topic,
            window.seen_or_add,
            since_s=self._cfg.dedupe_seed_s,
            limit=capacity,
            timeout=SEED_TIMEOUT_S,
            after=self._seeded_to,
        )
        self._seeded_to = {**(self._seeded_to or {}), **found.ends}
        added = len(window) - before
        self._n["dedupe_seeded"] += added
        self._n["dedupe_seed_partitions_failed"] += len(found.failed)
        log.info(
            event,
            ids=added,
            read=found.ids,
            partitions=len(found.complete),
            failed=sorted(found.failed),
            seconds=round(time.monotonic() - started, 3),
        )

    # -- the hot path -----------------------------------------------------------------------

    def publish(self, record: bytes, received_at: float) -> None:
        """Take one record: published, dead-lettered or (a replay) dropped. See module doc."""
        self.publish_many((record,), received_at)

    def publish_many(self, records: Sequence[bytes], received_at: float, start: int = 0) -> None:
        """Take ``records[start:]`` in order, as :meth:`publish` would one by one.

        On ``PublishError`` the records before its ``resume_at`` were taken and the one at
        ``resume_at`` was not: call again with ``start=exc.resume_at``.
        """
        # The native lane (bridge/_lane.c, through the writer's take) takes the form nearly
        # every hit has; it stops at any other, which _publish_one (the definition) takes.
        last, received_ms = self._ms_for
        if received_at != last:
            received_ms = received_at_header(received_at)[1]
            self._ms_for = (received_at, received_ms)
        lane, writer, n = self._lane, self._writer, len(records)
        i = resume_at = start
        try:
            while i < n:
                if lane is not None:
                    i, stop, untaken = writer.take(lane, records, i, received_ms, received_at)
                    if stop == LANE_FULL:
                        resume_at = i  # taken: if the commit fails, they must not come again
                        writer.commit()
                        continue
                    if i >= n:
                        break
                    if stop == LANE_UNTAKEN:
                        self._retry_id = untaken  # in the window, not taken: see _retry_id
                resume_at = i
                if self._publish_one(records[i], received_ms, received_at) is FULL:
                    resume_at = i + 1
                    writer.commit()
                i += 1
        except PublishError as exc:
            exc.resume_at = resume_at
            raise

    def _publish_one(self, record: bytes, received_ms: str, received_at: float) -> Added | None:
        """One record published, dead-lettered or dropped (None: a replay); the writer's
        answer. The rules of bridge.classify, inlined for the forms Live Stream sends (its
        helpers handle the rest identically); the headers go as a dict (confluent-kafka
        converts a dict faster than a list of pairs)."""
        writer = self._writer
        if writer.state is not OPEN:
            writer.settle()
        if type(record) is OversizedRecord:
            return self._dead_letter(record, OVERSIZED, received_ms, record.size)
        doc = self._fields.read(record)
        if isinstance(doc, str):  # not JSON, not an object
            return self._dead_letter(record, doc, received_ms)
        ids = _hit_id(doc.hitIdHigh, doc.hitIdLow)
        if ids is None:
            if self._cfg.require_hit_id:
                return self._dead_letter(record, MISSING_HIT_ID, received_ms)
            n_high, n_low, text = -1, -1, None
        else:
            n_high, n_low, text = ids
            window = self._window
            if window is not None and window.seen_or_add(n_high, n_low):
                if self._retry_id != (n_high, n_low):
                    self._n["records_deduplicated"] += 1
                    self._metrics.records_deduplicated.inc()
                    return None
                self._retry_id = None  # offered again after an outage: not a replay
        key = _visitor_key(doc) if self._visitor_key else None
        suite = doc.reportSuite or self._suite
        # One dict per message, in the order consumers see: hit-id, report-suite,
        # received-at (the first two only when there is one).
        headers: Headers = {} if text is None else {"hit-id": text}
        if suite:
            headers["report-suite"] = suite if type(suite) is str else str(suite)
        headers["received-at"] = received_ms
        sampled_at = None if received_at == self._sampled_at else received_at
        self._sampled_at = received_at
        try:
            added = writer.add(
                self._topic,
                record,
                key,
                headers,
                None,
                doc.receivedTimeGMT or doc.timeGMT,
                sampled_at,
            )
        except PublishError:
            # Its id is in the window now: see _retry_id.
            self._retry_id = (n_high, n_low) if n_high >= 0 else None
            raise
        if added is REFUSED:  # too large for the topic: a dead letter instead
            return self._dead_letter(record, OVERSIZED, received_ms, len(record))
        return added

    def _dead_letter(
        self, record: bytes, reason: str, received_ms: str, size: int | None = None
    ) -> Added:
        value, headers = dead_letter(record, reason, received_ms, self._writer.max_bytes, size)
        return self._writer.add(self._dlq, value, None, dict(headers), reason)

    # -- transactions -----------------------------------------------------------------------

    def maybe_commit(self) -> None:
        """Commit when due; one bounded attempt only, so the caller stays responsive."""
        self._writer.maybe_commit()

    def commit(self) -> None:
        """Commit the open transaction now (waits through retriable errors)."""
        self._writer.commit()

    def unreachable_for(self) -> float:
        """Seconds Kafka has been failing to take data; 0.0 while it takes data."""
        return self._writer.unreachable_for()

    # -- shutdown ---------------------------------------------------------------------------

    def abort(self) -> None:
        """Abandon the open transaction (we no longer lead) and the producer. Never raises."""
        self._writer.abort()
        self._drop_window()

    def close(self, timeout: float) -> None:
        """Commit what is open if possible, else abort; never raises."""
        self._writer.close(timeout)
        self._drop_window()

    def _window_ids(self) -> float:
        window = self._window  # read from the HTTP thread: one read, then a local
        return float(len(window)) if window is not None else 0.0

    @property
    def counters(self) -> dict[str, float]:
        writer = self._writer
        out = writer.totals()
        out.update((k, float(v)) for k, v in self._n.items())
        out["open_transaction_records"] = float(writer.open_records())
        out["producer_queue"] = float(writer.producer_queue())
        out["dedupe_window_ids"] = self._window_ids()
        out["unreachable_for_s"] = round(writer.unreachable_for(), 3)
        return out
