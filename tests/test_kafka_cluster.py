"""A three-broker cluster from scripts/kafka-local, and the bridge on it while nodes die.

One cluster serves the whole module (starting one takes ~25 s on two cores); every test
leaves all three nodes running.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import ConfigResource, ResourceType

from tests.cluster import Cluster
from tests.harness import wait_until
from tests.kafkautil import create_topic, read_all, unique_topic_name

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three combined broker+controller nodes of this module's own, stopped at the end."""
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()
    assert c.running() == {1: False, 2: False, 3: False}


def _restore(cluster: Cluster) -> None:
    for node, up in cluster.running().items():
        if not up:
            cluster.start_node(node)


def _topic_config(cluster: Cluster, topic: str, key: str) -> str:
    res = ConfigResource(ResourceType.TOPIC, topic)
    admin = cluster.admin()  # held: the futures fail if the client is collected first
    entries = admin.describe_configs([res], request_timeout=10)[res].result(10)
    return str(entries[key].value)


def test_cluster_replicates_three_ways_and_survives_a_leader_kill(cluster: Cluster) -> None:
    """Topics (and the transaction log) get 3 replicas with min ISR 2; kill -9 of a
    partition's leader: transactions go on on the other two, nothing committed is lost,
    and the killed node rejoins the ISR after its restart."""
    assert set(cluster.running().values()) == {True}
    topic = unique_topic_name("cluster")
    create_topic(cluster.bootstrap, topic, partitions=1, replication=-1)
    replicas, _ = cluster.replicas(topic)
    assert sorted(replicas) == [1, 2, 3]
    assert _topic_config(cluster, topic, "min.insync.replicas") == "2"

    producer = Producer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "transactional.id": f"txn-{topic}",
            "log_level": 0,
        }
    )
    producer.init_transactions(30)
    txn_replicas, _ = cluster.replicas("__transaction_state", 0)
    assert sorted(txn_replicas) == [1, 2, 3]

    def commit(batch: int) -> None:
        producer.begin_transaction()
        for i in range(100):
            producer.produce(topic, value=f"{batch}-{i}".encode())
        producer.commit_transaction(60)

    try:
        commit(0)
        victim = cluster.leader(topic)
        cluster.kill(victim)
        killed_at = time.monotonic()
        wait_until(lambda: cluster.leader(topic) not in (victim, -1), 30, "a new leader")
        print(f"partition leader moved {time.monotonic() - killed_at:.1f}s after kill -9")
        for batch in range(1, 4):
            commit(batch)
        restart = cluster.start_node(victim)
        wait_until(lambda: victim in cluster.replicas(topic)[1], 60, "the node to rejoin the ISR")
        print(f"killed node {victim} back in {restart:.1f}s and in sync")
        commit(4)
    finally:
        producer.flush(10)
        _restore(cluster)
    values = sorted(r.value or b"" for r in read_all(cluster.bootstrap, topic, timeout=60))
    assert values == sorted(f"{b}-{i}".encode() for b in range(5) for i in range(100))
