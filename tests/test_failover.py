"""Hot standby with the Kafka election: one connection, fast takeover, fenced zombies."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.simulator import Simulator
from tests.harness import (
    BridgeProc,
    bridge_env,
    failover_simulator_config,
    finish,
    flowing,
    leader_of,
    running_pair,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

SESSION_S = 6.0
GRACE_S = 2.0


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """The simulator every failover test runs against (see the harness for its replay)."""
    cfg = failover_simulator_config()
    with Simulator(cfg) as s:
        yield s


@pytest.fixture
def pair(
    sim: Simulator, kafka_bootstrap: str, tmp_path: Path
) -> Iterator[tuple[BridgeProc, BridgeProc]]:
    """Two replicas of one deployment (shared election group and transactional id)."""
    env = bridge_env(
        sim,
        kafka_bootstrap,
        BRIDGE_LIVESTREAM__RECONNECT_GRACE_S=str(GRACE_S),
        BRIDGE_LIVESTREAM__BACKOFF_CAP_S="8",
        BRIDGE_ELECTION__SESSION_TIMEOUT_MS=str(int(SESSION_S * 1000)),
    )
    with running_pair(env, tmp_path) as pair:
        yield pair


def test_pair_holds_exactly_one_connection(
    sim: Simulator, pair: tuple[BridgeProc, BridgeProc], kafka_bootstrap: str
) -> None:
    """Two replicas started together: one connects, the simulator never sees two, no 409."""
    lead, standby = leader_of(pair)
    flowing(sim, 2000)
    assert standby.role() == "standby"
    assert sim.max_concurrent_connections() == 1
    assert [a for a in sim.attempts() if a["status"] == 409] == []
    assert lead.status()["leader"] == standby.status()["leader"]  # type: ignore[index]
    finish(sim, kafka_bootstrap, lead.env["BRIDGE_KAFKA__TOPIC"], pair)


def test_kill_9_of_the_leader_fails_over_within_bounds(
    sim: Simulator, pair: tuple[BridgeProc, BridgeProc], kafka_bootstrap: str
) -> None:
    """kill -9: the standby streams within session + grace + 10 s; nothing lost or doubled."""
    lead, standby = leader_of(pair)
    flowing(sim, 1000)
    killed_at = time.monotonic()
    lead.kill()
    wait_until(standby.streaming, SESSION_S + GRACE_S + 10 + 5, "the standby to stream")
    failover = time.monotonic() - killed_at
    print(f"kill -9 failover: {failover:.1f}s")
    assert failover <= SESSION_S + GRACE_S + 10
    lead.start()
    finish(sim, kafka_bootstrap, lead.env["BRIDGE_KAFKA__TOPIC"], pair)


def test_sigterm_hands_over_promptly(
    sim: Simulator, pair: tuple[BridgeProc, BridgeProc], kafka_bootstrap: str
) -> None:
    """SIGTERM: the leader releases cleanly and the standby streams within grace + 5 s."""
    lead, standby = leader_of(pair)
    flowing(sim, 1000)
    stopped_at = time.monotonic()
    assert lead.stop() == 0
    wait_until(standby.streaming, GRACE_S + 5 + 5, "the standby to stream")
    handover = time.monotonic() - stopped_at
    print(f"SIGTERM handover: {handover:.1f}s")
    assert handover <= GRACE_S + 5
    assert [a for a in sim.attempts() if a["status"] == 409] == []
    finish(sim, kafka_bootstrap, lead.env["BRIDGE_KAFKA__TOPIC"], pair)


def test_sigstop_leader_is_deposed_and_fenced(
    sim: Simulator, pair: tuple[BridgeProc, BridgeProc], kafka_bootstrap: str
) -> None:
    """SIGSTOP for twice the session: after SIGCONT the old leader steps down without
    reconnecting, the new one streams, and nothing the zombie wrote becomes visible."""
    lead, standby = leader_of(pair)
    flowing(sim, 1000)
    lead.signal(signal.SIGSTOP)
    wait_until(lambda: standby.role() == "leader", SESSION_S * 2 + 10, "the standby to lead")
    # Hold the zombie frozen for twice the session: this wait is the fault, not a sync.
    deadline = time.monotonic() + 2 * SESSION_S
    while time.monotonic() < deadline:
        assert standby.role() == "leader"
        time.sleep(0.5)
    attempts_before = len(sim.attempts())
    lead.signal(signal.SIGCONT)
    wait_until(lambda: lead.role() == "standby", 30, "the old leader to step down")
    wait_until(standby.streaming, 60, "the new leader to stream")
    old = lead.logs()
    assert "bridge.leading" in old
    # The frozen zombie kept its socket, so the new leader was refused (409) until the
    # zombie woke, saw it was deposed and closed cleanly; two never streamed at once.
    assert sim.max_concurrent_connections() == 1
    assert sim.live_connections() == 1
    assert len(sim.attempts()) > attempts_before
    finish(sim, kafka_bootstrap, lead.env["BRIDGE_KAFKA__TOPIC"], pair)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ten_kill_restart_cycles(
    sim: Simulator, pair: tuple[BridgeProc, BridgeProc], kafka_bootstrap: str
) -> None:
    """Ten kill -9 / restart cycles: zero lost, zero duplicated, never two live connections
    held by the pair at once beyond a dead one's ghost."""
    times = []
    for _ in range(10):
        lead, standby = leader_of(pair)
        wait_until(lambda: len(sim.emitted_hit_ids()) > 0, 30, "hits to flow")
        killed_at = time.monotonic()
        lead.kill()
        wait_until(standby.streaming, SESSION_S + GRACE_S + 20, "the standby to stream")
        times.append(time.monotonic() - killed_at)
        lead.start()
    print("failover seconds: " + " ".join(f"{t:.1f}" for t in times))
    assert max(times) <= SESSION_S + GRACE_S + 10
    finish(sim, kafka_bootstrap, pair[0].env["BRIDGE_KAFKA__TOPIC"], pair)


def test_probes_hold_on_leader_and_standby_while_upstream_is_down(
    sim: Simulator, pair: tuple[BridgeProc, BridgeProc], kafka_bootstrap: str
) -> None:
    """/healthz and /readyz answer 200 on leader and standby alike, and stay 200 while Live
    Stream refuses the leader (upstream trouble is not a reason to restart or unroute)."""
    lead, standby = leader_of(pair)
    for proc in (lead, standby):
        assert proc.get("/healthz")[0] == 200
        assert proc.get("/readyz")[0] == 200
    sim.set_mode("status", code=503)
    sim.drop_connections()
    wait_until(lambda: lead.status()["upstream"] != "streaming", 30, "the leader to lose upstream")  # type: ignore[index]
    wait_until(lambda: any(a["status"] == 503 for a in sim.attempts()), 30, "a refused reconnect")
    for proc in (lead, standby):
        assert proc.get("/healthz")[0] == 200
        assert proc.get("/readyz")[0] == 200
    assert lead.role() == "leader"
    sim.set_mode("normal")
    wait_until(lead.streaming, 60, "the leader to stream again")
    finish(sim, kafka_bootstrap, lead.env["BRIDGE_KAFKA__TOPIC"], pair)
