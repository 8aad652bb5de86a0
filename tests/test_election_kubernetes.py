"""The Kubernetes Lease election backend against a real kube-apiserver and etcd.

The server comes from KUBE_LOCAL_SERVER/_ADMIN_TOKEN/_CA when set, else from
``scripts/kube-local start`` (which builds kube-apiserver and etcd from their Go modules on
first use). Without a server these tests fail, they never skip: a mock is not a test bed.
Timings are short (lease 3 s, renew deadline 2 s, retry 0.5 s); measured figures print with
``-s``.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from bridge.election.base import Term
from bridge.election.kubernetes import LAST_EVENT, KubernetesElection
from bridge.errors import ElectionError
from bridge.observability import Metrics, State
from tests.kubeutil import (
    LEASES,
    ROOT,
    KubeAdmin,
    KubeServer,
    LeaseWatch,
    TcpRelay,
    bridge_settings,
    kube_local,
    kube_server_from_env,
    write_kubeconfig,
)
from tests.testutil import wait_until

LEASE_S, RENEW_S, RETRY_S = 3.0, 2.0, 0.5
FAST = {"lease_duration_s": LEASE_S, "renew_deadline_s": RENEW_S, "retry_period_s": RETRY_S}
MICROTIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")

# The first run builds kube-apiserver (10-20 minutes on 2 cores) inside the session fixture,
# which pytest-timeout counts against the first test.
_NEEDS_BUILD = kube_server_from_env() is None and kube_local("built").returncode != 0
pytestmark = [pytest.mark.integration, pytest.mark.timeout(3600 if _NEEDS_BUILD else 120)]


@dataclass
class Cluster:
    """Builds elections for one test and closes them all at the end."""

    kube: KubeServer
    ns: str
    tmp: Path
    lease: str = "bridge"
    made: list[KubernetesElection] = field(default_factory=list)

    def election(
        self,
        identity: str,
        *,
        token: str | None = None,
        lease: str | None = None,
        server: str | None = None,
        **timings: float,
    ) -> KubernetesElection:
        config = write_kubeconfig(
            self.tmp / f"{identity}-{len(self.made)}.kubeconfig",
            self.kube,
            token or self.kube.token,
            server=server,
        )
        settings = bridge_settings(
            identity=identity,
            lease_name=lease or self.lease,
            lease_namespace=self.ns,
            kubeconfig=str(config),
            **{**FAST, **timings},
        )
        election = KubernetesElection(settings, Metrics(), State(identity=identity))
        self.made.append(election)
        return election


@pytest.fixture
def cluster(kube: KubeServer, ns: str, tmp_path: Path) -> Iterator[Cluster]:
    """Elections against the test server in this test's namespace."""
    c = Cluster(kube, ns, tmp_path)
    yield c
    for election in c.made:
        election.close()


class Candidate:
    """Runs ``wait_for_leadership`` in a thread; records the term and when it was won."""

    def __init__(
        self, election: KubernetesElection, barrier: threading.Barrier | None = None
    ) -> None:
        self.election = election
        self.barrier = barrier
        self.stop = threading.Event()
        self.term: Term | None = None
        self.won_at: float | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Candidate:
        self.thread.start()
        return self

    def _run(self) -> None:
        if self.barrier is not None:  # all candidates make their first attempt together
            self.barrier.wait()
        term = self.election.wait_for_leadership(self.stop)
        self.won_at = time.monotonic()
        self.term = term


def lead(election: KubernetesElection, timeout: float = 10) -> Term:
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    try:
        term = election.wait_for_leadership(stop)
    finally:
        timer.cancel()
    assert term is not None, f"{election.identity} did not become leader in {timeout} s"
    return term


def spec(admin: KubeAdmin, ns: str, name: str = "bridge") -> dict[str, object]:
    lease = admin.lease(ns, name)
    assert lease is not None
    result: dict[str, object] = lease["spec"]
    return result


def last_event(admin: KubeAdmin, ns: str, name: str = "bridge") -> dict[str, object]:
    lease = admin.lease(ns, name) or {}
    raw = (lease.get("metadata", {}).get("annotations") or {}).get(LAST_EVENT)
    result: dict[str, object] = json.loads(raw) if raw else {}
    return result


def test_minimal_rbac_role_is_enough_and_other_leases_are_forbidden(
    cluster: Cluster, admin: KubeAdmin, ns: str
) -> None:
    """A ServiceAccount token with only get/update on its Lease plus create elects, renews and
    releases, and is refused (403) on any other Lease."""
    admin.create_lease_role(ns, "bridge-sa", "bridge")
    token = admin.mint_token(ns, "bridge-sa")
    election = cluster.election("pod-a", token=token)
    election.start()
    term = lead(election)
    assert term.fencing is None and term.predecessor is None
    first = spec(admin, ns)
    assert first["holderIdentity"] == "pod-a"
    assert first["leaseDurationSeconds"] == 3
    assert MICROTIME.match(str(first["acquireTime"])) and MICROTIME.match(str(first["renewTime"]))
    assert election.leader() == "pod-a"

    def renewed_spec() -> dict[str, object] | None:
        now = spec(admin, ns)
        return now if now["renewTime"] != first["renewTime"] else None

    renewed = wait_until(renewed_spec, 5, "a renewal by the ServiceAccount")
    assert renewed["acquireTime"] == first["acquireTime"]
    election.release(clean=True)
    assert not spec(admin, ns).get("holderIdentity")
    assert spec(admin, ns)["leaseDurationSeconds"] == 1

    # the same token on another Lease: the API says 403, and the backend names the permission
    other = httpx.get(
        f"{cluster.kube.server}{LEASES.format(ns=ns)}/other",
        headers={"Authorization": f"Bearer {token}"},
        verify=ssl.create_default_context(cafile=cluster.kube.ca),
    )
    assert other.status_code == 403
    with pytest.raises(ElectionError, match=r"may not get leases/other .* namespace " + ns):
        cluster.election("pod-a", token=token, lease="other").start()


def test_exactly_one_of_two_leads(cluster: Cluster, admin: KubeAdmin, ns: str) -> None:
    """Two candidates: one leads, the other keeps waiting through several lease durations."""
    a, b = cluster.election("pod-a"), cluster.election("pod-b")
    a.start()
    b.start()
    ca, cb = Candidate(a).start(), Candidate(b).start()
    winner = wait_until(lambda: ca if ca.term else cb if cb.term else None, 10, "a leader")
    loser = cb if winner is ca else ca
    deadline = time.monotonic() + 2 * LEASE_S
    while time.monotonic() < deadline:  # renewals keep the standby out
        assert loser.term is None
        assert spec(admin, ns)["holderIdentity"] == winner.election.identity
        time.sleep(0.1)
    assert a.leader() == b.leader() == winner.election.identity
    loser.stop.set()
    loser.thread.join(5)
    assert loser.term is None and not loser.thread.is_alive()


def test_release_hands_over_at_once(cluster: Cluster, admin: KubeAdmin, ns: str) -> None:
    """After a clean release the standby leads within about a retry period, sees the
    predecessor as released cleanly, and leaseTransitions grows by one."""
    a, b = cluster.election("pod-a"), cluster.election("pod-b")
    a.start()
    first = lead(a)
    a.announce_connected()
    b.start()
    cb = Candidate(b).start()
    wait_until(lambda: b.leader() == "pod-a", 5, "the standby to see the leader")
    released_at = time.monotonic()
    a.release(clean=True)
    wait_until(lambda: cb.term, 5, "the standby to take over")
    assert cb.term is not None and cb.won_at is not None
    took = cb.won_at - released_at
    print(f"\nMEASURED takeover after release: {took:.3f} s (retry period {RETRY_S} s)")
    assert took < 1.5
    pred = cb.term.predecessor
    assert pred is not None
    assert (pred.identity, pred.kind, pred.clean) == ("pod-a", "released", True)
    assert abs(pred.at - time.time()) < 10
    assert cb.term.number == first.number + 1 == spec(admin, ns)["leaseTransitions"]
    assert spec(admin, ns)["holderIdentity"] == "pod-b"
    assert a.leader() == "pod-b" or a.leader() is None  # a's cache: next read shows pod-b


@pytest.mark.slow
@pytest.mark.parametrize("crash", ["close", "sigkill", "close-unannounced"])
def test_crashed_leader_is_replaced_after_the_lease_duration(
    cluster: Cluster, admin: KubeAdmin, ns: str, crash: str
) -> None:
    """A leader that stops renewing without releasing (closed, or its process SIGKILLed) is
    replaced about one lease duration later; the predecessor shows as connected, unclean,
    also when it died before its "connected" event was written (unknown counts as connected)."""
    child: subprocess.Popen[str] | None = None
    try:
        if crash.startswith("close"):
            a = cluster.election("pod-a")
            a.start()
            first_number = lead(a).number
            if crash == "close":
                a.announce_connected()
        else:
            kubeconfig = cluster.tmp / "child.kubeconfig"
            write_kubeconfig(kubeconfig, cluster.kube, cluster.kube.token)
            args: dict[str, object] = {"identity": "pod-a", "lease_name": "bridge", **FAST}
            args.update(lease_namespace=ns, kubeconfig=str(kubeconfig))
            child = subprocess.Popen(
                [sys.executable, "-m", "tests.kubeutil", "child", json.dumps(args)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line.startswith("LEADING"), line
            first_number = int(line.split()[1])
        if crash != "close-unannounced":
            wait_until(lambda: last_event(admin, ns).get("kind") == "connected", 5, "the event")
        b = cluster.election("pod-b")
        b.start()
        cb = Candidate(b).start()
        wait_until(lambda: b.leader() == "pod-a", 5, "the standby to see the leader")
        crashed_at = time.monotonic()
        if child is not None:
            child.send_signal(signal.SIGKILL)
            child.wait(5)
        else:
            a.close()
        wait_until(lambda: cb.term, 3 * LEASE_S, "the standby to take over")
    finally:
        if child is not None:
            if child.poll() is None:
                child.kill()
                child.wait(5)
            assert child.stdout is not None
            child.stdout.close()
    assert cb.term is not None and cb.won_at is not None
    took = cb.won_at - crashed_at
    print(f"\nMEASURED takeover after crash ({crash}): {took:.3f} s (lease {LEASE_S} s)")
    # the last renewal was at most one retry period before the crash
    assert LEASE_S - RETRY_S - 0.1 <= took <= LEASE_S + 3 * RETRY_S
    pred = cb.term.predecessor
    assert pred is not None
    assert (pred.identity, pred.kind, pred.clean) == ("pod-a", "connected", False)
    assert cb.term.number == first_number + 1
    assert cb.term.grace_s(60.0) == 60.0  # the full reconnect grace before connecting


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["rbac-revoked", "api-unreachable"])
def test_leader_whose_renewals_fail_steps_down_within_the_renew_deadline(
    cluster: Cluster, admin: KubeAdmin, ns: str, failure: str
) -> None:
    """When renewals fail (RoleBinding deleted, or the API cut off) the leader sets term.lost
    within renew_deadline, before the standby can take the Lease."""
    relay = None
    if failure == "rbac-revoked":
        binding = admin.create_lease_role(ns, "bridge-sa", "bridge")
        a = cluster.election("pod-a", token=admin.mint_token(ns, "bridge-sa"))
    else:
        target = urlsplit(cluster.kube.server)
        relay = TcpRelay(target.hostname or "127.0.0.1", target.port or 443)
        a = cluster.election("pod-a", server=f"https://127.0.0.1:{relay.port}")
    a.start()
    term = lead(a)
    b = cluster.election("pod-b")
    b.start()
    cb = Candidate(b).start()
    # start the clock right after a successful renewal, so the deadline is the full 2 s
    seen = spec(admin, ns)["renewTime"]
    wait_until(lambda: spec(admin, ns)["renewTime"] != seen, 3, "a renewal")
    broken_at = time.monotonic()
    if relay is not None:
        relay.cut()
    else:
        admin.delete_rolebinding(ns, binding)
    wait_until(term.lost.is_set, RENEW_S + 2, "the leader to step down")
    lost_after = time.monotonic() - broken_at
    wait_until(lambda: cb.term, 3 * LEASE_S, "the standby to take over")
    assert cb.won_at is not None
    print(
        f"\nMEASURED {failure}: leader stepped down after {lost_after:.3f} s "
        f"(renew deadline {RENEW_S} s); standby led after {cb.won_at - broken_at:.3f} s"
    )
    assert lost_after <= RENEW_S + RETRY_S
    assert cb.won_at - broken_at > lost_after  # never two leaders at once
    assert a.leader() != "pod-a"


@pytest.mark.slow
def test_three_candidates_hammering_never_both_win(
    cluster: Cluster, admin: KubeAdmin, ns: str
) -> None:
    """Three candidates acquire and release for a while: terms never overlap, and the watch
    API shows holderIdentity changing only through our terms, leaseTransitions +1 each."""
    watch = LeaseWatch(admin, ns, "bridge").start()
    elections = [cluster.election(f"pod-{i}") for i in range(3)]
    for e in elections:
        e.start()
    terms: list[tuple[float, float, str, int]] = []  # start, end, identity, number
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def run(e: KubernetesElection) -> None:
        rng = random.Random(e.identity)
        try:
            while not stop.is_set():
                term = e.wait_for_leadership(stop)
                if term is None:
                    return
                began = time.monotonic()
                stop.wait(rng.uniform(0.05, 0.4))  # "work" while leading
                ended = time.monotonic()
                with lock:
                    terms.append((began, ended, e.identity, term.number))
                e.release(clean=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,), daemon=True) for e in elections]
    for t in threads:
        t.start()
    wait_until(lambda: len(terms) >= 8, 60, "eight terms")
    stop.set()
    for t in threads:
        t.join(10)
    final_rv = (admin.lease(ns, "bridge") or {})["metadata"]["resourceVersion"]
    wait_until(lambda: watch.events and watch.events[-1][3] == final_rv, 5, "the last event")
    watch.stop()
    assert not errors, errors
    terms.sort()
    for (_, end, who, n), (start, _, nxt, m) in itertools.pairwise(terms):
        assert start >= end, f"{nxt} (term {m}) led before {who} (term {n}) let go"
        assert m > n
    # holder changes seen by the API are exactly our terms, in order
    changes: list[tuple[str, int]] = []
    holder = None
    for _, h, n, _ in watch.events:
        if h != holder:
            holder = h
            if h:
                changes.append((h, n))
    assert changes == [(who, n) for _, _, who, n in terms][: len(changes)]
    assert len(changes) >= len(terms)
    numbers = [n for _, n in changes]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    print(f"\nMEASURED hammer: {len(terms)} terms, {len(watch.events)} Lease events")


def test_unreachable_api_is_one_clear_error(cluster: Cluster) -> None:
    """start() against a port where nothing listens raises ElectionError in one line."""
    election = cluster.election("pod-a", server="https://127.0.0.1:9")
    with pytest.raises(ElectionError) as info:
        election.start()
    assert "unreachable" in str(info.value) and "\n" not in str(info.value)


def test_in_cluster_config_rereads_the_rotating_token(
    cluster: Cluster, admin: KubeAdmin, ns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-pod configuration (service-account mount, KUBERNETES_SERVICE_HOST/PORT) finds its
    namespace, and picks up a rotated token file on the next request."""
    admin.create_lease_role(ns, "bridge-sa", "bridge")
    admin.ok("POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": "nobody"}})
    mount = tmp_path / "serviceaccount"
    mount.mkdir()
    (mount / "token").write_text(admin.mint_token(ns, "bridge-sa"))
    (mount / "ca.crt").write_bytes(Path(cluster.kube.ca).read_bytes())
    (mount / "namespace").write_text(ns)
    server = urlsplit(cluster.kube.server)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", server.hostname or "")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
    settings = bridge_settings(identity="pod-a", lease_name="bridge", **FAST)
    election = KubernetesElection(settings, Metrics(), State())
    election.sa_dir = mount
    cluster.made.append(election)
    election.start()
    assert election.namespace == ns
    term = lead(election)
    # rotate to a valid token of a ServiceAccount without rights: renewals now get 403
    (mount / "token").write_text(admin.mint_token(ns, "nobody"))
    wait_until(term.lost.is_set, RENEW_S + 2, "a step-down under the rotated token")
    (mount / "token").write_text(admin.mint_token(ns, "bridge-sa"))
    assert lead(election, timeout=3 * LEASE_S).number == term.number + 1


ROUNDS = 10


@pytest.mark.slow
def test_simultaneous_candidates_exactly_one_wins_each_round(
    cluster: Cluster, admin: KubeAdmin, ns: str
) -> None:
    """Three candidates released by a barrier onto a fresh Lease, ten times: each round
    exactly one wins, the others see 409 Conflict and keep waiting."""
    conflicts = 0
    count = threading.Lock()

    def counting(e: KubernetesElection) -> None:
        api = e._api  # every Lease call of a started election goes through its call()
        assert api is not None
        call = api.call

        def wrapped(*args: Any, **kwargs: Any) -> httpx.Response:
            nonlocal conflicts
            resp = call(*args, **kwargs)
            if resp.status_code == 409:
                with count:
                    conflicts += 1
            return resp

        api.call = wrapped  # type: ignore[method-assign]

    for rnd in range(ROUNDS):
        lease = f"race-{rnd}"
        elections = [cluster.election(f"pod-{i}", lease=lease) for i in range(3)]
        barrier = threading.Barrier(3)
        candidates: list[Candidate] = []
        for e in elections:
            e.start()
            counting(e)
            candidates.append(Candidate(e, barrier).start())

        def won(cs: list[Candidate] = candidates) -> list[Candidate]:
            return [c for c in cs if c.term]

        winners = wait_until(won, 5, "a winner")
        time.sleep(2 * RETRY_S)  # the losers retry meanwhile (observation window, not a sync)
        assert len(won()) == 1, f"round {rnd}: several winners"
        assert admin.holder(ns, lease) == winners[0].election.identity
        for c in candidates:
            c.stop.set()
        for c in candidates:
            c.thread.join(5)
            c.election.close()
    print(f"\nMEASURED simultaneous rounds: {ROUNDS}, 409 conflicts seen: {conflicts}")
    assert conflicts > 0  # the race really was run


def test_kubeconfig_with_client_certificate_data_and_context_namespace(
    kube: KubeServer, admin: KubeAdmin, ns: str, tmp_path: Path
) -> None:
    """A kubeconfig with inline client-certificate/key data and a context namespace (no
    lease_namespace setting) authenticates by x509 and uses that namespace."""
    assert kube.client_cert and kube.client_key, "set KUBE_LOCAL_CLIENT_CERT and _KEY"

    def inline(path: str) -> str:
        return base64.b64encode(Path(path).read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {"server": kube.server, "certificate-authority-data": inline(kube.ca)},
            }
        ],
        "users": [
            {
                "name": "u",
                "user": {
                    "client-certificate-data": inline(kube.client_cert),
                    "client-key-data": inline(kube.client_key),
                },
            }
        ],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": ns}}],
        "current-context": "x",
    }
    path = tmp_path / "cert.kubeconfig"
    path.write_text(json.dumps(config))  # JSON is YAML too
    settings = bridge_settings(
        identity="pod-cert", lease_name="bridge", kubeconfig=str(path), **FAST
    )
    election = KubernetesElection(settings, Metrics(), State())
    try:
        election.start()
        assert election.namespace == ns
        lead(election)
        assert admin.holder(ns, "bridge") == "pod-cert"
    finally:
        election.close()
