"""maxConnections = N: N slots over the replicas, one connection per slot, a standby for
the set, each slot fenced on its own.

Each scenario runs three real bridge processes with N = 2 against the simulator (which
spreads hits over the connections by visitor and keeps each connection's resume point)
and the real broker, electing through Kafka consumer groups or Kubernetes Leases on a real
kube-apiserver. Timings are short (Kafka session 6 s; lease 4 s; reconnect grace 2 s).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from livestream_sim import Simulator
from tests.backends import GRACE_S, KAFKA, KUBERNETES, LEASE, SESSION_S, kafka_env, kubernetes_env
from tests.harness import (
    BridgeProc,
    bridge_env,
    failover_simulator_config,
    finish,
    flowing,
    log_events,
    metric_value,
    stop_all,
    zombie_visible,
)
from tests.kubeutil import KubeAdmin, KubeServer
from tests.testutil import wait_until

SLOTS = 2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]


@pytest.fixture
def backend_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Election settings of the backend the test names; for Kubernetes a fresh namespace and
    a ServiceAccount that may get and update only the slots' Leases."""
    if request.param == "kafka":
        return kafka_env()
    kube: KubeServer = request.getfixturevalue("kube")
    admin: KubeAdmin = request.getfixturevalue("admin")
    ns: str = request.getfixturevalue("ns")
    # The chart's Role for N = 3 (the change test ends there; N = 2 uses two of them).
    return kubernetes_env(kube, admin, ns, tmp_path, LEASE, f"{LEASE}-1", f"{LEASE}-2")


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """The failover simulator (its resume replay covers what a dead holder had in flight)."""
    with Simulator(failover_simulator_config()) as s:
        yield s


@contextlib.contextmanager
def replicas(env: dict[str, str], log_dir: Path, names: str = "abc") -> Iterator[list[BridgeProc]]:
    """Replicas of one deployment, started together and stopped however the test ends."""
    procs = [BridgeProc(name, dict(env), log_dir).start() for name in names]
    try:
        yield procs
    except BaseException as exc:
        for problem in stop_all(procs):
            exc.add_note(f"and then: {problem}")
        raise
    problems = stop_all(procs)
    if problems:
        raise AssertionError("; ".join(str(p) for p in problems))


@pytest.fixture
def three(
    sim: Simulator, kafka_bootstrap: str, backend_env: dict[str, str], tmp_path: Path
) -> Iterator[list[BridgeProc]]:
    """Three replicas of one deployment with maxConnections = 2."""
    env = bridge_env(
        sim,
        kafka_bootstrap,
        BRIDGE_LIVESTREAM__MAX_CONNECTIONS=str(SLOTS),
        BRIDGE_LIVESTREAM__RECONNECT_GRACE_S=str(GRACE_S),
        BRIDGE_LIVESTREAM__BACKOFF_CAP_S="8",
        **backend_env,
    )
    with replicas(env, tmp_path) as procs:
        yield procs


def slot_of(proc: BridgeProc) -> int | None:
    """The slot ``proc``'s /status says it holds while streaming (None otherwise)."""
    status: dict[str, Any] | None = proc.status()
    if status is None or status.get("upstream") != "streaming":
        return None
    slot = status.get("slot")
    return slot if isinstance(slot, int) else None


def holders(procs: list[BridgeProc]) -> dict[int, BridgeProc]:
    """Slot -> the replica streaming it; fails if two replicas stream one slot."""
    seen: dict[int, BridgeProc] = {}
    for proc in procs:
        if (slot := slot_of(proc)) is not None:
            if slot in seen:
                raise AssertionError(f"slot {slot} streamed by {seen[slot].name} and {proc.name}")
            seen[slot] = proc
    return seen


def all_slots_streaming(
    procs: list[BridgeProc], timeout: float = 60, slots: int = SLOTS
) -> dict[int, BridgeProc]:
    """Wait until each of ``slots`` slots is streamed by one replica; slot -> replica."""

    def every_slot() -> dict[int, BridgeProc] | None:
        held = holders(procs)
        return held if sorted(held) == list(range(slots)) else None

    return wait_until(every_slot, timeout, f"{slots} slots to stream")


def finish_slots(sim: Simulator, bootstrap: str, topic: str) -> None:
    """``harness.finish``, with zombie-visible records judged per producer id: each slot
    has its own transactional id, so one slot's takeover deposes only that slot's writers,
    and the log does not say which producer id is which slot's. A writer counts as deposed
    from its successor's first write (Kafka's own fencing point)."""
    finish(sim, bootstrap, topic)
    zombies = zombie_visible(bootstrap, [topic, f"{topic}-dlq"])
    if zombies is not None:
        print(zombies.line())
        assert zombies.records == 0, zombies.detail


def refusals_409(sim: Simulator) -> list[dict[str, Any]]:
    return [a for a in sim.attempts() if a["status"] == 409]


@pytest.mark.parametrize("backend_env", [KAFKA, KUBERNETES], indirect=True)
def test_three_replicas_hold_two_slots(
    sim: Simulator, three: list[BridgeProc], kafka_bootstrap: str
) -> None:
    """Three replicas started together with N = 2: two hold one slot each (0 and 1), the
    third stands by, the simulator never sees a third connection or a 409, and every hit of
    both connections is committed once."""
    held = all_slots_streaming(three)
    standby = next(p for p in three if p not in held.values())
    flowing(sim, 3000)
    status = standby.status()
    assert status is not None and status["role"] == "standby" and status["slot"] is None
    assert status["max_connections"] == SLOTS
    for slot, proc in held.items():
        status = proc.status()
        assert status is not None and status["role"] == "leader" and status["slot"] == slot
        text = proc.get("/metrics")[1].decode()
        assert metric_value(text, "livestream_bridge_slot") == slot
        assert metric_value(text, "livestream_bridge_upstream_connected", slot=str(slot)) == 1
        assert metric_value(text, "livestream_bridge_records_received_total", slot=str(slot)) > 0
        assert f'"slot": {slot}' in proc.logs()
    assert sim.max_concurrent_connections() == SLOTS
    assert {a["conns"] for a in sim.attempts() if "conns" in a} == {SLOTS}
    assert refusals_409(sim) == []
    finish_slots(sim, kafka_bootstrap, three[0].env["BRIDGE_KAFKA__TOPIC"])


@pytest.mark.parametrize("backend_env", [KAFKA], indirect=True)
def test_kill_9_of_a_slot_holder_three_times(
    sim: Simulator, three: list[BridgeProc], kafka_bootstrap: str
) -> None:
    """kill -9 of a slot holder, three times in a row (each restarted): the standby takes
    that slot within session + grace + 10 s, the other slot's holder streams throughout, and
    nothing is lost or doubled."""
    bound = SESSION_S + GRACE_S + 10
    times = []
    for round_ in range(3):
        held = all_slots_streaming(three)
        flowing(sim, 1000 * (round_ + 1))
        slot = round_ % SLOTS
        victim, other = held[slot], held[1 - slot]
        killed_at = time.monotonic()
        victim.kill()

        def taken_over(
            slot: int = slot, victim: BridgeProc = victim, other: BridgeProc = other
        ) -> bool:
            assert slot_of(other) == 1 - slot, "the other slot stopped streaming"
            return any(slot_of(p) == slot for p in three if p is not victim)

        wait_until(taken_over, bound + 5, f"slot {slot} to be taken over", step=0.2)
        times.append(time.monotonic() - killed_at)
        victim.start()
    print("slot takeover seconds: " + " ".join(f"{t:.1f}" for t in times))
    assert max(times) <= bound
    assert sim.max_concurrent_connections() <= SLOTS
    finish_slots(sim, kafka_bootstrap, three[0].env["BRIDGE_KAFKA__TOPIC"])


@pytest.mark.parametrize("backend_env", [KAFKA], indirect=True)
def test_sigstop_of_a_slot_holder_is_fenced(
    sim: Simulator, three: list[BridgeProc], kafka_bootstrap: str
) -> None:
    """SIGSTOP of a slot holder for twice the session after the takeover: the standby takes
    that slot, streams only once the frozen holder's connection is gone, the woken holder
    steps down, never three connections, and nothing the zombie wrote becomes visible."""
    held = all_slots_streaming(three)
    flowing(sim, 1000)
    victim = held[0]
    victim.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()

    def successor() -> BridgeProc | None:
        for proc in three:
            status = proc.status() if proc is not victim else None
            if status is not None and status["role"] == "leader" and status["slot"] == 0:
                return proc
        return None

    new = wait_until(successor, SESSION_S * 2 + 10, "another replica to take slot 0")
    led_at = time.monotonic()
    print(f"slot SIGSTOP takeover (standby leads): {led_at - stopped_at:.1f}s")
    while time.monotonic() < led_at + 2 * SESSION_S:  # the fault itself, not a sync
        assert slot_of(held[1]) == 1, "the other slot stopped streaming"
        time.sleep(0.2)
    victim.signal(signal.SIGCONT)
    wait_until(lambda: victim.role() == "standby", 30, "the woken holder to step down")
    wait_until(lambda: slot_of(new) == 0, 60, "the successor to stream slot 0")
    assert sim.max_concurrent_connections() <= SLOTS
    assert slot_of(held[1]) == 1
    finish_slots(sim, kafka_bootstrap, three[0].env["BRIDGE_KAFKA__TOPIC"])


@pytest.mark.parametrize("backend_env", [KAFKA, KUBERNETES], indirect=True)
def test_sigterm_hands_a_slot_over_without_the_grace(
    sim: Simulator, kafka_bootstrap: str, backend_env: dict[str, str], tmp_path: Path
) -> None:
    """SIGTERM of a slot holder with a 30 s reconnect grace: its clean release lets the
    standby stream that slot within 10 s, no 409, nothing lost."""
    env = bridge_env(
        sim,
        kafka_bootstrap,
        BRIDGE_LIVESTREAM__MAX_CONNECTIONS=str(SLOTS),
        BRIDGE_LIVESTREAM__RECONNECT_GRACE_S="30",
        BRIDGE_LIVESTREAM__BACKOFF_CAP_S="60",
        **backend_env,
    )
    with replicas(env, tmp_path) as procs:
        held = all_slots_streaming(procs)
        flowing(sim, 1000)
        stopped_at = time.monotonic()
        assert held[1].stop() == 0
        rest = [p for p in procs if p is not held[1]]
        wait_until(lambda: 1 in holders(rest), 10, "the standby to stream slot 1")
        print(f"slot SIGTERM handover: {time.monotonic() - stopped_at:.1f}s")
        assert slot_of(held[0]) == 0
        assert refusals_409(sim) == []
        assert sim.max_concurrent_connections() <= SLOTS
        finish_slots(sim, kafka_bootstrap, env["BRIDGE_KAFKA__TOPIC"])


@pytest.mark.parametrize("backend_env", [KAFKA, KUBERNETES], indirect=True)
def test_changing_n_from_2_to_3_under_traffic(
    sim: Simulator,
    three: list[BridgeProc],
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    """A rolling change of N from 2 to 3: four replicas with N = 3 join three streaming with
    N = 2 and wait (one takes the free slot 2 and finds the others on another N); the old
    ones stop one by one; then three new ones stream, the simulator never saw two
    maxConnections at once (no 409), and nothing is lost or doubled."""
    all_slots_streaming(three)
    flowing(sim, 1000)
    env3 = {**three[0].env, "BRIDGE_LIVESTREAM__MAX_CONNECTIONS": "3"}
    with replicas(env3, tmp_path, "defg") as new:
        wait_until(
            lambda: any(log_events(p, "election.slots_disagree") for p in new),
            60,
            "a new replica to find the old N in use",
        )
        assert all(slot_of(p) is None for p in new)
        wait_until(
            lambda: any((p.status() or {}).get("upstream_state") == "waiting_slots" for p in new),
            10,
            "the waiting holder's upstream state to say why",
        )
        for old in three:
            assert old.stop() == 0
        held = all_slots_streaming(new, 90, slots=3)
        assert all(p.status()["max_connections"] == 3 for p in held.values())  # type: ignore[index]
        streams = [a for a in sim.attempts() if a["status"] == 200]
        assert [a["conns"] for a in streams] == sorted(a["conns"] for a in streams)
        flowing(sim, len(sim.emitted_hit_ids()) + 1000)
        assert refusals_409(sim) == []
        finish_slots(sim, kafka_bootstrap, env3["BRIDGE_KAFKA__TOPIC"])
