"""Upstream and broker faults, end to end: a real bridge process, the simulator, a real broker.

Every scenario ends with a full read_committed read of the hits topic held against what
the simulator emitted and prints one ``SCENARIO`` line: lost, duplicated, unexpected,
zombie-visible (see ``tests/harness.zombie_visible``) and the recovery time (from the
fault, or from the end of a lasting fault, to the next stream the simulator admitted; for
broker faults from the broker answering again to a replica streaming).

Upstream faults run one replica (election ``none``) on the session broker. Broker faults
run on a broker of their own (``OwnBroker``): the session broker is never stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from livestream_sim import Simulator, SimulatorConfig
from tests.harness import (
    BridgeProc,
    OwnBroker,
    Verdict,
    bridge_env,
    deployment_name,
    first_stream_after,
    flowing,
    log_events,
    metric_value,
    reconnect_gaps,
    takeovers,
    wait_for_committed,
    wait_streaming,
    zombie_visible,
)
from tests.kafkautil import read_all
from tests.testutil import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

GRACE_S = 1.0
CAP_S = 4.0
SLACK_S = 1.0  # request handling and scheduling on a loaded 2-core box
RATE = 600.0


def make_sim(**overrides: Any) -> Simulator:
    """A simulator whose resume replay covers whatever a bridge had in flight.

    ``ghost_s`` is long on purpose: a close that is not clean would leave a ghost slot and
    show up as 409 answers, which every scenario without an injected 409 checks for.
    """
    cfg: dict[str, Any] = {
        "rate": RATE,
        "ghost_s": 30.0,
        "replay_on_resume": 20000,
        "resume_window_s": 300.0,
    }
    cfg.update(overrides)
    return Simulator(SimulatorConfig(**cfg))


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """The default simulator for upstream faults."""
    with make_sim() as s:
        yield s


def solo(sim: Simulator, bootstrap: str, tmp_path: Path, **extra: str) -> BridgeProc:
    """One replica (election none) of a fresh deployment; grace 1 s and cap 4 s by default."""
    settings = {
        "BRIDGE_ELECTION__BACKEND": "none",
        "BRIDGE_LIVESTREAM__RECONNECT_GRACE_S": str(GRACE_S),
        "BRIDGE_LIVESTREAM__BACKOFF_CAP_S": str(CAP_S),
        **extra,
    }
    env = bridge_env(
        sim,
        bootstrap,
        **settings,
    )
    return BridgeProc("solo", env, tmp_path)


def topic_of(proc: BridgeProc) -> str:
    return proc.env["BRIDGE_KAFKA__TOPIC"]


def streams(sim: Simulator) -> list[dict[str, Any]]:
    return [a for a in sim.attempts() if a["status"] == 200]


def refusals(sim: Simulator, status: int) -> list[dict[str, Any]]:
    return [a for a in sim.attempts() if a["status"] == status]


def recovered(sim: Simulator, since: float, timeout: float = 30.0) -> float:
    """Seconds from ``since`` (unix time) to the next stream the simulator admitted."""
    at = wait_until(
        lambda: first_stream_after(sim.attempts, since), timeout, "a new upstream stream"
    )
    return float(at - since)


def finish(
    scenario: str,
    sim: Simulator,
    procs: list[BridgeProc],
    bootstrap: str,
    *,
    recovery_s: float | None,
    missing: Callable[[], set[str]] = set,
    timeout: float = 120.0,
) -> Verdict:
    """Stop producing, wait for the committed topic, judge it, print the SCENARIO line."""
    sim.set_mode("pause")
    topic = topic_of(procs[0])
    v = wait_for_committed(bootstrap, topic, sim.emitted_hit_ids, timeout, missing=missing)
    z = zombie_visible(bootstrap, [topic, f"{topic}-dlq"], takeovers(procs))
    zombie = "n/a" if z is None else str(z.records)
    rec = "-" if recovery_s is None else f"{recovery_s:.1f}"
    print(
        f"\nSCENARIO {scenario}: emitted={v.emitted} committed={v.committed} "
        f"lost={len(v.lost)} duplicated={len(v.duplicated)} unexpected={len(v.unexpected)} "
        f"zombie_visible={zombie} recovery_s={rec}"
    )
    assert set(v.lost) == missing(), v.line()
    assert (v.duplicated, v.unexpected) == ([], []), v.line()
    assert z is None or z.records == 0, z.detail[:5]
    return v


def no_ghost_refusals(sim: Simulator) -> None:
    """Every close of ours was clean: the simulator never refused us for a ghost slot."""
    assert refusals(sim, 409) == [], refusals(sim, 409)[:3]


# -- upstream faults -------------------------------------------------------------------------


def test_connection_dropped_mid_chunk(sim: Simulator, kafka_bootstrap: str, tmp_path: Path) -> None:
    """Three server drops inside a chunk: each reconnect waits the grace; none lost or doubled."""
    bridge = solo(sim, kafka_bootstrap, tmp_path).start()
    try:
        flowing(sim, 500)
        recoveries = []
        for n in range(3):
            wait_until(lambda: sim.live_connections() == 1, 30, "a live stream")
            dropped_at = time.time()
            sim.drop_connections(mid_chunk=True)
            recoveries.append(recovered(sim, dropped_at))
            flowing(sim, 500 * (n + 2))
        gaps = reconnect_gaps(streams(sim))
        assert len(gaps) >= 3
        assert min(gaps) >= GRACE_S - 0.05, gaps
        no_ghost_refusals(sim)
        finish("drop mid-chunk x3", sim, [bridge], kafka_bootstrap, recovery_s=max(recoveries))
    finally:
        assert bridge.stop() == 0


def test_truncated_gzip(sim: Simulator, kafka_bootstrap: str, tmp_path: Path) -> None:
    """A gzip member cut in half then EOF: the partial record is dropped and resent on resume."""
    bridge = solo(sim, kafka_bootstrap, tmp_path).start()
    try:
        flowing(sim, 500)
        at = time.time()
        sim.set_mode("truncate")
        wait_until(
            lambda: any(a.get("reason") == "fault: gzip stream truncated" for a in sim.attempts()),
            30,
            "the truncation",
        )
        rec = recovered(sim, at)
        assert rec >= GRACE_S - 0.05
        flowing(sim, 1500)
        no_ghost_refusals(sim)
        finish("truncated gzip", sim, [bridge], kafka_bootstrap, recovery_s=rec)
    finally:
        assert bridge.stop() == 0


def test_garbage_bytes(sim: Simulator, kafka_bootstrap: str, tmp_path: Path) -> None:
    """Bytes that are not gzip: the bridge logs a corrupt stream, reconnects after the grace."""
    bridge = solo(sim, kafka_bootstrap, tmp_path).start()
    try:
        flowing(sim, 500)
        at = time.time()
        sim.set_mode("garbage")
        rec = recovered(sim, at)
        assert rec >= GRACE_S - 0.05
        flowing(sim, 1500)
        assert log_events(bridge, "bridge.corrupt_stream"), "the corrupt stream must be logged"
        no_ghost_refusals(sim)
        finish("garbage bytes", sim, [bridge], kafka_bootstrap, recovery_s=rec)
    finally:
        assert bridge.stop() == 0


def test_stalled_server(sim: Simulator, kafka_bootstrap: str, tmp_path: Path) -> None:
    """A server that goes silent: closed (cleanly) after stall_timeout_s, retried, resumed."""
    stall_s = 2.0
    bridge = solo(
        sim, kafka_bootstrap, tmp_path, BRIDGE_LIVESTREAM__STALL_TIMEOUT_S=str(stall_s)
    ).start()
    try:
        flowing(sim, 500)
        before = len(streams(sim))
        sim.set_mode("stall")
        # Two stall timeouts: the first stream and one reconnection that stalled as well.
        wait_until(lambda: len(streams(sim)) >= before + 2, 30, "a reconnect during the stall")
        wait_until(
            lambda: sum(a.get("reason", "").startswith("client closed") for a in streams(sim)) >= 2,
            30,
            "two clean closes by the bridge",
        )
        # The stream open when the stall ends simply carries on: recovery is data flowing.
        emitted = len(sim.emitted_hit_ids())
        ended = time.monotonic()
        sim.set_mode("normal")
        flowing(sim, emitted)
        rec = time.monotonic() - ended
        flowing(sim, emitted + 1000)
        closes = [a for a in streams(sim) if a.get("reason", "").startswith("client closed")]
        assert all(a["duration_s"] >= stall_s - 0.1 for a in closes[-2:]), closes
        assert min(reconnect_gaps(streams(sim))) >= GRACE_S - 0.05
        no_ghost_refusals(sim)
        finish("stalled server", sim, [bridge], kafka_bootstrap, recovery_s=rec)
    finally:
        assert bridge.stop() == 0


def test_five_megabyte_record(sim: Simulator, kafka_bootstrap: str, tmp_path: Path) -> None:
    """A 5 MB hit goes to the DLQ as oversized with its original size; the stream goes on."""
    size = 5_000_000
    bridge = solo(sim, kafka_bootstrap, tmp_path).start()
    try:
        flowing(sim, 500)
        sim.set_mode("big_record", size=size)
        flowing(sim, 2000)
        big: list[str] = []

        def oversized() -> set[str]:
            if not big:
                big.extend(h for h, rec in sim.emitted_records().items() if len(rec) >= size)
            return set(big)

        wait_until(oversized, 30, "the big record to be emitted")
        topic = topic_of(bridge)
        finish("5 MB record", sim, [bridge], kafka_bootstrap, recovery_s=None, missing=oversized)
        (hit,) = big
        record = sim.emitted_records()[hit]
        dlq = read_all(kafka_bootstrap, f"{topic}-dlq", timeout=30)
        assert len(dlq) == 1, [dict(r.headers) for r in dlq]
        headers = {k: (v or b"").decode() for k, v in dlq[0].headers}
        assert headers["reason"] == "oversized"
        assert int(headers["original-size"]) == len(record) == size
        assert dlq[0].value and record.startswith(dlq[0].value)
        assert hit.split(":")[1].encode() in dlq[0].value  # the head still names the hit
        text = bridge.get("/metrics")[1].decode()
        name = "livestream_bridge_records_dead_lettered_total"
        assert metric_value(text, name, reason="oversized") == 1
        assert streams(sim) and len(streams(sim)) == 1, "the stream must go on, not reconnect"
    finally:
        assert bridge.stop() == 0


def _refusal_phase(
    sim: Simulator, bridge: BridgeProc, status: int, count: int
) -> tuple[list[float], float]:
    """Refuse every attempt with ``status`` until ``count`` were refused, then recover."""
    flowing(sim, 500)
    sim.set_mode("status", code=status)
    dropped_at = time.time()
    sim.drop_connections(mid_chunk=False)
    wait_until(lambda: len(refusals(sim, status)) >= count, count * (CAP_S + 2) + 10, "refusals")
    ended = time.time()
    sim.set_mode("normal")
    rec = recovered(sim, ended, timeout=CAP_S + 10)
    after = [a for a in sim.attempts() if a["t"] >= dropped_at]
    gaps = reconnect_gaps(after)
    first = next(a for a in sim.attempts() if a["t"] >= dropped_at)
    # The first retry after a drop waits exactly the grace; every later one after a refusal
    # lies in [grace, cap] (exponential window, full jitter, floor = grace).
    assert first["status"] == status
    assert all(GRACE_S - 0.05 <= g <= CAP_S + SLACK_S for g in gaps), gaps
    delays = [
        d["delay_s"]
        for d in log_events(bridge, "upstream.attempt")
        if d.get("status") == status and d.get("delay_s") is not None
    ]
    assert delays and all(GRACE_S <= d <= CAP_S for d in delays), delays
    return gaps, rec


def test_409_storm(sim: Simulator, kafka_bootstrap: str, tmp_path: Path) -> None:
    """Six 409s in a row: the attempt gaps follow the backoff (>= grace, <= cap), then resume."""
    bridge = solo(sim, kafka_bootstrap, tmp_path).start()
    try:
        gaps, rec = _refusal_phase(sim, bridge, 409, 6)
        print(f"\n409 storm attempt gaps: {' '.join(f'{g:.2f}' for g in gaps)}")
        flowing(sim, len(sim.emitted_hit_ids()) + 500)
        finish("409 storm", sim, [bridge], kafka_bootstrap, recovery_s=rec)
    finally:
        assert bridge.stop() == 0


def test_503_phase(sim: Simulator, kafka_bootstrap: str, tmp_path: Path) -> None:
    """A phase of 503 answers: retried by the backoff, then resumed where it stopped."""
    bridge = solo(sim, kafka_bootstrap, tmp_path).start()
    try:
        gaps, rec = _refusal_phase(sim, bridge, 503, 4)
        print(f"\n503 phase attempt gaps: {' '.join(f'{g:.2f}' for g in gaps)}")
        flowing(sim, len(sim.emitted_hit_ids()) + 500)
        finish("503 phase", sim, [bridge], kafka_bootstrap, recovery_s=rec)
    finally:
        assert bridge.stop() == 0


def test_token_endpoint_down_while_refresh_needed(
    sim: Simulator, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Token expired and IMS down: 401, then token errors retried by the backoff, no exit."""
    bridge = solo(sim, kafka_bootstrap, tmp_path).start()
    try:
        flowing(sim, 500)
        sim.set_mode("token_down")
        sim.expire_tokens()
        asked = sim.state()["token_requests"]
        dropped_at = time.time()
        sim.drop_connections(mid_chunk=True)
        wait_until(
            lambda: sim.state()["token_requests"] >= asked + 3, 40, "3 failed token requests"
        )
        assert bridge.proc is not None and bridge.proc.poll() is None, "a 503 from IMS is not fatal"
        ended = time.time()
        sim.set_mode("normal")
        rec = recovered(sim, ended, timeout=CAP_S + 10)
        assert refusals(sim, 401), "the expired token must have been refused once"
        assert min(reconnect_gaps([a for a in sim.attempts() if a["t"] >= dropped_at])) >= (
            GRACE_S - 0.05
        )
        errors = [d for d in log_events(bridge, "upstream.attempt") if d.get("outcome") == "error"]
        assert errors and all("503" in str(d.get("error")) for d in errors), errors[:3]
        flowing(sim, len(sim.emitted_hit_ids()) + 500)
        finish("token endpoint down", sim, [bridge], kafka_bootstrap, recovery_s=rec)
    finally:
        assert bridge.stop() == 0


def test_token_expires_mid_stream(sim: Simulator, kafka_bootstrap: str, tmp_path: Path) -> None:
    """Token expired while streaming, then a drop: one 401, a new token, resumed after the grace."""
    bridge = solo(sim, kafka_bootstrap, tmp_path).start()
    try:
        flowing(sim, 500)
        sim.expire_tokens()
        tokens = len(sim.issued_tokens())
        dropped_at = time.time()
        sim.drop_connections(mid_chunk=True)
        rec = recovered(sim, dropped_at)
        after = [a for a in sim.attempts() if a["t"] >= dropped_at]
        assert [a["status"] for a in after[:2]] == [401, 200], after
        assert len(sim.issued_tokens()) == tokens + 1
        assert min(reconnect_gaps(after)) >= GRACE_S - 0.05
        flowing(sim, len(sim.emitted_hit_ids()) + 500)
        no_ghost_refusals(sim)
        finish("token expiry mid-stream", sim, [bridge], kafka_bootstrap, recovery_s=rec)
    finally:
        assert bridge.stop() == 0


def test_outage_beyond_the_resume_window_loses_what_live_stream_skips(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Refused for longer than Live Stream's resume window: Live Stream restarts at the newest
    hit, so the hits produced meanwhile are never sent to anyone (that loss is Live Stream's
    semantics, not the bridge's); everything that was sent is committed exactly once."""
    window_s = 3.0
    with make_sim(resume_window_s=window_s) as sim:
        bridge = solo(sim, kafka_bootstrap, tmp_path).start()
        try:
            flowing(sim, 500)
            sim.set_mode("status", code=503)
            sim.drop_connections(mid_chunk=False)
            wait_until(lambda: sim.live_connections() == 0, 10, "the drop")
            # With no stream live (and every request refused) these stay put until the resume.
            sent_before_drop = len(sim.emitted_hit_ids())
            produced_at_drop = sim.state()["produced"]
            gone_at = time.time()
            # Refused until the window has certainly passed (the fault, not a synchronisation).
            wait_until(
                lambda: time.time() - gone_at > window_s + 1 and len(refusals(sim, 503)) >= 2,
                30,
                "the resume window to pass",
            )
            # The resumed stream is admitted after this read and before the one below, so it
            # starts at a seq between the two, if it starts at the newest hit.
            produced_before_resume = sim.state()["produced"]
            normal_at = time.time()
            sim.set_mode("normal")
            # The first 200 since the drop (a request that arrived just before set_mode and
            # was admitted just after carries an earlier time than normal_at).
            resumed = wait_until(
                lambda: first_stream_after(sim.attempts, gone_at),
                CAP_S + 10,
                "a new upstream stream",
            )
            produced_after_resume = sim.state()["produced"]
            flowing(sim, len(sim.emitted_hit_ids()) + 500)
            rec = max(0.0, resumed - normal_at)
            finish("beyond resume window", sim, [bridge], kafka_bootstrap, recovery_s=rec)
            # What was never sent, from the simulator's own record, up to the newest hit it
            # sent: what it still had queued when the scenario ended is not a skip.
            seq_of = {sim.corpus.hit_id(seq): seq for seq in range(sim.state()["produced"])}
            assert None not in seq_of, "every record is a hit in this scenario"
            sent = sorted(seq_of[hit] for hit in sim.emitted_hit_ids())
            skipped = sorted(set(range(sent[-1])) - set(sent))
            assert skipped, "nothing was skipped: the resume window did not pass"
            first, resumed_at = skipped[0], skipped[-1] + 1
            print(
                f"skipped by Live Stream: {len(skipped)} = {produced_at_drop - first} queued "
                f"but unsent at the drop + {resumed_at - produced_at_drop} produced during the "
                f"outage (rate x outage = {RATE * (resumed - gone_at):.0f})"
            )
            # One skip, with nothing else missing before or after it ...
            assert skipped == list(range(first, resumed_at)), "more than one gap"
            # ... from the first hit the dropped stream had not fully written ...
            assert first == sent_before_drop, (first, sent_before_drop)
            # ... to the newest hit when the resumed stream was admitted.
            assert produced_before_resume <= resumed_at <= produced_after_resume, (
                produced_before_resume,
                resumed_at,
                produced_after_resume,
            )
            # The outage outlasted the window by a second: at least a window's worth skipped.
            assert resumed_at - produced_at_drop >= RATE * window_s, (produced_at_drop, resumed_at)
        finally:
            assert bridge.stop() == 0


def test_fenced_single_instance_waits_the_grace_before_reconnecting(
    sim: Simulator, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A single instance fenced by another writer of its transactional.id leads again, but
    its next connection still waits the full grace after its last close; none lost."""
    grace_s = 4.0
    bridge = solo(
        sim,
        kafka_bootstrap,
        tmp_path,
        BRIDGE_LIVESTREAM__RECONNECT_GRACE_S=str(grace_s),
        BRIDGE_LIVESTREAM__BACKOFF_CAP_S="8",
    ).start()
    try:
        flowing(sim, 500)
        intruder = Producer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "transactional.id": bridge.env["BRIDGE_KAFKA__TRANSACTIONAL_ID"],
                "log_level": 3,
            }
        )
        fenced_at = time.time()
        intruder.init_transactions(30)  # bumps the epoch: the bridge's producer is fenced
        wait_until(lambda: log_events(bridge, "bridge.fenced"), 30, "the bridge to be fenced")
        rec = recovered(sim, fenced_at, timeout=grace_s + 20)
        gaps = reconnect_gaps(streams(sim))
        assert gaps and min(gaps) >= grace_s - 0.05, gaps
        flowing(sim, len(sim.emitted_hit_ids()) + 500)
        no_ghost_refusals(sim)
        finish("fenced single instance", sim, [bridge], kafka_bootstrap, recovery_s=rec)
    finally:
        assert bridge.stop() == 0


def test_publisher_fenced_between_commits_raises_fenced_error(kafka_bootstrap: str) -> None:
    """Fenced while a transaction is open and no commit is due: the next ``maybe_commit``
    raises ``FencedError`` (the service steps down), never a raw ``KafkaException`` (which
    the service does not expect: the process would crash with exit 1)."""
    from bridge.config import KafkaSettings, PublishSettings
    from bridge.errors import FencedError
    from bridge.observability import Metrics
    from bridge.publish import Publisher

    name = deployment_name()
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap,
        topic=f"hits-{name}",
        dlq_topic=f"hits-{name}-dlq",
        transactional_id=f"txn-{name}",
        partitions=1,
    )
    from bridge.topics import ensure_topics

    ensure_topics(kafka)
    # No commit falls due during the test: maybe_commit only serves the producer.
    cfg = PublishSettings(commit_interval_ms=600_000, dedupe_window=1000)
    publisher = Publisher(kafka, cfg, Metrics())
    publisher.begin(None)
    for n in range(20):
        publisher.publish(b'{"hitIdHigh":1,"hitIdLow":%d}' % n, time.time())
    intruder = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"txn-{name}"})
    intruder.init_transactions(30)
    raised: list[BaseException] = []

    def step() -> bool:
        try:
            publisher.maybe_commit()
            publisher.publish(b'{"hitIdHigh":2,"hitIdLow":%d}' % time.monotonic_ns(), time.time())
        except Exception as exc:
            raised.append(exc)
        return bool(raised)

    try:
        wait_until(step, 30, "the fence to surface")
    finally:
        publisher.abort()
    assert isinstance(raised[0], FencedError), f"{type(raised[0]).__name__}: {raised[0]}"


# -- broker faults ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnBroker]:
    """A single-node broker of this module's own, started via scripts/kafka-local."""
    broker = OwnBroker(tmp_path_factory.mktemp("broker") / "kafka")
    took = broker.start()
    print(f"\nown broker {broker.bootstrap} ready in {took:.1f}s")
    try:
        yield broker
    finally:
        broker.kill()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_broker_stop_start_mid_stream_pair(own_broker: OwnBroker, tmp_path: Path) -> None:
    """Broker stopped and started under a streaming pair: leadership steps down, upstream is
    closed cleanly, a replica leads again, nothing lost, doubled or zombie-visible."""
    if not own_broker.running():
        own_broker.start()
    with make_sim(rate=400.0) as sim:
        env = bridge_env(
            sim,
            own_broker.bootstrap,
            BRIDGE_LIVESTREAM__RECONNECT_GRACE_S=str(GRACE_S),
            BRIDGE_LIVESTREAM__BACKOFF_CAP_S=str(CAP_S),
            BRIDGE_PUBLISH__KAFKA_OUTAGE_S="5",
            BRIDGE_ELECTION__SESSION_TIMEOUT_MS="6000",
        )
        a, b = BridgeProc("a", env, tmp_path), BridgeProc("b", dict(env), tmp_path)
        a.start()
        b.start()
        try:
            wait_streaming([a, b], 90, time.monotonic())
            flowing(sim, 1500)
            own_broker.stop()
            wait_until(lambda: sim.live_connections() == 0, 30, "upstream to be closed")
            assert sim.state()["ghosts"] == 0, "the close must be clean"
            own_broker.start()
            back = time.monotonic()
            _, rec = wait_streaming([a, b], 90, back)
            flowing(sim, len(sim.emitted_hit_ids()) + 1000)
            no_ghost_refusals(sim)
            assert sim.max_concurrent_connections() == 1
            finish(
                "broker stop/start (pair)",
                sim,
                [a, b],
                own_broker.bootstrap,
                recovery_s=rec,
                timeout=150,
            )
        finally:
            codes = [a.stop(), b.stop()]
        assert codes == [0, 0], (a.logs()[-2000:], b.logs()[-2000:])
        # The outage must not flood the log, nor break its format (JSON lines): librdkafka's
        # own lines go through the bridge's logging, repeats held back.
        for proc in (a, b):
            lines = proc.logs().splitlines()
            raw = [line for line in lines if not line.startswith("{")]
            print(f"{proc.name}: {len(lines)} log lines, {len(raw)} not JSON")
            assert raw == [], f"{len(raw)} raw librdkafka lines, e.g. {raw[:3]}"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_broker_killed_for_30s(own_broker: OwnBroker, tmp_path: Path) -> None:
    """Broker kill -9 for 30 s under one replica with kafka_outage_s=5: upstream is closed
    cleanly after the outage limit and not reopened until Kafka is back; zero lost/doubled."""
    if not own_broker.running():
        own_broker.start()
    outage_s, down_s = 5.0, 30.0
    with make_sim(rate=400.0) as sim:
        bridge = solo(
            sim, own_broker.bootstrap, tmp_path, BRIDGE_PUBLISH__KAFKA_OUTAGE_S=str(outage_s)
        ).start()
        try:
            wait_streaming([bridge], 60, time.monotonic())
            flowing(sim, 1500)
            killed = time.monotonic()
            own_broker.kill()
            wait_until(lambda: sim.live_connections() == 0, outage_s + 15, "the upstream close")
            closed_after = time.monotonic() - killed
            last = streams(sim)[-1]
            assert last["reason"].startswith("client closed cleanly"), last
            attempts = len(sim.attempts())
            # Keep the broker down for the rest of the 30 s (the fault itself); meanwhile the
            # bridge must not reconnect upstream nor die.
            while time.monotonic() - killed < down_s:
                assert len(sim.attempts()) == attempts, "reconnected while Kafka was down"
                assert bridge.proc is not None and bridge.proc.poll() is None
                time.sleep(0.5)
            own_broker.start()
            back = time.monotonic()
            _, rec = wait_streaming([bridge], 120, back)
            print(f"\nupstream closed {closed_after:.1f}s after the kill; streaming {rec:.1f}s "
                  "after the broker was back")  # fmt: skip
            flowing(sim, len(sim.emitted_hit_ids()) + 1000)
            assert sim.state()["ghosts"] == 0
            no_ghost_refusals(sim)
            finish(
                "broker kill -9, 30 s",
                sim,
                [bridge],
                own_broker.bootstrap,
                recovery_s=rec,
                timeout=150,
            )
            # librdkafka retries a refused connect several times a second; the log must not.
            kafka_lines = [
                line for line in bridge.logs().splitlines() if '"logger": "bridge.kafka.' in line
            ]
            print(f"librdkafka log lines over the outage: {len(kafka_lines)}")
            assert len(kafka_lines) <= 20, kafka_lines[:30]
        finally:
            code = bridge.stop()
        assert code == 0, bridge.logs()[-3000:]
