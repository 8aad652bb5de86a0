"""The open transaction of a writer: its messages, kept until it commits, and their counts.

Only :class:`bridge.transactions.TransactionalWriter` holds a :class:`Batch`: its ``add``
fills it one message at a time, the publisher's native lane many at a time (``take``), its
commit counts it into the metrics, an abort replays or abandons it.
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

from bridge._lane import Lane
from bridge.classify import Headers
from bridge.observability import Metrics

__all__ = ["FULL", "REFUSED", "TAKEN", "TXN_MAX_BYTES", "Added", "Batch", "Kept"]

TXN_MAX_BYTES = 16 * 1024 * 1024  # commit early when the open transaction holds this much

# One kept message: topic, value, key, dead-letter reason (None: a hit); its headers are
# kept apart, in ``Batch.headers``. A kept message holds no list or dict, so the cyclic GC
# untracks it the first time it sees it instead of promoting thousands of them per
# transaction to the oldest generation (whose collections would then walk the whole heap
# every few transactions). A tuple holding a dict is never untracked, while a dict of
# strings is never tracked: the headers dicts go in a list of their own, as produced.
Kept = tuple[str, bytes, str | None, str | None]


class Added(enum.Enum):
    """What the writer's ``add`` did with a message."""

    TAKEN = "taken"  # produced and kept
    FULL = "full"  # taken, and the batch is full (TXN_MAX_BYTES or max_records): commit it now
    REFUSED = "refused"  # a hit too large for the topic, not taken: dead-letter it instead


TAKEN, FULL, REFUSED = Added.TAKEN, Added.FULL, Added.REFUSED


class Batch:
    """The messages of the open transaction (``kept``, in order, and their ``headers``) and
    what they count:
    ``bytes`` of values, ``hits``, dead letters per reason (``dlq``), each hit's own time
    (``stamps``, for the freshness metrics) and when the first one was kept (``started``).

    ``kept``, ``headers`` and ``stamps`` are cleared in place, never replaced: the writer's
    hot path holds them.
    """

    def __init__(self, max_records: int) -> None:
        self.max_records = max_records  # commit at this many messages (or TXN_MAX_BYTES)
        self.kept: list[Kept] = []
        self.headers: list[Headers] = []  # kept[i]'s headers
        self.bytes = 0
        self.hits = 0
        self.stamps: list[object] = []
        self.dlq: Counter[str] = Counter()
        self.started = 0.0

    def __len__(self) -> int:
        return len(self.kept)

    def messages(self) -> Iterator[tuple[str, bytes, str | None, Headers]]:
        """The kept messages in order: topic, value, key, headers."""
        for (topic, value, key, _), headers in zip(self.kept, self.headers, strict=True):
            yield topic, value, key, headers

    def topics(self, first: str) -> list[str]:
        """The topics of the kept messages, ``first`` (if among them) first."""
        return sorted({m[0] for m in self.kept}, key=lambda t: t != first)

    def take(  # noqa: PLR0917 - the lane's inputs, passed through
        self,
        lane: Lane,
        records: Sequence[bytes],
        start: int,
        produce: Callable[..., object],
        report: Callable[[float | None], object],
        received_ms: str,
        received_at: float,
    ) -> tuple[int, int, tuple[int, int]]:
        """Have ``lane`` (bridge/_lane.c) produce ``records[start:]`` and keep them here, as
        the writer's ``add`` would one by one, until one is not of its form or this batch is
        full. Returns the lane's stop: the next index, why it stopped and, for UNTAKEN, the
        id of the hit it did not take."""
        kept, before = self.kept, len(self.kept)
        try:
            i, stop, nbytes, high, low = lane.run(
                records,
                start,
                produce,
                kept,
                self.headers,
                self.stamps,
                self.max_records - before,
                TXN_MAX_BYTES - self.bytes,
                received_ms,
                received_at,
                report,
            )
        except BaseException:  # out of memory, say: what it kept before counts all the same
            self.bytes += sum(len(m[1]) for m in kept[before:])
            self.hits += len(kept) - before
            raise
        self.bytes += nbytes
        self.hits += i - start  # every record before the stop was taken, and only those
        return i, stop, (high, low)

    def clear(self) -> None:
        self.kept.clear()
        self.headers.clear()
        self.stamps.clear()
        self.bytes = self.hits = 0
        self.dlq.clear()

    def committed(self, metrics: Metrics, totals: dict[str, int]) -> None:
        """The batch committed: count it into ``metrics`` and ``totals``, then clear it."""
        metrics.records_published.inc(self.hits)
        totals["records_published"] += self.hits
        for reason, count in self.dlq.items():
            metrics.records_dead_lettered.labels(reason=reason).inc(count)
            totals["records_dead_lettered"] += count
        metrics.transactions.labels(result="committed").inc()
        totals["transactions_committed"] += 1
        metrics.committed_hits.committed(self.stamps, time.time())
        self.clear()
