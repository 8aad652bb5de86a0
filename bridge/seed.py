"""Seeding a new term's dedupe window from the tail of the hits topic, read_committed.

``read_hit_ids`` feeds the window with the hit ids the topic received in the last
``publish.dedupe_seed_s`` seconds (what Live Stream can still replay across a failover), at
most ``limit`` of them. Partitions are independent: a partition whose offsets cannot be
read is retried until the deadline and then reported, never a reason to drop the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from bridge.config import KafkaSettings
from bridge.dedupe import hit_id_key, hit_id_key_from_text
from bridge.kafkaclients import give_back_freed_memory, reader_config
from bridge.kafkaerrors import raise_if_reader_denied, transient
from bridge.logs import EventLog

__all__ = ["SeedResult", "read_hit_ids"]

log = EventLog("bridge.publish")

RETRY_EVERY_S = 0.2
SEED_BUFFER_MB = 16
STALL_S = 30.0  # a seed read that gets nothing for this long gives up (the rest may be long)


@dataclass
class SeedResult:
    """What a seed read: ids fed, partitions read to their end, partitions given up on."""

    ids: int = 0
    complete: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    ends: dict[int, int] = field(default_factory=dict)  # where each partition's read ended


def _hit_id(msg: Message) -> tuple[int, int] | None:
    headers = msg.headers() or []
    items = list(headers.items()) if isinstance(headers, dict) else headers
    for name, value in items:
        if name == "hit-id" and value:
            text = value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")
            key = hit_id_key_from_text(text)
            if key is not None:
                return key
            # Not two plain numbers: only the record itself says which id it is.
            try:
                doc = orjson.loads(msg.value() or b"")
            except orjson.JSONDecodeError:
                return None
            return hit_id_key(doc.get("hitIdHigh"), doc.get("hitIdLow"))
    return None


class _Seed:
    """One seed read: the consumer, the deadline and what was found."""

    def __init__(self, kafka: KafkaSettings, topic: str, timeout: float) -> None:
        self.kafka, self.topic = kafka, topic
        self.deadline = time.monotonic() + timeout
        self.consumer = Consumer(reader_config(kafka, "livestream-bridge-seed", SEED_BUFFER_MB))
        self.result = SeedResult()

    def _step(self) -> float:
        return max(0.5, min(10.0, self.deadline - time.monotonic()))

    def partitions(self) -> list[int]:
        while True:
            try:
                md = self.consumer.list_topics(self.topic, timeout=self._step())
                tmd = md.topics.get(self.topic)
                if tmd is not None and tmd.error is not None:
                    raise_if_reader_denied(self.kafka, tmd.error, self.topic)
                    if not transient(tmd.error):
                        return []
                elif tmd is not None and tmd.partitions:
                    return _partitions_of(md, self.topic)
            except KafkaException as exc:
                raise_if_reader_denied(self.kafka, exc.args[0], self.topic)
                if not transient(exc.args[0]):
                    raise
            if time.monotonic() >= self.deadline:
                return []
            time.sleep(RETRY_EVERY_S)

    def _span(self, p: int, since_ms: int) -> tuple[int, int]:
        """(first offset written at or after ``since_ms``, end offset) of one partition."""
        tp, step = TopicPartition(self.topic, p), self._step()
        low, high = self.consumer.get_watermark_offsets(tp, timeout=step, cached=False)
        (found,) = self.consumer.offsets_for_times(
            [TopicPartition(self.topic, p, since_ms)], timeout=step
        )
        if found.error is not None:
            raise KafkaException(found.error)
        start = found.offset if found.offset >= 0 else high  # -1: nothing that recent
        return max(low, min(start, high)), high

    def spans(self, parts: list[int], since_ms: int) -> dict[int, tuple[int, int]]:
        """Each partition's span, each retried on its own until the deadline."""
        spans: dict[int, tuple[int, int]] = {}
        failed, pending = self.result.failed, list(parts)
        while pending:
            last: dict[int, str] = {}
            for p in pending:
                try:
                    spans[p] = self._span(p, since_ms)
                except KafkaException as exc:
                    err = exc.args[0]
                    raise_if_reader_denied(self.kafka, err, self.topic)
                    last[p] = err.name()
                    if not transient(err):
                        failed[p] = err.name()
            pending = [p for p in pending if p not in spans and p not in failed]
            if pending and time.monotonic() >= self.deadline:
                failed |= {p: last.get(p, "timed out") for p in pending}
                break
            if pending:
                time.sleep(RETRY_EVERY_S)
        return spans

    def consume(self, ends: dict[int, int], add: Callable[[int, int], object]) -> None:
        """Read until every partition in ``ends`` reached its end (removed from ``ends``)."""
        result = self.result
        stalled_at = time.monotonic() + STALL_S
        while ends and time.monotonic() < min(self.deadline, stalled_at):
            batch = self.consumer.consume(num_messages=2000, timeout=0.5)
            if batch:
                stalled_at = time.monotonic() + STALL_S
            for msg in batch:
                p, offset, err = msg.partition() or 0, msg.offset() or 0, msg.error()
                if err is None:
                    key = _hit_id(msg)
                    if key is not None:
                        add(key[0], key[1])
                        result.ids += 1
                    if offset >= ends.get(p, 0) - 1 and ends.pop(p, None) is not None:
                        result.complete.append(p)
                elif err.code() == KafkaError._PARTITION_EOF:
                    if offset >= ends.get(p, 0) and ends.pop(p, None) is not None:
                        result.complete.append(p)
                else:
                    raise_if_reader_denied(
                        self.kafka, err, self.topic
                    )  # librdkafka retries the rest itself


def _bounded(spans: dict[int, tuple[int, int]], limit: int) -> dict[int, tuple[int, int]]:
    """Keep the newest ``limit`` offsets in all, each partition its share of them."""
    total = sum(end - start for start, end in spans.values())
    if total <= limit:
        return spans
    return {
        p: (max(start, end - -(-limit * (end - start) // total)), end)
        for p, (start, end) in spans.items()
    }


def read_hit_ids(
    kafka: KafkaSettings,
    topic: str,
    add: Callable[[int, int], object],
    *,
    since_s: float,
    limit: int,
    timeout: float = 60.0,
    after: dict[int, int] | None = None,
) -> SeedResult:
    """Feed ``add`` the hit ids of the messages committed to ``topic`` in the last
    ``since_s`` seconds (by message timestamp), at most the newest ``limit``, oldest first
    per partition. Missing permissions raise ``KafkaSetupError``; anything else ends the
    read of what it touches (reported in the result and a log line), not of the rest.
    ``after``: a partition's offsets below this were read before (an earlier result's
    ``ends``), so only what was committed since is read."""
    if limit <= 0:
        return SeedResult()
    seed = _Seed(kafka, topic, timeout)
    result = seed.result
    try:
        parts = seed.partitions()
        if not parts:
            log.warning("publish.seed_skipped", topic=topic, reason="topic not found")
            return result
        since_ms = int((time.time() - since_s) * 1000)
        spans = _bounded(seed.spans(parts, since_ms), limit)
        if after is not None:
            spans = {p: (max(s, after.get(p, s)), e) for p, (s, e) in spans.items()}
        result.ends = {p: end for p, (_, end) in spans.items()}
        ends = {p: end for p, (start, end) in spans.items() if end > start}
        result.complete = [p for p in spans if p not in ends]
        if ends:
            seed.consumer.assign([TopicPartition(topic, p, spans[p][0]) for p in sorted(ends)])
        seed.consume(ends, add)
        result.failed |= {p: "timed out" for p in ends}
    except KafkaException as exc:
        log.warning("publish.seed_failed", topic=topic, error=exc.args[0].name(), ids=result.ids)
        result.failed |= {-1: exc.args[0].name()}
    finally:
        seed.consumer.close()
        give_back_freed_memory()
    # Only a partition read to its end may be skipped next time.
    result.ends = (
        {}
        if -1 in result.failed
        else {p: end for p, end in result.ends.items() if p not in result.failed}
    )
    if result.failed:
        log.warning("publish.seed_incomplete", topic=topic, ids=result.ids, failed=result.failed)
    return result


def _partitions_of(md: Any, topic: str) -> list[int]:
    tmd = md.topics.get(topic)
    if tmd is None or tmd.error is not None:
        return []
    return sorted(tmd.partitions)
