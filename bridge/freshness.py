"""How late the data is when consumers can see it.

A hit becomes visible to ``read_committed`` consumers when its transaction commits, so that
is where its freshness is taken: commit time minus the hit's ``receivedTimeGMT`` (else
``timeGMT``). The publisher keeps each hit's timestamp as its one JSON parse left it (an int
or a string, unconverted), and at commit :meth:`CommittedHits.committed` counts the distinct
values, converts each once and observes it with its count. The hits of a transaction share
a handful of seconds, so the per-hit cost is one list append plus its share of one
``collections.Counter`` pass. prometheus_client's ``Histogram`` cannot observe a value N
times at once, hence this collector.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric

__all__ = ["FRESHNESS_BUCKETS", "CommittedHits"]

# Adobe documents 20 s to 5 min from collection to Live Stream, about 10 min more with A4T;
# the buckets reach well past both so a late stream is measured, not just "over 5 min".
FRESHNESS_BUCKETS = (5, 10, 20, 30, 60, 120, 180, 300, 450, 600, 900, 1200, 1800, 3600)


def _seconds(stamp: object) -> float | None:
    """A hit timestamp as unix seconds; None for what cannot be one (bool, NaN, junk)."""
    if stamp is None or type(stamp) is bool:
        return None
    try:
        value = float(stamp)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return value if 0.0 < value < math.inf else None


def _counted(stamps: Sequence[object]) -> Iterable[tuple[object, int]]:
    try:
        return Counter(stamps).items()
    except TypeError:  # a hostile record's timestamp is a list or an object
        return Counter(s for s in stamps if s is None or type(s) in (int, str, float)).items()


class CommittedHits:
    """``hit_freshness_seconds``, ``newest_committed_hit_timestamp_seconds`` and
    ``newest_committed_hit_age_seconds``, fed by :meth:`committed` (the pump) and read by
    a scrape (the HTTP thread)."""

    def __init__(self, prefix: str, *, clock: Callable[[], float] = time.time) -> None:
        self._freshness = f"{prefix}_hit_freshness_seconds"
        self._newest_name = f"{prefix}_newest_committed_hit_timestamp_seconds"
        self._age_name = f"{prefix}_newest_committed_hit_age_seconds"
        self._clock = clock
        self._upper = (*(float(b) for b in FRESHNESS_BUCKETS), math.inf)
        self._counts = [0] * len(self._upper)
        self._sum = 0.0
        self._newest: float | None = None
        self._lock = threading.Lock()
        # The age is only true of the replica that writes: a standby's newest hit grows old
        # by design, and exporting its age would page someone for a healthy pair.
        self.writing: Callable[[], bool] = lambda: True

    def committed(self, stamps: Sequence[object], at: float) -> None:
        """``stamps`` (each hit's receivedTimeGMT else timeGMT, as parsed) became visible
        at unix time ``at``."""
        if not stamps:
            return
        observed: list[tuple[int, float, int]] = []
        newest = -math.inf
        upper = self._upper
        for stamp, n in _counted(stamps):
            sent = _seconds(stamp)
            if sent is None:
                continue
            age = max(0.0, at - sent)  # a sender's clock ahead of ours is not "negative late"
            observed.append((bisect_left(upper, age), age, n))
            newest = max(newest, sent)
        if not observed:
            return
        # A hit cannot have been received after it was committed: a timestamp from the
        # future (skew, junk) would otherwise pin the newest one there for good.
        newest = min(newest, at)
        with self._lock:
            counts = self._counts
            for i, age, n in observed:
                counts[i] += n
                self._sum += age * n
            if self._newest is None or newest > self._newest:
                self._newest = newest

    @property
    def newest(self) -> float | None:
        """Unix time of the newest hit committed so far, if any was."""
        return self._newest

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._freshness, self._freshness_help())
        yield GaugeMetricFamily(self._newest_name, self._newest_help())
        yield GaugeMetricFamily(self._age_name, self._age_help())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts, total, newest = list(self._counts), self._sum, self._newest
        buckets, running = [], 0
        for upper, n in zip(self._upper, counts, strict=True):
            running += n
            buckets.append(("+Inf" if upper == math.inf else repr(upper), float(running)))
        yield HistogramMetricFamily(
            self._freshness, self._freshness_help(), buckets=buckets, sum_value=total
        )
        if newest is None:  # nothing committed yet: no value beats a made-up 0
            return
        yield GaugeMetricFamily(self._newest_name, self._newest_help(), value=newest)
        if self.writing():
            age = max(0.0, self._clock() - newest)
            yield GaugeMetricFamily(self._age_name, self._age_help(), value=age)

    @staticmethod
    def _freshness_help() -> str:
        return (
            "Age of each hit when it became visible to read_committed consumers: its "
            "transaction's commit time minus its receivedTimeGMT (else timeGMT)"
        )

    @staticmethod
    def _newest_help() -> str:
        return "receivedTimeGMT (else timeGMT) of the newest hit this replica committed"

    @staticmethod
    def _age_help() -> str:
        return (
            "Now minus the newest committed hit's timestamp, at scrape time; exported only "
            "while this replica writes (leads) and once it committed a hit"
        )
