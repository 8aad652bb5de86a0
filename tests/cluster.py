"""A three-node KRaft cluster of the test's own, through ``scripts/kafka-local --brokers``.

Node I listens on ``base_port + 2(I-1)`` (controller ``base_port + 1 + 2(I-1)``), so a
cluster needs six consecutive free ports; its data lives in ``dir/node-I``. The helpers
answer the questions the fault tests ask a cluster: which node leads a partition, which
node is a transactional id's coordinator, and which directory holds a node's segments.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka.admin import AdminClient

from tests.kafkautil import KAFKA_LOCAL

TXN_STATE_PARTITIONS = 50  # transaction.state.log.num.partitions, Kafka's default


def _free_run(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive ports that are all free on ``host`` now."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000 - count)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind((host, port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise AssertionError(f"no {count} consecutive free ports on {host}")


def java_string_hash(text: str) -> int:
    """Java's ``String.hashCode`` (how Kafka places a transactional id), as a signed int."""
    data, h = text.encode("utf-16-be"), 0
    for i in range(0, len(data), 2):
        h = (31 * h + (data[i] << 8 | data[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


@dataclass
class Cluster:
    """``brokers`` combined broker+controller nodes on ``host``; see the module docstring."""

    dir: Path
    brokers: int = 3
    host: str = "127.0.0.1"
    base_port: int = 0
    heap: str = "-Xmx384m -Xms128m"
    wrap: list[str] = field(default_factory=list)  # e.g. ip netns exec NS: run it there

    def __post_init__(self) -> None:
        if not self.base_port:
            self.base_port = _free_run(2 * self.brokers, self.host)

    def port(self, node: int) -> int:
        return self.base_port + 2 * (node - 1)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.host}:{self.port(n)}" for n in self.nodes)

    @property
    def nodes(self) -> range:
        return range(1, self.brokers + 1)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_LOCAL_HOST": self.host,
            "KAFKA_LOCAL_PORT": str(self.base_port),
            "KAFKA_LOCAL_CONTROLLER_PORT": str(self.base_port + 1),
            "KAFKA_LOCAL_DIR": str(self.dir),
            "KAFKA_LOCAL_HEAP": self.heap,
        }

    def call(self, *args: str, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
        env = {**self.env(), "KAFKA_LOCAL_PYTHON": sys.executable}
        cmd = [*self.wrap, str(KAFKA_LOCAL), *args]
        return subprocess.run(
            cmd, check=False, env=env, capture_output=True, text=True, timeout=timeout
        )

    def run(self, *args: str, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
        done = self.call(*args, timeout=timeout)
        if done.returncode != 0:
            err = done.stderr
            raise AssertionError(
                f"kafka-local {' '.join(args)} failed: {err[:1500]} ... {err[-1500:]}"
            )
        return done

    def start(self) -> str:
        out = self.run("start", "--brokers", str(self.brokers)).stdout.strip()
        assert out == self.bootstrap, out
        return out

    def start_node(self, node: int) -> float:
        """(Re)start one node; the seconds until the cluster's metadata listed it again."""
        began = time.monotonic()
        self.run("start", "--node", str(node))
        return time.monotonic() - began

    def kill(self, node: int) -> None:
        self.run("kill", "--node", str(node))

    def stop_node(self, node: int) -> None:
        self.run("stop", "--node", str(node))

    def stop(self) -> None:
        self.call("stop")

    def running(self) -> dict[int, bool]:
        out = self.call("status", timeout=30).stdout.splitlines()
        if self.brokers == 1:
            return {1: bool(out) and out[0].startswith("running")}
        return {int(line.split()[-1]): line.startswith("running") for line in out if line}

    def log_dir(self, node: int) -> Path:
        return self.dir / "data" if self.brokers == 1 else self.dir / f"node-{node}" / "data"

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})

    def leader(self, topic: str, partition: int = 0) -> int:
        """The node leading ``topic``-``partition`` now (-1 while none does)."""
        md = self.admin().list_topics(topic, timeout=10)
        return int(md.topics[topic].partitions[partition].leader)

    def replicas(self, topic: str, partition: int = 0) -> tuple[list[int], list[int]]:
        """(replicas, in-sync replicas) of ``topic``-``partition``."""
        part = self.admin().list_topics(topic, timeout=10).topics[topic].partitions[partition]
        return list(part.replicas), list(part.isrs)

    def coordinator(self, transactional_id: str) -> int:
        """The node leading the transaction state partition of ``transactional_id``."""
        return self.leader("__transaction_state", txn_partition(transactional_id))


def txn_partition(transactional_id: str) -> int:
    """The transaction state partition Kafka keeps ``transactional_id`` in."""
    return (java_string_hash(transactional_id) & 0x7FFFFFFF) % TXN_STATE_PARTITIONS
