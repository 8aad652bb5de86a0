"""End to end, one replica: the simulator upstream, the real broker downstream, a real process."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.simulator import Simulator, SimulatorConfig
from tests.harness import (
    BridgeProc,
    bridge_env,
    flowing,
    hit_ids,
    wait_for_all,
    wait_until,
)
from tests.kafkautil import read_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SECRET = "CLIENT-SECRET-e2e-7f3a9c"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """A simulator emitting a fixed number of hits quickly, with a distinctive secret.

    Its replay on resume covers everything it emits, standing for a Live Stream whose replay
    covers what a killed bridge held in flight (an open transaction and the reader queue,
    which a loaded machine can let grow to seconds of data); a loss here is the bridge's.
    """
    cfg = SimulatorConfig(
        rate=3000.0,
        total_hits=6000,
        client_secret=SECRET,
        malformed_every=500,
        empty_every=50,
        ghost_s=2.0,
        replay_on_resume=6000,
    )
    with Simulator(cfg) as s:
        yield s


def single(sim: Simulator, kafka_bootstrap: str, tmp_path: Path, **extra: str) -> BridgeProc:
    env = bridge_env(
        sim,
        kafka_bootstrap,
        client_secret=SECRET,
        BRIDGE_ELECTION__BACKEND="none",
        **extra,
    )
    return BridgeProc("solo", env, tmp_path)


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name} {labels}")


def test_every_hit_lands_once_and_metrics_agree(
    sim: Simulator, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """All emitted hits are committed exactly once, malformed lines go to the DLQ, and
    /metrics counts what the simulator sent; SIGTERM then exits 0."""
    bridge = single(sim, kafka_bootstrap, tmp_path).start()
    try:
        topic = bridge.env["BRIDGE_KAFKA__TOPIC"]
        v = wait_for_all(kafka_bootstrap, topic, sim.emitted_hit_ids, timeout=120)
        assert (v.lost, v.duplicated, v.unexpected) == ([], [], []), v.line()
        dlq = read_all(kafka_bootstrap, f"{topic}-dlq", timeout=30)
        assert dlq, "malformed lines must reach the dead-letter topic"
        assert all(dict(r.headers or [])["reason"] for r in dlq)

        def counted() -> bool:
            text = bridge.get("/metrics")[1].decode()
            return metric(text, "livestream_bridge_records_published_total") == v.emitted

        wait_until(counted, 30, "records_published_total to equal the emitted count")
        text = bridge.get("/metrics")[1].decode()
        dead = sum(
            metric(text, "livestream_bridge_records_dead_lettered_total", reason=r)
            for r in ("not_json", "not_object", "oversized", "missing_hit_id")
        )
        assert dead == len(dlq)
        assert metric(text, "livestream_bridge_upstream_connected") == 1
        assert bridge.status() is not None
    finally:
        code = bridge.stop()
    assert code == 0, bridge.logs()[-3000:]
    assert SECRET not in bridge.logs()


def test_values_are_byte_identical_and_keyed_by_visitor(
    sim: Simulator, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Each value is the simulator's record byte for byte; keys and headers follow the rules."""
    bridge = single(sim, kafka_bootstrap, tmp_path).start()
    try:
        topic = bridge.env["BRIDGE_KAFKA__TOPIC"]
        wait_for_all(kafka_bootstrap, topic, sim.emitted_hit_ids, timeout=120)
        records = read_all(kafka_bootstrap, topic, timeout=30)
    finally:
        bridge.stop()
    sent = sim.emitted_records()
    import orjson

    for rec in records:
        headers = dict(rec.headers or [])
        hit = headers["hit-id"].decode()
        assert rec.value == sent[hit], hit
        doc = orjson.loads(rec.value)
        if "visIdHigh" in doc and "visIdLow" in doc:
            assert rec.key == f"{doc['visIdHigh']}:{doc['visIdLow']}".encode()
        assert int(headers["received-at"]) > 1_600_000_000_000
    assert len(hit_ids(records)) == len(set(hit_ids(records)))


def test_restart_mid_stream_loses_and_duplicates_nothing(
    sim: Simulator, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """SIGTERM mid-stream, then a new process: the seeded window drops the replays, nothing lost."""
    bridge = single(sim, kafka_bootstrap, tmp_path).start()
    topic = bridge.env["BRIDGE_KAFKA__TOPIC"]
    flowing(sim, 1500)
    assert bridge.stop() == 0
    bridge.start()
    try:
        v = wait_for_all(kafka_bootstrap, topic, sim.emitted_hit_ids, timeout=120)
    finally:
        bridge.stop()
    assert (v.lost, v.duplicated, v.unexpected) == ([], [], []), v.line()


def test_kill_9_restart_loses_and_duplicates_nothing(
    sim: Simulator, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """kill -9 mid-stream and restart: the open transaction is aborted, Live Stream's replay
    fills the gap, the seeded window drops what was already committed."""
    bridge = single(sim, kafka_bootstrap, tmp_path).start()
    topic = bridge.env["BRIDGE_KAFKA__TOPIC"]
    flowing(sim, 1500)
    bridge.signal(signal.SIGKILL)
    bridge.wait(30)
    bridge.start()
    try:
        v = wait_for_all(kafka_bootstrap, topic, sim.emitted_hit_ids, timeout=150)
    finally:
        bridge.stop()
    assert (v.lost, v.duplicated, v.unexpected) == ([], [], []), v.line()
