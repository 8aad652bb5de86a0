"""The real broker behind the integration tests, and scripts/kafka-local's lifecycle."""

from __future__ import annotations

import os
import subprocess
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Message, Producer

from tests.kafkautil import kafka_local, read_all
from tests.testutil import free_ports

pytestmark = pytest.mark.integration


def test_round_trip_10000_messages(kafka_bootstrap: str, topic_factory: Callable[..., str]) -> None:
    """10,000 idempotent acks=all messages all come back once, in produce order per partition."""
    topic = topic_factory(partitions=3)
    producer = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )
    sent: dict[int, list[tuple[int, bytes, bytes]]] = defaultdict(list)
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            part, offset, key, value = msg.partition(), msg.offset(), msg.key(), msg.value()
            # a delivered message has its place, and every one sent here a key and a value
            assert part is not None and offset is not None and key is not None and value is not None
            sent[part].append((offset, key, value))

    count = 10_000
    for i in range(count):
        while True:
            try:
                producer.produce(
                    topic,
                    key=f"key-{i % 257}".encode(),
                    value=f"value-{i:05d}".encode(),
                    headers=[("seq", str(i).encode())],
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0, "messages still in flight after 60 s"
    assert errors == []

    records = read_all(kafka_bootstrap, topic, timeout=60)

    assert len(records) == count
    assert {r.value for r in records} == {f"value-{i:05d}".encode() for i in range(count)}
    assert len(sent) > 1, "keys should spread over several partitions"
    got: dict[int, list[tuple[int, bytes | None, bytes | None]]] = defaultdict(list)
    for r in records:
        got[r.partition].append((r.offset, r.key, r.value))
        assert r.value is not None
        assert r.headers == [("seq", str(int(r.value[len("value-") :])).encode())]
        assert r.timestamp > 0
    for partition, delivered in sent.items():
        # delivery reports arrive in offset order per partition; produce order is the
        # increasing sequence number embedded in the value
        assert got[partition] == delivered
        seqs = [int(v[len("value-") :]) for _, _, v in delivered]
        assert seqs == sorted(seqs)
        offsets = [o for o, _, _ in delivered]
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))


def _broker_pids(data_dir: Path) -> list[str]:
    found = subprocess.run(
        ["pgrep", "-f", f"kafka.Kafka {data_dir}/server.properties"],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.split()


@pytest.mark.slow
def test_start_twice_then_stop_leaves_nothing(kafka_bootstrap: str, tmp_path: Path) -> None:
    """A second `start` is a no-op printing the same address; `stop` leaves no broker behind."""
    session = kafka_local("status")
    if session.returncode == 0 and kafka_bootstrap in session.stdout:
        # the session broker is kafka-local's own: starting it again must change nothing
        again = kafka_local("start")
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == kafka_bootstrap
        assert kafka_local("status").stdout == session.stdout

    port, cport = free_ports(2)
    data_dir = tmp_path / "kafka"
    env = {
        **os.environ,
        "KAFKA_LOCAL_PORT": str(port),
        "KAFKA_LOCAL_CONTROLLER_PORT": str(cport),
        "KAFKA_LOCAL_DIR": str(data_dir),
    }
    try:
        first = kafka_local("start", env=env)
        assert first.returncode == 0, first.stderr
        assert first.stdout == f"127.0.0.1:{port}\n"
        status = kafka_local("status", env=env)
        assert status.returncode == 0
        assert status.stdout.startswith(f"running 127.0.0.1:{port} pid ")
        pid = status.stdout.split()[-1]
        assert _broker_pids(data_dir) == [pid]

        second = kafka_local("start", env=env)
        assert second.returncode == 0, second.stderr
        assert second.stdout == first.stdout
        assert "already running" in second.stderr
        assert kafka_local("status", env=env).stdout == status.stdout
    finally:
        stopped = kafka_local("stop", env=env, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    after = kafka_local("status", env=env)
    assert (after.returncode, after.stdout) == (3, "stopped\n")
    assert _broker_pids(data_dir) == []
    again = kafka_local("stop", env=env)
    assert again.returncode == 0, "stop of a stopped broker is a no-op"
