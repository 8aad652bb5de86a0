"""Hot standby with the Kubernetes Lease election: the failover scenarios of
``tests/test_failover.py``, run by two real bridge processes against a real kube-apiserver.

Each replica authenticates with a bound ServiceAccount token whose Role is the one the Helm
chart grants (get and update on the one Lease, create on leases), handed over in a
kubeconfig. Timings are short (lease 4 s, renew deadline 3 s, retry 0.5 s, reconnect grace
2 s); measured times print with ``-s``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.simulator import Simulator
from tests import harness
from tests.harness import (
    BridgeProc,
    bridge_env,
    failover_simulator_config,
    finish,
    flowing,
    running_pair,
    takeovers,
    wait_until,
    zombie_visible,
)
from tests.kubeutil import (
    KubeAdmin,
    KubeServer,
    kube_local,
    kube_server_from_env,
    write_kubeconfig,
)

LEASE_S, RENEW_S, RETRY_S = 4.0, 3.0, 0.5
GRACE_S = 2.0
LEASE = "livestream-bridge"

# Without a server in the environment and without the binaries, the session fixture builds
# kube-apiserver first (10-20 minutes on 2 cores), inside the first test's timeout.
_NEEDS_BUILD = kube_server_from_env() is None and kube_local("built").returncode != 0
pytestmark = [pytest.mark.integration, pytest.mark.timeout(3600 if _NEEDS_BUILD else 420)]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """An endless simulator at a modest rate whose resume replays cover in-flight records
    (the same shape as tests/test_failover.py, for the same reasons)."""
    cfg = failover_simulator_config()
    with Simulator(cfg) as s:
        yield s


@pytest.fixture
def lease_kubeconfig(kube: KubeServer, admin: KubeAdmin, ns: str, tmp_path: Path) -> Path:
    """A kubeconfig for a ServiceAccount bound by the chart's minimal Lease Role only."""
    admin.create_lease_role(ns, "livestream-bridge", LEASE)
    token = admin.mint_token(ns, "livestream-bridge")
    return write_kubeconfig(tmp_path / "bridge.kubeconfig", kube, token)


@pytest.fixture
def pair(
    sim: Simulator, kafka_bootstrap: str, ns: str, lease_kubeconfig: Path, tmp_path: Path
) -> Iterator[tuple[BridgeProc, BridgeProc]]:
    """Two replicas of one deployment electing through one Lease (shared transactional id)."""
    env = bridge_env(
        sim,
        kafka_bootstrap,
        BRIDGE_LIVESTREAM__RECONNECT_GRACE_S=str(GRACE_S),
        BRIDGE_LIVESTREAM__BACKOFF_CAP_S="8",
        BRIDGE_ELECTION__BACKEND="kubernetes",
        BRIDGE_ELECTION__LEASE_NAME=LEASE,
        BRIDGE_ELECTION__LEASE_NAMESPACE=ns,
        BRIDGE_ELECTION__LEASE_DURATION_S=str(LEASE_S),
        BRIDGE_ELECTION__RENEW_DEADLINE_S=str(RENEW_S),
        BRIDGE_ELECTION__RETRY_PERIOD_S=str(RETRY_S),
        BRIDGE_ELECTION__KUBECONFIG=str(lease_kubeconfig),
    )
    with running_pair(env, tmp_path) as pair:
        yield pair


def identity(proc: BridgeProc) -> str:
    """The election identity BridgeProc gave the current run of ``proc``."""
    return f"{proc.name}-{proc.runs}"


def leader_of(pair: tuple[BridgeProc, BridgeProc]) -> tuple[BridgeProc, BridgeProc]:
    """harness.leader_of, plus proof the election really ran through the Lease."""
    result = harness.leader_of(pair)
    for proc in result:
        assert "election.kubernetes.start" in proc.logs(), proc.logs()[-3000:]
    return result


def test_pair_holds_exactly_one_connection(
    sim: Simulator,
    pair: tuple[BridgeProc, BridgeProc],
    kafka_bootstrap: str,
    admin: KubeAdmin,
    ns: str,
) -> None:
    """Two replicas started together: one streams and holds the Lease, the simulator never
    sees two connections, and no 409."""
    lead, standby = leader_of(pair)
    assert admin.holder(ns, LEASE) == identity(lead)
    flowing(sim, 2000)
    assert standby.role() == "standby"
    assert not standby.streaming()
    assert admin.holder(ns, LEASE) == identity(lead)
    assert sim.max_concurrent_connections() == 1
    assert [a for a in sim.attempts() if a["status"] == 409] == []
    assert lead.status()["leader"] == standby.status()["leader"] == identity(lead)  # type: ignore[index]
    finish(sim, kafka_bootstrap, lead.env["BRIDGE_KAFKA__TOPIC"], pair)


@pytest.mark.slow
def test_kill_9_of_the_leader_fails_over_within_bounds(
    sim: Simulator,
    pair: tuple[BridgeProc, BridgeProc],
    kafka_bootstrap: str,
    admin: KubeAdmin,
    ns: str,
) -> None:
    """kill -9: the standby streams within lease + grace + 10 s; nothing lost or doubled."""
    lead, standby = leader_of(pair)
    flowing(sim, 1000)
    killed_at = time.monotonic()
    lead.kill()
    wait_until(standby.streaming, LEASE_S + GRACE_S + 10 + 5, "the standby to stream")
    failover = time.monotonic() - killed_at
    print(f"kill -9 failover: {failover:.1f}s")
    assert failover <= LEASE_S + GRACE_S + 10
    assert admin.holder(ns, LEASE) == identity(standby)
    lead.start()
    wait_until(lambda: lead.role() == "standby", 60, "the restarted replica to stand by")
    assert admin.holder(ns, LEASE) == identity(standby)
    assert sim.max_concurrent_connections() == 1
    finish(sim, kafka_bootstrap, lead.env["BRIDGE_KAFKA__TOPIC"], pair)


@pytest.mark.slow
def test_sigstop_leader_is_deposed_and_fenced(
    sim: Simulator,
    pair: tuple[BridgeProc, BridgeProc],
    kafka_bootstrap: str,
    admin: KubeAdmin,
    ns: str,
) -> None:
    """SIGSTOP for twice the lease duration: after SIGCONT the old leader steps down, the new
    one streams, and nothing the zombie wrote becomes visible."""
    lead, standby = leader_of(pair)
    flowing(sim, 1000)
    stopped_at = time.monotonic()
    lead.signal(signal.SIGSTOP)
    wait_until(lambda: standby.role() == "leader", LEASE_S * 2 + 10, "the standby to lead")
    print(f"SIGSTOP takeover (standby leads): {time.monotonic() - stopped_at:.1f}s")
    assert admin.holder(ns, LEASE) == identity(standby)
    # Hold the zombie frozen for twice the lease: this wait is the fault, not a sync.
    while time.monotonic() < stopped_at + 2 * LEASE_S:
        assert standby.role() == "leader"
        time.sleep(0.2)
    attempts_before = len(sim.attempts())
    continued_at = time.monotonic()
    lead.signal(signal.SIGCONT)
    wait_until(lambda: lead.role() == "standby", 30, "the old leader to step down")
    print(f"SIGCONT -> old leader standby: {time.monotonic() - continued_at:.1f}s")
    wait_until(standby.streaming, 60, "the new leader to stream")
    print(f"SIGSTOP -> new leader streams: {time.monotonic() - stopped_at:.1f}s")
    assert admin.holder(ns, LEASE) == identity(standby)
    old = lead.logs()
    assert "bridge.leading" in old
    assert "election.kubernetes.term_ended" in old, old[-3000:]
    # The frozen zombie kept its socket, so the new leader was refused (409) until the
    # zombie woke, saw it was deposed and closed cleanly; two never streamed at once.
    assert sim.max_concurrent_connections() == 1
    assert sim.live_connections() == 1
    assert len(sim.attempts()) > attempts_before
    topic = lead.env["BRIDGE_KAFKA__TOPIC"]
    finish(sim, kafka_bootstrap, topic)
    # Read from the broker's own segments when it shares this file system (else None).
    z = zombie_visible(kafka_bootstrap, [topic, f"{topic}-dlq"], takeovers((lead, standby)))
    print("zombie-visible: n/a" if z is None else z.line())
    assert z is None or z.records == 0, z.detail[:5]


def test_sigterm_hands_over_promptly(
    sim: Simulator,
    pair: tuple[BridgeProc, BridgeProc],
    kafka_bootstrap: str,
    admin: KubeAdmin,
    ns: str,
) -> None:
    """SIGTERM: the leader releases the Lease and the standby streams within grace + 5 s."""
    lead, standby = leader_of(pair)
    flowing(sim, 1000)
    stopped_at = time.monotonic()
    assert lead.stop() == 0
    wait_until(standby.streaming, GRACE_S + 5 + 5, "the standby to stream")
    handover = time.monotonic() - stopped_at
    print(f"SIGTERM handover: {handover:.1f}s")
    assert handover <= GRACE_S + 5
    assert admin.holder(ns, LEASE) == identity(standby)
    assert [a for a in sim.attempts() if a["status"] == 409] == []
    assert sim.max_concurrent_connections() == 1
    finish(sim, kafka_bootstrap, lead.env["BRIDGE_KAFKA__TOPIC"], pair)
