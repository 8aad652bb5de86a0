"""What a writer needs to know whether a transaction committed when a fatal producer error
interrupted its commit (the error alone cannot say: EndTxn may have reached the
coordinator, and the next ``init_transactions`` then completes that commit).

Each transaction gets a number; the first of its records (and every sampled one) is
produced with a delivery callback, and the first acknowledged one becomes the
transaction's *mark*, its (topic, partition, offset). After the fatal error the writer
makes a new producer (whose ``init_transactions`` settles the old transaction) and asks a
read_committed reader whether it sees the mark: if so, the transaction committed and its
kept records must not be replayed (they would be published twice, past the dedupe window).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from bridge.config import KafkaSettings
from bridge.observability import EventLog, Metrics
from bridge.tail import committed_at

__all__ = ["CHECK_TIMEOUT_S", "CommitOutcome"]

log = EventLog("bridge.publish")

CHECK_TIMEOUT_S = 10.0  # longest wait for a read_committed answer after a fatal commit

Mark = tuple[str, int, int]


class CommitOutcome:
    """The mark of the open transaction and, after a fatal commit, the one to look up."""

    _kafka: KafkaSettings
    _metrics: Metrics
    _stuck_since: float | None

    def _trouble(self) -> None:
        raise NotImplementedError

    def __init__(self) -> None:
        self._txn_no = 0
        self._mark: Mark | None = None
        self._committing = False  # commit_transaction was called for the open transaction
        self._verify: Mark | bool | None = False  # False: nothing to look up

    def _new_transaction(self) -> None:
        self._txn_no += 1
        self._mark, self._committing = None, False

    def _on_delivered(
        self, txn_no: int, received_at: float | None, err: KafkaError | None, msg: Any
    ) -> None:
        """Delivery report of a record of transaction ``txn_no`` (sampled or first)."""
        if err is None:
            self._stuck_since = None
            if received_at is not None:
                self._metrics.publish_latency.observe(max(0.0, time.time() - received_at))
            if txn_no == self._txn_no and self._mark is None:
                self._mark = (msg.topic(), msg.partition(), msg.offset())
        else:
            self._trouble()

    def _fatal(self, producer: Any, records: int) -> None:
        """The producer failed fatally: if a commit was under way, remember what to ask."""
        if self._committing and records and producer is not None:
            with contextlib.suppress(KafkaException):
                producer.poll(0)  # serve the delivery reports: the mark may be among them
            self._verify = self._mark

    def _already_committed(self, timeout: float, records: int) -> bool:
        """Did the transaction interrupted by a fatal error commit after all?

        Call it once a new producer's init_transactions has settled that transaction.
        Without a mark no record of it was acknowledged, so librdkafka never asked for the
        commit. No answer in time raises a retriable error; the next attempt asks again.
        """
        mark, self._verify = self._verify, False
        if not isinstance(mark, tuple):
            return False
        seen = committed_at(self._kafka, *mark, timeout=max(timeout, CHECK_TIMEOUT_S))
        if seen is None:
            self._verify = mark
            raise KafkaException(
                KafkaError(KafkaError._TIMED_OUT, "commit outcome unknown", retriable=True)
            )
        log.warning("publish.commit_outcome", committed=seen, records=records)
        return seen
