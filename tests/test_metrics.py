"""The metrics that say whether the bridge works and how late its data is: each one moves
as it should (the publisher's own logic on the fake producer), and a running bridge on the
real broker and the simulator exports every metric of the contract with live values."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError
from prometheus_client.parser import text_string_to_metric_families

from bridge.cancel import Cancel
from bridge.decode import OversizedRecord
from bridge.election.base import RoleReporter
from bridge.errors import PublishError
from bridge.freshness import FRESHNESS_BUCKETS, CommittedHits
from bridge.kafkaclients import MESSAGE_MAX_BYTES
from bridge.logs import EventLog
from bridge.observability import Metrics, State
from bridge.pipeline import ChunkQueue, Item, Kind
from livestream_sim import Simulator, SimulatorConfig
from tests.harness import BridgeProc, bridge_env
from tests.publishing import (
    NOW,
    FakeClock,
    FakeProducer,
    Timeouts,
    fake_fixture,  # noqa: F401 - the `fake` fixture: pytest finds it in this module
    fake_publisher,
)
from tests.testutil import wait_until

FRESH = "livestream_bridge_hit_freshness_seconds"
NEWEST = "livestream_bridge_newest_committed_hit_timestamp_seconds"
AGE = "livestream_bridge_newest_committed_hit_age_seconds"
COMMIT = "livestream_bridge_transaction_commit_seconds"


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def hit(n: int, **stamps: Any) -> bytes:
    return orjson.dumps({"hitIdHigh": 7, "hitIdLow": n, **stamps, "pageName": "p"})


def observed(metrics: Metrics) -> float:
    return value(metrics, f"{FRESH}_count") or 0.0


# -- freshness: observed at commit ----------------------------------------------------------


def test_freshness_is_observed_at_commit_not_at_read(fake: type[FakeProducer]) -> None:
    """Hits are observed once their transaction commits, as commit time minus receivedTimeGMT,
    on both publish paths (the first of a transaction and the rest), and only once."""
    pub, metrics = fake_publisher()
    pub.begin(None)
    sent = int(time.time()) - 100
    pub.publish_many([hit(n, receivedTimeGMT=sent, timeGMT=sent - 50) for n in range(40)], NOW)
    assert observed(metrics) == 0, "nothing is visible to consumers before the commit"
    before = time.time()
    pub.commit()
    after = time.time()
    assert observed(metrics) == 40
    total = value(metrics, f"{FRESH}_sum")
    assert total is not None and 40 * (before - sent) <= total <= 40 * (after - sent)
    assert value(metrics, f"{FRESH}_bucket", le="60.0") == 0
    assert value(metrics, f"{FRESH}_bucket", le="120.0") == 40
    pub.publish_many([hit(n, receivedTimeGMT=int(time.time())) for n in range(40, 43)], NOW)
    pub.commit()
    assert observed(metrics) == 43, "the next commit observes its own hits, not these again"
    assert value(metrics, f"{FRESH}_bucket", le="5.0") == 3


def test_freshness_buckets_are_the_contract() -> None:
    """The buckets reach an hour, well past Adobe's 20 s - 5 min (+10 min with A4T)."""
    families = {f.name: f for f in text_string_to_metric_families(Metrics().render().decode())}
    family = families[FRESH]
    assert family.type == "histogram"
    bounds = [s.labels["le"] for s in family.samples if s.name == f"{FRESH}_bucket"]
    assert bounds == [*(repr(float(b)) for b in FRESHNESS_BUCKETS), "+Inf"]
    assert FRESHNESS_BUCKETS == (5, 10, 20, 30, 60, 120, 180, 300, 450, 600, 900, 1200, 1800, 3600)


def test_freshness_falls_back_to_time_gmt_and_skips_what_is_no_time(
    fake: type[FakeProducer],
) -> None:
    """timeGMT stands in for a missing receivedTimeGMT; a string number counts; a hit whose
    timestamp is missing or junk (list, object, bool, text, NaN) is published, not observed."""
    pub, metrics = fake_publisher()
    pub.begin(None)
    now = int(time.time())
    records = [
        hit(1, timeGMT=now - 1000),  # the first of a transaction takes another path
        hit(2, receivedTimeGMT=str(now - 7)),
        hit(9, timeGMT=now - 1000),
        hit(3),
        hit(4, receivedTimeGMT=[now]),
        hit(5, receivedTimeGMT={"t": now}),
        hit(6, receivedTimeGMT=True),
        hit(7, receivedTimeGMT="soon"),
        hit(8, receivedTimeGMT="nan"),
    ]
    pub.publish_many(records, NOW)
    pub.commit()
    assert value(metrics, "livestream_bridge_records_published_total") == len(records)
    assert observed(metrics) == 3
    assert value(metrics, f"{FRESH}_bucket", le="10.0") == 1  # the string one, ~7 s
    assert value(metrics, f"{FRESH}_bucket", le="900.0") == 1
    assert value(metrics, f"{FRESH}_bucket", le="1200.0") == 3  # the timeGMT ones, ~1000 s


def test_replays_dead_letters_and_rejects_are_not_observed(fake: type[FakeProducer]) -> None:
    """Only hits that reach the hits topic count: not a replay the window drops, not a dead
    letter, not a hit too large for the topic (dead-lettered instead)."""
    pub, metrics = fake_publisher()
    pub.begin(None)
    now = int(time.time())
    big = orjson.dumps({"hitIdHigh": 7, "hitIdLow": 99, "receivedTimeGMT": now, "x": "y" * 2**20})
    assert len(big) > MESSAGE_MAX_BYTES
    records = [
        hit(1, receivedTimeGMT=now),
        big,  # refused on the fast path, then dead-lettered
        hit(1, receivedTimeGMT=now),  # a replay
        b"not json",
        OversizedRecord(b'{"hitIdHigh":7', 5_000_000),
        hit(2, receivedTimeGMT=now),
    ]
    pub.publish_many(records, NOW)
    pub.commit()
    assert value(metrics, "livestream_bridge_records_published_total") == 2
    assert value(metrics, "livestream_bridge_records_deduplicated_total") == 1
    assert observed(metrics) == 2


def test_a_replayed_transaction_is_observed_once(fake: type[FakeProducer]) -> None:
    """An aborted commit replays the kept hits: they are observed once, when the replay
    commits, and both commit_transaction calls are timed."""
    pub, metrics = fake_publisher()
    pub.begin(None)
    sent = int(time.time())
    pub.publish_many([hit(n, receivedTimeGMT=sent) for n in range(5)], NOW)
    fake.script["commit_transaction"] = [
        KafkaError(KafkaError._MSG_TIMED_OUT, "timed out", txn_requires_abort=True)
    ]
    pub.commit()
    assert value(metrics, "livestream_bridge_transactions_total", result="aborted") == 1
    assert observed(metrics) == 5
    assert value(metrics, f"{COMMIT}_count") == 2


def test_an_abandoned_transaction_is_never_observed(fake: type[FakeProducer]) -> None:
    """Hits of a transaction aborted because the term ended are not observed, then or later."""
    pub, metrics = fake_publisher()
    pub.begin(None)
    pub.publish_many([hit(n, receivedTimeGMT=int(time.time())) for n in range(5)], NOW)
    pub.abort()
    pub.begin(None)
    pub.publish(hit(9, receivedTimeGMT=int(time.time())), NOW)
    pub.commit()
    assert observed(metrics) == 1


# -- the newest committed hit ---------------------------------------------------------------


def test_newest_committed_hit_and_its_age(fake: type[FakeProducer]) -> None:
    """Absent before the first commit (never a made-up 0); then the newest timestamp so
    far, never one from the future; its age is exported while this replica writes only."""
    pub, metrics = fake_publisher()
    assert value(metrics, NEWEST) is None and value(metrics, AGE) is None
    pub.begin(None)
    now = int(time.time())
    pub.publish_many([hit(1, receivedTimeGMT=now - 50), hit(2, receivedTimeGMT=now - 20)], NOW)
    assert value(metrics, NEWEST) is None and value(metrics, AGE) is None
    pub.commit()
    assert value(metrics, NEWEST) == now - 20
    age = value(metrics, AGE)
    assert age is not None and 20 <= age < 80
    pub.publish(hit(3, receivedTimeGMT=now - 400), NOW)  # an older hit committed later
    pub.commit()
    assert value(metrics, NEWEST) == now - 20
    before = time.time()
    pub.publish(hit(4, receivedTimeGMT=now + 3600), NOW)  # a sender's clock an hour ahead
    pub.commit()
    newest = value(metrics, NEWEST)
    assert newest is not None and before <= newest <= time.time()
    pub.abort()  # the term ended: standby
    assert value(metrics, AGE) is None
    assert value(metrics, NEWEST) == newest


def test_age_is_computed_at_scrape_time() -> None:
    """With no new commit the age keeps growing with the clock (a stalled bridge shows)."""
    clock = FakeClock()
    hits = CommittedHits("x", clock=clock)
    hits.committed([990, "995", 980], at=1000.0)
    metrics = {f.name: f for f in hits.collect()}
    assert metrics["x_newest_committed_hit_age_seconds"].samples[0].value == 5.0
    clock.now += 30
    metrics = {f.name: f for f in hits.collect()}
    assert metrics["x_newest_committed_hit_age_seconds"].samples[0].value == 35.0
    assert metrics["x_newest_committed_hit_timestamp_seconds"].samples[0].value == 995.0


def test_weighted_observations_fill_the_right_buckets() -> None:
    """Equal timestamps are observed with their count: count, sum and each cumulative
    bucket are what observing every hit one by one gives (bucket bounds inclusive)."""
    hits = CommittedHits("x")
    stamps: list[object] = [1000] * 7 + [995] * 3 + [900, 400, math.nan, None]
    hits.committed(stamps, at=1005.0)
    (family,) = [f for f in hits.collect() if f.name == "x_hit_freshness_seconds"]
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    ages = [5.0] * 7 + [10.0] * 3 + [105.0, 605.0]
    for bound in FRESHNESS_BUCKETS:
        expected = sum(1 for a in ages if a <= bound)
        assert samples[("x_hit_freshness_seconds_bucket", repr(float(bound)))] == expected
    assert samples[("x_hit_freshness_seconds_bucket", "+Inf")] == 12
    assert samples[("x_hit_freshness_seconds_count", None)] == 12
    assert samples[("x_hit_freshness_seconds_sum", None)] == sum(ages)


# -- commits, dedupe window, Kafka reachability ------------------------------------------


def test_commit_duration_is_observed_for_every_call(
    fake: type[FakeProducer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each commit_transaction call is timed, the failed (retried) ones included, with
    its real duration."""
    pub, metrics = fake_publisher()
    pub.begin(None)
    real = FakeProducer.commit_transaction

    def slow(self: FakeProducer, timeout: float) -> None:
        time.sleep(0.05)  # stands for a broker taking 50 ms to commit, not a wait
        real(self, timeout)

    monkeypatch.setattr(FakeProducer, "commit_transaction", slow)
    pub.publish(hit(1), NOW)
    fake.script["commit_transaction"] = [KafkaError(KafkaError._TIMED_OUT, retriable=True)]
    pub.commit()
    assert value(metrics, f"{COMMIT}_count") == 2
    assert value(metrics, f"{COMMIT}_bucket", le="0.025") == 0
    total = value(metrics, f"{COMMIT}_sum")
    assert total is not None and total >= 0.1


def test_dedupe_window_gauges_follow_the_window(fake: type[FakeProducer]) -> None:
    """Capacity is the configured size from the start; the fill counts the distinct ids of
    this term and drops to 0 when the term ends; replays are counted as deduplicated."""
    pub, metrics = fake_publisher(dedupe_window=1000)
    assert value(metrics, "livestream_bridge_dedupe_window_capacity_ids") == 1000
    assert value(metrics, "livestream_bridge_dedupe_window_ids") == 0
    pub.begin(None)
    pub.publish_many([hit(n) for n in range(30)] + [hit(n) for n in range(5)], NOW)
    assert value(metrics, "livestream_bridge_dedupe_window_ids") == 30
    assert value(metrics, "livestream_bridge_records_deduplicated_total") == 5
    pub.abort()
    assert value(metrics, "livestream_bridge_dedupe_window_ids") == 0
    _, off_metrics = fake_publisher(dedupe_window=0)
    assert value(off_metrics, "livestream_bridge_dedupe_window_capacity_ids") == 0


def test_kafka_unreachable_grows_during_an_outage_and_clears(fake: type[FakeProducer]) -> None:
    """0 while Kafka takes data; the outage's length while commits time out; 0 again once a
    commit goes through, and 0 on a standby (which gives Kafka nothing)."""
    clock = FakeClock()
    pub, metrics = fake_publisher(clock, kafka_outage_s=60)
    name = "livestream_bridge_kafka_unreachable_seconds"
    pub.begin(None)
    pub.publish(hit(1), NOW)
    assert value(metrics, name) == 0
    fake.script["commit_transaction"] = Timeouts(clock)
    clock.now += 1.0
    pub.maybe_commit()
    first = value(metrics, name)
    assert first is not None and first > 0
    clock.now += 10.0
    assert value(metrics, name) == pytest.approx(first + 10.0)
    fake.script["commit_transaction"] = []
    pub.maybe_commit()
    assert value(metrics, name) == 0
    fake.script["commit_transaction"] = Timeouts(clock)
    pub.publish(hit(2), NOW)
    clock.now += 1.0
    pub.maybe_commit()
    assert (value(metrics, name) or 0) > 0
    pub.abort()
    assert value(metrics, name) == 0


def test_kafka_unreachable_while_a_new_leader_cannot_start_its_writer(
    fake: type[FakeProducer],
) -> None:
    """A leader whose init_transactions fails counts that time as Kafka unreachable, across
    retries, until the term ends."""
    clock = FakeClock()
    pub, metrics = fake_publisher(clock)
    name = "livestream_bridge_kafka_unreachable_seconds"
    fake.script["init_transactions"] = [KafkaError(KafkaError._TRANSPORT, "down")] * 2
    with pytest.raises(PublishError):
        pub.begin(None)
    clock.now += 5.0
    with pytest.raises(PublishError):
        pub.begin(None)
    clock.now += 5.0
    assert value(metrics, name) == pytest.approx(10.0)
    pub.abort()
    assert value(metrics, name) == 0


# -- election term, reader queue, process ------------------------------------------------


def test_election_term_follows_the_role() -> None:
    """The term number while leading, 0 as a standby, the new number for a new term."""
    metrics = Metrics()
    roles = RoleReporter("me", metrics, State(identity="me"), EventLog("test"))
    assert value(metrics, "livestream_bridge_election_term") == 0
    roles.leader(7)
    assert value(metrics, "livestream_bridge_election_term") == 7
    roles.leader(8)  # re-elected without a standby report in between
    assert value(metrics, "livestream_bridge_election_term") == 8
    roles.standby("other", 8)
    assert value(metrics, "livestream_bridge_election_term") == 0
    assert value(metrics, "livestream_bridge_leader") == 0


def test_reader_queue_counts_the_bytes_it_holds() -> None:
    """The queue's byte count, which the reader_queue_bytes gauge reads, follows puts and gets."""
    queue = ChunkQueue(1 << 20, Cancel(), 2.0)
    assert queue.bytes == 0
    queue.put(Item(Kind.DATA, 0, b"x" * 1000))
    queue.put(Item(Kind.DATA, 0, b"y" * 24))
    assert queue.bytes == 1024
    queue.get(0)
    assert queue.bytes == 24


def test_process_metrics_are_exported() -> None:
    """RSS and CPU of the process come from prometheus_client's ProcessCollector."""
    metrics = Metrics()
    rss = value(metrics, "process_resident_memory_bytes")
    assert rss is not None and rss > 1_000_000
    assert value(metrics, "process_cpu_seconds_total") is not None


# -- end to end: a running bridge on the real broker and the simulator -----------------------

CONTRACT = (
    "livestream_bridge_records_received_total",
    "livestream_bridge_records_published_total",
    "livestream_bridge_records_deduplicated_total",
    "livestream_bridge_records_dead_lettered_total",
    "livestream_bridge_upstream_compressed_bytes_total",
    "livestream_bridge_upstream_decompressed_bytes_total",
    "livestream_bridge_upstream_connection_attempts_total",
    "livestream_bridge_upstream_connected",
    "livestream_bridge_last_record_timestamp_seconds",
    "livestream_bridge_publish_latency_seconds_bucket",
    "livestream_bridge_producer_queue_messages",
    "livestream_bridge_leader",
    "livestream_bridge_leadership_transitions_total",
    "livestream_bridge_transactions_total",
    "livestream_bridge_token_refreshes_total",
    "livestream_bridge_build_info",
    f"{FRESH}_bucket",
    f"{FRESH}_count",
    f"{FRESH}_sum",
    NEWEST,
    AGE,
    "livestream_bridge_upstream_state",
    "livestream_bridge_upstream_backoff_seconds",
    "livestream_bridge_upstream_refusals_total",
    "livestream_bridge_upstream_fatal_status",
    f"{COMMIT}_bucket",
    f"{COMMIT}_count",
    "livestream_bridge_reader_queue_bytes",
    "livestream_bridge_dedupe_window_ids",
    "livestream_bridge_dedupe_window_capacity_ids",
    "livestream_bridge_election_term",
    "livestream_bridge_kafka_unreachable_seconds",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
)


@pytest.fixture
def streaming_sim() -> Iterator[Simulator]:
    """A simulator that keeps emitting for the whole test, stamping hits with the time."""
    with Simulator(SimulatorConfig(rate=500.0, malformed_every=300)) as sim:
        yield sim


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return next(v for (n, labels), v in found.items() if n == name and not labels)


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_running_bridge_exports_every_contract_metric(
    streaming_sim: Simulator, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A real process (Kafka election, real broker, simulator) exports every metric of the
    contract once hits flow: freshness observed at commit, a small newest-hit age, timed
    commits, a filled dedupe window, its term, and the process's RSS."""
    env = bridge_env(streaming_sim, kafka_bootstrap, BRIDGE_PUBLISH__DEDUPE_WINDOW="100000")
    bridge = BridgeProc("metrics", env, tmp_path).start()
    try:

        def flowing() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            try:
                found = samples(bridge.get("/metrics")[1].decode())
            except OSError:  # not listening yet
                return None
            published = sample(found, "livestream_bridge_records_published_total")
            return found if published >= 1000 and (f"{FRESH}_count", ()) in found else None

        found = wait_until(flowing, 120, "1000 hits committed and observed")
        names = {name for name, _ in found}
        assert [n for n in CONTRACT if n not in names] == []
        # Labelled by whatever status Adobe sends that it does not document: a family with
        # no series until one arrives.
        text = bridge.get("/metrics")[1].decode()
        assert "# TYPE livestream_bridge_upstream_unexpected_statuses_total counter" in text
        assert sample(found, f"{FRESH}_count") >= 1000
        assert sample(found, AGE) < 30, "the simulator stamps hits with the time it sends them"
        assert sample(found, NEWEST) > time.time() - 60
        assert sample(found, f"{COMMIT}_count") > 0
        assert sample(found, "livestream_bridge_dedupe_window_ids") >= 1000
        assert sample(found, "livestream_bridge_dedupe_window_capacity_ids") == 100_000
        assert sample(found, "livestream_bridge_election_term") >= 1
        assert sample(found, "livestream_bridge_kafka_unreachable_seconds") == 0
        assert sample(found, "process_resident_memory_bytes") > 10_000_000
        status = bridge.status()
        assert status is not None and status["term"] >= 1
        assert status["newest_committed_hit_at"] >= sample(found, NEWEST)  # scraped later
    finally:
        code = bridge.stop()
    assert code == 0, bridge.logs()[-3000:]


def test_with_slots_the_flow_series_carry_the_slot_held() -> None:
    """Metrics(slots=2): received, published, connected and refusals carry ``slot``, from
    zero for every slot; counting follows the slot bound last; ``slot`` is -1 until one is
    held. With one slot the same series have no slot label."""
    metrics = Metrics(slots=2)
    assert value(metrics, "livestream_bridge_slot") == -1
    metrics.bind_slot(1)
    metrics.slot.set(1)
    metrics.records_received.inc(5)
    metrics.records_published.inc(4)
    metrics.upstream_connected.set(1)
    metrics.refused("409")
    assert value(metrics, "livestream_bridge_records_received_total", slot="1") == 5
    assert value(metrics, "livestream_bridge_records_received_total", slot="0") == 0
    assert value(metrics, "livestream_bridge_records_published_total", slot="1") == 4
    assert value(metrics, "livestream_bridge_upstream_connected", slot="1") == 1
    assert value(metrics, "livestream_bridge_upstream_refusals_total", slot="1", status="409") == 1
    assert value(metrics, "livestream_bridge_upstream_refusals_total", slot="0", status="409") == 0
    assert value(metrics, "livestream_bridge_slot") == 1
    single = Metrics()
    single.records_published.inc()
    text = single.render().decode()
    assert "livestream_bridge_records_published_total 1.0" in text and 'slot="' not in text
