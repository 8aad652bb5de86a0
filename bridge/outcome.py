"""Whether a transaction committed when a fatal producer error interrupted its commit (the
error alone cannot say: EndTxn may have reached the coordinator, and the next
``init_transactions`` then completes that commit).

Each transaction gets a number; the first of its records (and every sampled one) is
produced with a delivery callback, and the first acknowledged one becomes the
transaction's *mark*, its (topic, partition, offset). After the fatal error the writer
makes a new producer (whose ``init_transactions`` settles the old transaction) and asks a
read_committed reader whether it sees the mark: if so, the transaction committed and its
kept records must not be replayed (they would be published twice, past the dedupe window).

:class:`CommitOutcome` is the writer's record of all that, fed by the delivery reports
(the writer holds one); :func:`committed_at` is the look-up. The same reports tell
:class:`Progress` whether Kafka takes data at all.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from bridge.config import KafkaSettings
from bridge.errors import PublishError
from bridge.kafkaclients import reader_config
from bridge.kafkaerrors import raise_if_reader_denied
from bridge.logs import EventLog
from bridge.observability import Metrics

__all__ = ["CHECK_TIMEOUT_S", "CommitOutcome", "Progress", "committed_at"]

log = EventLog("bridge.publish")

CHECK_TIMEOUT_S = 10.0  # longest wait for a read_committed answer after a fatal commit

Mark = tuple[str, int, int]


class Progress:
    """Since when Kafka has been failing to take data (``since`` None: it takes data).

    A refusal (a full producer, a failed call) starts the clock; a delivery report or a
    commit stops it.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.since: float | None = None

    def trouble(self) -> None:
        if self.since is None:
            self.since = self._clock()

    def unreachable_for(self) -> float:
        """Seconds Kafka has been failing to take data; 0.0 while it takes data."""
        since = self.since
        return 0.0 if since is None else max(1e-9, self._clock() - since)

    def give_up_after(self, outage_s: float, waiting: int) -> None:
        """Raise ``PublishError`` once Kafka has refused data for longer than ``outage_s``
        (``waiting``: the records that wait for it)."""
        if self.unreachable_for() > outage_s:
            raise PublishError(
                f"Kafka has not taken data for {self.unreachable_for():.0f}s "
                f"(BRIDGE_PUBLISH__KAFKA_OUTAGE_S={outage_s:g}); "
                f"{waiting} records wait in the open transaction"
            )


class CommitOutcome:
    """Delivery reports of the open transaction (its mark, publish latency, progress) and,
    after a fatal commit, the mark to look up.

    ``txn_no`` numbers the open transaction (delivery reports name the one they belong to);
    ``committing`` is set once ``commit_transaction`` was called for it.
    """

    def __init__(self, kafka: KafkaSettings, metrics: Metrics, progress: Progress) -> None:
        self._kafka, self._metrics, self._progress = kafka, metrics, progress
        self.txn_no = 0
        self.committing = False
        self._mark: Mark | None = None
        self._verify: Mark | None = None  # the mark to look up; None: nothing to ask

    def new_transaction(self) -> None:
        self.txn_no += 1
        self._mark, self.committing = None, False

    def forget(self) -> None:
        """A new term: whatever the last one left unknown is not this writer's to replay."""
        self._verify = None

    def report(self, received_at: float | None) -> Callable[[KafkaError | None, Any], None]:
        """An ``on_delivery`` callback for a record of the open transaction; ``received_at``
        (a sampled record) makes its delivery observe the publish latency."""
        return functools.partial(self._delivered, self.txn_no, received_at)

    def _delivered(
        self, txn_no: int, received_at: float | None, err: KafkaError | None, msg: Any
    ) -> None:
        if err is None:
            self._progress.since = None
            if received_at is not None:
                self._metrics.publish_latency.observe(max(0.0, time.time() - received_at))
            if txn_no == self.txn_no and self._mark is None:  # the first one is the mark
                self._mark = (msg.topic(), msg.partition(), msg.offset())
        else:
            self._progress.trouble()

    def fatal(self, producer: Any, records: int) -> None:
        """The producer failed fatally: if a commit was under way, remember what to ask."""
        if self.committing and records and producer is not None:
            with contextlib.suppress(KafkaException):
                producer.poll(0)  # serve the delivery reports: the mark may be among them
            self._verify = self._mark

    def already_committed(self, timeout: float, records: int) -> bool:
        """Did the transaction interrupted by a fatal error commit after all?

        Call it once a new producer's init_transactions has settled that transaction.
        Without a mark no record of it was acknowledged, so librdkafka never asked for the
        commit. No answer in time raises a retriable error; the next attempt asks again.
        """
        mark, self._verify = self._verify, None
        if mark is None:
            return False
        seen = committed_at(self._kafka, *mark, timeout=max(timeout, CHECK_TIMEOUT_S))
        if seen is None:
            self._verify = mark
            raise KafkaException(
                KafkaError(KafkaError._TIMED_OUT, "commit outcome unknown", retriable=True)
            )
        log.warning("publish.commit_outcome", committed=seen, records=records)
        return seen


def committed_at(
    kafka: KafkaSettings, topic: str, partition: int, offset: int, timeout: float
) -> bool | None:
    """Does a read_committed reader see the message at ``offset``? None: no answer in time.

    Only meaningful once its transaction is settled (a later ``init_transactions`` with the
    same transactional.id settles it): then the first message such a reader returns from
    ``offset`` on is that one exactly when its transaction committed.
    """
    deadline = time.monotonic() + timeout
    consumer = Consumer(reader_config(kafka, "livestream-bridge-check"))
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        while (remaining := deadline - time.monotonic()) > 0:
            msg = consumer.poll(min(0.5, remaining))
            if msg is None:
                continue
            err = msg.error()
            if err is None:
                return msg.offset() == offset
            if err.code() == KafkaError._PARTITION_EOF:
                if (msg.offset() or 0) > offset:
                    return False  # skipped: the transaction was aborted
                continue
            raise_if_reader_denied(kafka, err, topic)
        return None
    finally:
        consumer.close()
