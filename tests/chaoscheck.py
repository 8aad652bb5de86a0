"""The chaos run's checker: what reached the topic, held against what Live Stream sent.

Independent of the bridge: it reads the hit topic with a ``read_committed`` consumer of its
own and takes the truth from the simulator (the hit ids it fully wrote, in the order it
wrote them, and its record of every connection). It counts

- lost: hits the simulator fully wrote that are not in the topic;
- duplicated: hits in the topic more than once;
- unexpected: hits in the topic the simulator never sent;
- out_of_order: per visitor (the record key) within a partition, records whose hit the
  simulator sent before the previous record's hit;
- zombie: records committed after their writer was deposed (``harness.zombie_visible``,
  read from the broker's segment files; None where they are not local);
- max_live: the most upstream connections the simulator had open at once;
- leaderless_s: the longest time the simulator had no stream open after the first one
  began (a measure, not a violation: faults cause it on purpose).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tests.harness import Zombies, hit_ids
from tests.kafkautil import Record, read_all


@dataclass
class Findings:
    """The checker's counts (see the module docstring)."""

    emitted: int
    committed: int
    lost: int
    duplicated: int
    unexpected: int
    out_of_order: int
    zombie: int | None
    max_live: int
    leaderless_s: float
    examples: list[str]

    def violations(self, max_connections: int) -> list[str]:
        out = [
            f"{name}={value}"
            for name, value in (
                ("lost", self.lost),
                ("duplicated", self.duplicated),
                ("unexpected", self.unexpected),
                ("out_of_order", self.out_of_order),
                ("zombie", self.zombie or 0),
            )
            if value
        ]
        if self.max_live > max_connections:
            out.append(f"max_live={self.max_live}>{max_connections}")
        if self.emitted == 0:
            out.append("nothing was emitted")
        return out

    def line(self, seed: int, faults: int, exits: int) -> str:
        zombie = "n/a" if self.zombie is None else str(self.zombie)
        return (
            f"chaos: seed={seed} faults={faults} emitted={self.emitted} "
            f"committed={self.committed} lost={self.lost} duplicated={self.duplicated} "
            f"unexpected={self.unexpected} out_of_order={self.out_of_order} zombie={zombie} "
            f"max_live={self.max_live} leaderless_max_s={self.leaderless_s:.1f} exits={exits}"
        )


def out_of_order(records: Iterable[Record], rank: dict[str, int]) -> tuple[int, list[str]]:
    """Records whose hit was sent before the previous record's hit of the same visitor in
    the same partition (unknown hits are left to the ``unexpected`` count)."""
    last: dict[tuple[int, bytes | None], int] = {}
    count, examples = 0, list[str]()
    for rec, hit in zip(records, hit_ids(records), strict=True):
        if (r := rank.get(hit)) is None:
            continue
        key = (rec.partition, rec.key)
        if key in last and r < last[key]:
            count += 1
            if len(examples) < 5:
                examples.append(f"out of order: {hit} at {rec.partition}@{rec.offset}")
        last[key] = max(r, last.get(key, -1))
    return count, examples


def longest_gap(attempts: list[dict[str, Any]], until: float) -> float:
    """The longest time (s) after the first stream began with no 200 stream open."""
    spans = sorted(
        (a["t"], a["t"] + a["duration_s"] if a["duration_s"] is not None else until)
        for a in attempts
        if a["status"] == 200
    )
    if not spans:
        return 0.0
    gap, covered = 0.0, spans[0][1]
    for start, end in spans[1:]:
        gap = max(gap, start - covered)
        covered = max(covered, end)
    return max(gap, until - covered)


def check(
    bootstrap: str,
    topic: str,
    *,
    emitted: Callable[[], list[str]],
    attempts: list[dict[str, Any]],
    max_live: int,
    zombies: Callable[[], Zombies | None],
    settle_s: float,
) -> Findings:
    """Wait up to ``settle_s`` for every emitted hit to be committed, then count."""
    deadline = time.monotonic() + settle_s
    while True:
        sent = emitted()
        try:
            records = read_all(bootstrap, topic, timeout=60)
        except AssertionError:  # the topic is missing or unreadable for now
            records = []
        counts = Counter(hit_ids(records))
        lost = [h for h in sent if h not in counts]
        if not lost or time.monotonic() > deadline:
            break
        time.sleep(2.0)
    rank = {h: i for i, h in enumerate(sent)}
    disorder, examples = out_of_order(records, rank)
    z = zombies()
    examples = [f"lost: {h}" for h in lost[:5]] + examples + (z.detail[:5] if z else [])
    return Findings(
        emitted=len(sent),
        committed=sum(counts.values()),
        lost=len(lost),
        duplicated=sum(1 for n in counts.values() if n > 1),
        unexpected=sum(1 for h in counts if h not in rank),
        out_of_order=disorder,
        zombie=None if z is None else z.records,
        max_live=max_live,
        leaderless_s=longest_gap(attempts, time.time()),
        examples=examples,
    )
