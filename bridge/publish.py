"""Live Stream records into Kafka, exactly once, through Kafka transactions.

One :class:`Publisher` per replica. ``begin`` makes a transactional producer (its
``init_transactions`` fences any older writer with the same ``transactional.id``), seeds
the dedupe window from the tail of the hits topic and opens a transaction.
``publish_many`` turns each record into one message (value untouched) or one dead-letter
message, in the same transaction; ``maybe_commit`` commits on time or size. The
transactions themselves, kept messages, replays after an abort and outage handling, are
:class:`bridge.transactions.TransactionalWriter`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from confluent_kafka import KafkaException

from bridge.config import KafkaSettings, PublishSettings
from bridge.dedupe import HitIdWindow, hit_id_key, hit_id_text
from bridge.election.base import Fencing
from bridge.errors import PublishError
from bridge.observability import EventLog, Metrics
from bridge.tail import read_hit_ids
from bridge.topics import MESSAGE_MAX_BYTES, Probe, ensure_topics, topic_message_limit
from bridge.transactions import OPEN, TXN_MAX_BYTES, Header, TransactionalWriter

__all__ = ["Fencing", "Publisher"]

log = EventLog("bridge.publish")

# Seeding reads 45-70k ids/s of 1.8 KB hits on the 2-core test machine: 10k hits/s over the
# default 300 s (3M ids) takes 45-70 s. A read that stalls ends sooner (tail.STALL_S).
SEED_TIMEOUT_S = 300.0
DLQ_HEAD_BYTES = 64 * 1024  # how much of an oversized record the dead-letter topic keeps
SAMPLE_EVERY = 16  # publish latency is observed on every 16th record

_loads, _JSONError = orjson.loads, orjson.JSONDecodeError
_U64 = (1 << 64) - 1


class Publisher(TransactionalWriter):
    """Records in, Kafka messages out; one open transaction at a time (see module doc)."""

    def __init__(
        self,
        kafka: KafkaSettings,
        publish: PublishSettings,
        metrics: Metrics,
        *,
        report_suite: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(kafka, publish, metrics, clock=clock)
        self._topic, self._dlq = kafka.topic, kafka.dlq_topic
        self._suite = report_suite
        self._visitor_key = publish.key == "visitor"
        self._probe = Probe(kafka)
        self._window: HitIdWindow | None = None
        self._seq = 0
        # The received-at header of the last read time (every record of a chunk shares it).
        self._ms_for: tuple[float, Header] = (-1.0, ("received-at", ""))
        self._suite_header: Header = ("report-suite", "")
        self._n |= {
            "records_deduplicated": 0,
            "dedupe_seeded": 0,
            "dedupe_seed_partitions_failed": 0,
        }
        self._retry_id: tuple[int, int] | None = None  # see _send_hit
        metrics.dedupe_window_capacity.set(max(0, publish.dedupe_window))
        metrics.dedupe_window_ids.set_function(self._window_ids)

    # -- set-up ---------------------------------------------------------------------------

    def ensure_topics(self) -> None:
        ensure_topics(self._kafka, timeout=max(30.0, self._cfg.kafka_outage_s))

    def reachable(self, timeout: float) -> bool:
        return self._probe.reachable(timeout)

    def begin(self, fencing: Fencing | None) -> None:
        """Fence older writers, seed the dedupe window, open a transaction."""
        self._start(fencing)
        self._retry_id = None
        limit = topic_message_limit(self._kafka, self._topic)
        if limit is not None:  # leave room for the batch and record framing
            self._max_bytes = max(1000, min(MESSAGE_MAX_BYTES, limit - 512))
        try:
            self._new_producer(deadline=time.monotonic() + max(30.0, self._cfg.kafka_outage_s))
        except PublishError:
            self._trouble()  # a leader that cannot start a writer: Kafka takes no data
            raise
        self._seed()
        self._open()

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
        started = time.monotonic()
        before = len(window)
        found = read_hit_ids(
            self._kafka,
            self._topic,
            window.seen_or_add,
            since_s=self._cfg.dedupe_seed_s,
            limit=capacity,
            timeout=SEED_TIMEOUT_S,
        )
        added = len(window) - before
        self._n["dedupe_seeded"] += added
        self._n["dedupe_seed_partitions_failed"] += len(found.failed)
        log.info(
            "publish.seeded",
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

    def publish_many(  # noqa: PLR0912, PLR0915 - inlined on purpose: the loop runs once per hit
        self, records: Sequence[bytes], received_at: float, start: int = 0
    ) -> None:
        """Take ``records[start:]`` in order, as :meth:`publish` would one by one.

        On ``PublishError`` the records before its ``resume_at`` were taken and the one at
        ``resume_at`` was not: call again with ``start=exc.resume_at``.
        """
        # The hot path: one JSON parse (it is also the validation), the id, key and header
        # rules inlined for the forms Live Stream sends (the general helpers in
        # bridge.dedupe handle the rest identically), one produce. Nothing else is
        # allocated per record.
        window, kept, topic, stamps = self._window, self._kept, self._topic, self._txn_stamps
        visitor_key, default_suite = self._visitor_key, self._suite
        last, stamp = self._ms_for
        if received_at != last:
            stamp = ("received-at", str(int(received_at * 1000)))
            self._ms_for = (received_at, stamp)
        resume_at = start
        try:
            for i in range(start, len(records)):
                resume_at = i
                record = records[i]
                if self._state is not OPEN:
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
                    and high[0] != "0"  # "0123" is not 123 (and "0" takes the general path)
                    and low[0] != "0"
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
                    headers: list[Header] = []
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
                        key = hit_id_text(vh, vl) or hit_id_text(
                            get("mcVisIdHigh"), get("mcVisIdLow")
                        )
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
                if seq % SAMPLE_EVERY and kept:  # the first of a transaction: see _send
                    try:
                        self._produce(topic, record, key, headers=headers)
                    except (BufferError, KafkaException):
                        self._send_hit(topic, record, key, headers, high=n_high, low=n_low)
                    else:
                        kept.append((topic, record, key, tuple(headers), None))
                        self._txn_bytes += len(record)
                        stamps.append(get("receivedTimeGMT") or get("timeGMT"))
                else:
                    sampled = None if seq % SAMPLE_EVERY else received_at
                    if self._send_hit(
                        topic, record, key, headers, high=n_high, low=n_low, sampled_at=sampled
                    ):
                        stamps.append(get("receivedTimeGMT") or get("timeGMT"))
                if len(kept) >= self._max_records or self._txn_bytes >= TXN_MAX_BYTES:
                    resume_at = i + 1  # taken: if the commit fails, it must not come again
                    self.commit()
        except PublishError as exc:
            exc.resume_at = resume_at
            raise

    def _send_hit(
        self,
        topic: str,
        record: bytes,
        key: str | None,
        headers: list[Header],
        *,
        high: int,
        low: int,
        sampled_at: float | None = None,
    ) -> bool:
        """``_send`` for a hit whose id (if any, ``high`` >= 0) is already in the window;
        True when it went as a hit, False when it was dead-lettered as too large.

        If Kafka does not take the hit, the id is remembered: the caller offers the same
        record again after the outage, and that must not count as a replay (a loss).
        """
        try:
            taken = self._send(topic, record, key, headers, None, sampled_at=sampled_at)
        except PublishError:
            self._txn_hits -= 1  # counted by the caller, not taken
            self._retry_id = (high, low) if high >= 0 else None
            raise
        if not taken:  # too large for the topic: a dead letter instead of a hit
            self._txn_hits -= 1
            self._dead_letter(record, "oversized", headers[-1][1], len(record))
        return taken

    def _received_ms(self, received_at: float) -> str:
        # The pump stamps every record of a chunk with one time: format it once.
        last, stamp = self._ms_for
        if received_at != last:
            stamp = ("received-at", str(int(received_at * 1000)))
            self._ms_for = (received_at, stamp)
        return stamp[1]

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
        if self._send(self._dlq, value, None, headers, reason):
            self._txn_dlq[reason] += 1  # only once taken: a raise means it comes again

    # -- shutdown ---------------------------------------------------------------------------

    def abort(self) -> None:
        """Abandon the open transaction (we no longer lead) and the producer. Never raises."""
        super().abort()
        self._drop_window()

    def close(self, timeout: float) -> None:
        """Commit what is open if possible, else abort; never raises."""
        super().close(timeout)
        self._drop_window()

    def _window_ids(self) -> float:
        window = self._window  # read from the HTTP thread: one read, then a local
        return float(len(window)) if window is not None else 0.0

    @property
    def counters(self) -> dict[str, float]:
        out: dict[str, float] = {k: float(v) for k, v in self._n.items()}
        out["open_transaction_records"] = float(len(self._kept))
        producer = self._producer  # read from the HTTP thread
        out["producer_queue"] = float(len(producer)) if producer is not None else 0.0
        out["dedupe_window_ids"] = self._window_ids()
        out["unreachable_for_s"] = round(self.unreachable_for(), 3)
        return out
