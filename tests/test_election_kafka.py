"""The kafka election backend against a real broker: one leader, sticky leadership,
hand-over on release, close and crash, generation fencing, and self-demotion."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import ConfigResource, ResourceType

from bridge.election.base import CONNECTED, RELEASED, Term
from bridge.election.kafka import KafkaElection
from bridge.observability import Metrics, State
from tests.kafkautil import REPO_ROOT, admin_client, delete_topics, unique_topic_name
from tests.test_election import make_settings
from tests.testutil import wait_until

pytestmark = [
    pytest.mark.integration,
    # the standby's leader lookup uses list_groups on purpose (see bridge/election/kafka.py)
    pytest.mark.filterwarnings("ignore:list_groups.. is deprecated:DeprecationWarning"),
]
GRACE = 60.0


@dataclass
class Cluster:
    """Replicas of one deployment: same election topic and group, own consumers."""

    bootstrap: str
    topic: str
    group: str
    replicas: list[KafkaElection] = field(default_factory=list)

    def election(self, identity: str, session_ms: int = 3000) -> dict[str, object]:
        return {
            "identity": identity,
            "topic": self.topic,
            "group_id": self.group,
            "session_timeout_ms": session_ms,
        }

    def replica(self, identity: str, session_ms: int = 3000) -> KafkaElection:
        settings = make_settings(self.bootstrap, **self.election(identity, session_ms))
        replica = KafkaElection(settings, Metrics(), State())
        self.replicas.append(replica)
        replica.start()
        return replica

    def leaders(self) -> list[str]:
        return [r.identity for r in self.replicas if r.leader() == r.identity]


@pytest.fixture
def cluster(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    topic = unique_topic_name(f"election-{request.node.name}")
    c = Cluster(kafka_bootstrap, topic, f"group-{topic}")
    yield c
    for replica in c.replicas:
        replica.close()
    delete_topics(kafka_bootstrap, [topic])


def lead_within(replica: KafkaElection, timeout: float) -> Term | None:
    """The replica's term, or None if it did not lead within ``timeout``."""
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    try:
        return replica.wait_for_leadership(stop)
    finally:
        timer.cancel()


def joined_behind(standby: KafkaElection, leader: str, timeout: float = 15.0) -> None:
    """Wait until ``standby`` completed a rebalance and sees ``leader`` lead."""
    wait_until(lambda: standby.leader() == leader, timeout, f"{standby.identity} sees {leader}")


def commit_with(bootstrap: str, topic: str, offsets: list[TopicPartition], md: object) -> object:
    """Commit one transaction with these election offsets; None or the KafkaError."""
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": uuid.uuid4().hex})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, b"probe")
    try:
        producer.send_offsets_to_transaction(offsets, md, 30)
        producer.commit_transaction(30)
    except KafkaException as exc:
        producer.abort_transaction(30)
        return exc.args[0]
    return None


def test_first_replica_leads_and_creates_the_topic(cluster: Cluster) -> None:
    """A lone replica leads within seconds of start on a topic it created (1 partition)."""
    started = time.monotonic()
    a = cluster.replica("a")
    term = lead_within(a, 10)
    assert term is not None, "no leadership within 10 s"
    took = time.monotonic() - started
    print(f"\nfirst leadership after start: {took:.2f}s")
    assert term.predecessor is None and term.grace_s(GRACE) == 0.0
    assert term.fencing is not None and term.fencing.offsets()[0].offset == 0
    assert a.leader() == "a" and a._roles.role == "leader"
    admin = admin_client(cluster.bootstrap)
    assert len(admin.list_topics(timeout=10).topics[cluster.topic].partitions) == 1
    resource = ConfigResource(ResourceType.TOPIC, cluster.topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=10)
    assert configs["cleanup.policy"].value == "delete"
    assert configs["retention.ms"].value == str(7 * 24 * 3600 * 1000)


def test_standby_join_keeps_the_leader_and_its_fencing(
    cluster: Cluster, topic_factory: Callable[..., str]
) -> None:
    """A joining standby neither revokes the leader nor breaks its commits: the old
    generation is rejected (ILLEGAL_GENERATION), the renewed one commits."""
    sink = topic_factory(partitions=1)
    a = cluster.replica("a")
    term = lead_within(a, 10)
    assert term is not None and term.fencing is not None
    fencing, first_md = term.fencing, term.fencing.group_metadata()
    b = cluster.replica("b")
    joined_behind(b, "a")
    assert fencing.wait_renewed(first_md, 10), "leader's metadata not renewed after the join"
    assert not term.lost.is_set() and a.wait_for_leadership(threading.Event()) is term
    assert cluster.leaders() == ["a"] and b._roles.role == "standby"
    stale = commit_with(cluster.bootstrap, sink, fencing.offsets(), first_md)
    assert isinstance(stale, KafkaError) and stale.code() == KafkaError.ILLEGAL_GENERATION
    assert stale.txn_requires_abort()
    assert commit_with(cluster.bootstrap, sink, fencing.offsets(), fencing.group_metadata()) is None


@pytest.mark.parametrize("clean", [True, False], ids=["clean", "unclean"])
def test_release_hands_over_at_once(cluster: Cluster, clean: bool) -> None:
    """After release the standby leads within ~2 s with a "released" predecessor."""
    a = cluster.replica("a")
    first = lead_within(a, 10)
    assert first is not None
    b = cluster.replica("b")
    joined_behind(b, "a")
    a.announce_connected()
    released = time.monotonic()
    a.release(clean=clean)
    assert first.lost.is_set() and first.lost_reason == "released"
    term = lead_within(b, 5)
    took = time.monotonic() - released
    print(f"\nrelease -> new leader: {took:.2f}s")
    assert term is not None and took < 2.5
    p = term.predecessor
    assert p is not None and (p.identity, p.kind, p.clean) == ("a", RELEASED, clean)
    assert abs(p.at - time.time()) < 10
    if clean:
        assert term.grace_s(GRACE) == 0.0
    else:
        assert GRACE - 10 < term.grace_s(GRACE) < GRACE
    assert cluster.leaders() == ["b"]


def test_release_timing_with_ten_second_session(cluster: Cluster) -> None:
    """With the default 10 s session the hand-over is bounded by one heartbeat (2 s)."""
    a = cluster.replica("a", session_ms=10000)
    assert lead_within(a, 15) is not None
    b = cluster.replica("b", session_ms=10000)
    joined_behind(b, "a", timeout=30)
    released = time.monotonic()
    a.release(clean=True)
    assert lead_within(b, 5) is not None
    took = time.monotonic() - released
    print(f"\nrelease -> new leader (session 10 s): {took:.2f}s")
    assert took < 3.0


def test_close_without_release_means_full_grace(cluster: Cluster) -> None:
    """A leader that closes after announcing "connected" leaves the full grace to wait."""
    a = cluster.replica("a")
    assert lead_within(a, 10) is not None
    b = cluster.replica("b")
    joined_behind(b, "a")
    a.announce_connected()
    closed = time.monotonic()
    a.close()
    term = lead_within(b, 5)
    print(f"\nclose (no release) -> new leader: {time.monotonic() - closed:.2f}s")
    assert term is not None
    p = term.predecessor
    assert p is not None and (p.identity, p.kind) == ("a", CONNECTED)
    assert term.grace_s(GRACE) == GRACE


def test_three_replicas_one_leader(cluster: Cluster) -> None:
    """With three replicas exactly one leads, before and after the leader leaves."""
    a = cluster.replica("a")
    assert lead_within(a, 10) is not None
    b, c = cluster.replica("b"), cluster.replica("c")
    joined_behind(b, "a")
    joined_behind(c, "a")
    assert cluster.leaders() == ["a"]
    a.close()
    wait_until(lambda: len(cluster.leaders()) == 1, 10, "a new leader")
    new = cluster.leaders()[0]
    assert new in ("b", "c")
    other = c if new == "b" else b
    joined_behind(other, new)
    assert cluster.leaders() == [new]


CHILD = r"""
import json, sys, threading
from bridge.election.kafka import KafkaElection
from bridge.observability import Metrics, State
from tests.test_election import make_settings
args = json.loads(sys.argv[1])
e = KafkaElection(make_settings(args["bootstrap"], **args["election"]), Metrics(), State())
e.start()
term = e.wait_for_leadership(threading.Event())
e.announce_connected()
print("leading", flush=True)
for _ in sys.stdin:
    f = term.fencing
    offsets = [[tp.topic, tp.partition, tp.offset] for tp in f.offsets()]
    print(json.dumps({"md": bytes(f.group_metadata()).hex(), "offsets": offsets}), flush=True)
"""


class Child:
    """A replica in its own process, so it can really crash (SIGKILL)."""

    def __init__(self, cluster: Cluster, identity: str, session_ms: int) -> None:
        arg = json.dumps(
            {"bootstrap": cluster.bootstrap, "election": cluster.election(identity, session_ms)}
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, arg],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )

    def line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "child replica did not answer"
        return self.proc.stdout.readline()

    def fencing(self, timeout: float) -> tuple[list[TopicPartition], bytes]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("?\n")
        self.proc.stdin.flush()
        data = json.loads(self.line(timeout))
        return [TopicPartition(*o) for o in data["offsets"]], bytes.fromhex(data["md"])

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        """Kill the child if it still runs and close our ends of its pipes."""
        if self.proc.poll() is None:
            self.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.mark.parametrize(
    "session_ms", [3000, pytest.param(10000, marks=pytest.mark.slow)], ids=["3s", "10s"]
)
def test_crashed_leader_is_fenced(
    cluster: Cluster, topic_factory: Callable[..., str], session_ms: int
) -> None:
    """A SIGKILLed leader is replaced after its session expires, the new term waits the
    full grace, and the dead leader's generation cannot commit (UNKNOWN_MEMBER_ID)."""
    sink = topic_factory(partitions=1)
    a = Child(cluster, "a", session_ms)
    try:
        assert a.line(30).strip() == "leading"
        b = cluster.replica("b", session_ms)
        joined_behind(b, "a", timeout=30)
        deadline = time.monotonic() + 10
        while True:  # the child's metadata renews just after b's join: ask until it commits
            offsets, md = a.fencing(10)
            if commit_with(cluster.bootstrap, sink, offsets, md) is None:
                break
            assert time.monotonic() < deadline, "the live leader could not commit"
        killed = time.monotonic()
        a.kill()
        term = lead_within(b, session_ms / 1000 + 10)
    finally:
        a.close()
    took = time.monotonic() - killed
    print(f"\nSIGKILL -> new leader (session {session_ms} ms): {took:.2f}s")
    assert term is not None and took < session_ms / 1000 + 3
    p = term.predecessor
    assert p is not None and (p.identity, p.kind) == ("a", CONNECTED)
    assert term.grace_s(GRACE) == GRACE
    err = commit_with(cluster.bootstrap, sink, offsets, md)
    assert isinstance(err, KafkaError), "the dead leader's commit was accepted"
    assert err.code() == KafkaError.UNKNOWN_MEMBER_ID and err.txn_requires_abort()
    print(f"stale commit rejected: {err.name()} ({err.code()})")


def test_stalled_loop_steps_down(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A leader whose election loop stalls for more than half a session sets lost at once
    and gives the partition up, so exactly one replica leads afterwards."""
    a = cluster.replica("a")
    term = lead_within(a, 10)
    assert term is not None
    b = cluster.replica("b")
    joined_behind(b, "a")
    stall_s = 0.6 * a.session_s
    stalled, unblock = threading.Event(), threading.Event()
    real_poll = a._poll

    def poll_once_stalled(consumer: object) -> None:
        if not stalled.is_set():
            stalled.set()
            unblock.wait(stall_s)  # the fault itself: the loop is not scheduled
        real_poll(consumer)  # type: ignore[arg-type]

    monkeypatch.setattr(a, "_poll", poll_once_stalled)
    assert stalled.wait(5)
    ended = time.monotonic() + stall_s
    assert term.lost.wait(stall_s + 2), "stalled leader did not step down"
    print(f"\nlost set {time.monotonic() - ended:+.2f}s after the stall ended")
    assert term.lost_reason is not None and "not scheduled" in term.lost_reason
    wait_until(lambda: len(cluster.leaders()) == 1, 15, "one leader after the stall")
    if cluster.leaders() == ["a"]:  # it may win the new rebalance, but only with a new term
        renewed = lead_within(a, 1)
        assert renewed is not None and renewed.number == 2
