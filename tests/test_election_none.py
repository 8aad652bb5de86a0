"""Backend none across process restarts: a real ``livestream-bridge run`` killed with -9
while connected to the simulator, then started again on the same state file."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from livestream_sim import Simulator, SimulatorConfig
from tests.harness import BridgeProc, bridge_env, flowing
from tests.testutil import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# Longer than a bridge process needs to start and reach Kafka on a loaded 2-core machine,
# so a restart that ignores the grace shows up as a gap well below it.
GRACE_S = 8.0


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """An endless simulator whose vanished clients hold their slot for a grace's length."""
    cfg = SimulatorConfig(rate=300.0, ghost_s=GRACE_S, replay_on_resume=20000)
    with Simulator(cfg) as s:
        yield s


def solo(sim: Simulator, bootstrap: str, tmp_path: Path) -> BridgeProc:
    env = bridge_env(
        sim,
        bootstrap,
        BRIDGE_ELECTION__BACKEND="none",
        BRIDGE_ELECTION__STATE_FILE=str(tmp_path / "state" / "election.json"),
        BRIDGE_LIVESTREAM__RECONNECT_GRACE_S=str(GRACE_S),
        BRIDGE_LIVESTREAM__BACKOFF_CAP_S=str(4 * GRACE_S),
    )
    (tmp_path / "state").mkdir()
    return BridgeProc("solo", env, tmp_path)


def test_kill_9_and_restart_waits_the_grace(
    sim: Simulator, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """After a kill -9 while streaming, the restarted single instance does not reach the
    upstream again until the reconnect grace has passed since the first connection ended."""
    bridge = solo(sim, kafka_bootstrap, tmp_path).start()
    try:
        wait_until(bridge.streaming, 90, "the single instance to stream")
        flowing(sim, 300)
        bridge.kill()
        killed_at = time.time()
        bridge.start()
        wait_until(lambda: len(sim.attempts()) >= 2, 90, "the restarted bridge to connect")
        wait_until(bridge.streaming, 90, "the restarted bridge to stream")
    finally:
        bridge.stop()
    first, second = sim.attempts()[:2]
    assert first["duration_s"] is not None, first
    dropped_at = first["t"] + first["duration_s"]
    gap = second["t"] - dropped_at
    print(f"\nkill -9 at {killed_at:.3f}; drop seen {dropped_at:.3f}; next connection {gap:.2f}s")
    assert dropped_at >= killed_at - 1.0, (first, killed_at)
    assert gap >= GRACE_S, f"reconnected {gap:.2f}s after the drop (grace {GRACE_S}s)"
    assert second["status"] == 200, sim.attempts()
