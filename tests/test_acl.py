"""Missing Kafka permissions, on a broker of its own with an authorizer: each denial is one
``KafkaSetupError`` line naming the ACL to grant (never a retry loop, never the password),
and ``livestream-bridge run`` exits 2 saying so.

The broker (``scripts/kafka-local`` on its own ports and data directory) runs KRaft's
``StandardAuthorizer``; its PLAINTEXT listener is ``User:ANONYMOUS``, a super user (the
broker itself, and the test's admin), and clients of the SASL_SSL listener log in as the
SCRAM user ``bridge``, which is granted only what each test says.
"""

from __future__ import annotations

import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from bridge.config import KafkaSettings, PublishSettings
from bridge.errors import KafkaSetupError
from bridge.observability import Metrics
from bridge.publish import Publisher
from livestream_sim import Simulator, SimulatorConfig
from tests.harness import BridgeProc, OwnBroker, bridge_env
from tests.kafkautil import admin_client, create_topic
from tests.publishing import NOW
from tests.testutil import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

PASSWORD = f"acl-{secrets.token_hex(12)}"
USER = "bridge"
AUTHORIZER = """\
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
allow.everyone.if.no.acl.found=false
"""


@dataclass
class AclBroker(OwnBroker):
    """An OwnBroker whose server.properties add the authorizer."""

    extra_config: Path | None = None

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.extra_config is not None:
            env["KAFKA_LOCAL_EXTRA_CONFIG"] = str(self.extra_config)
        return env


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclBroker]:
    """A broker with an authorizer, a SCRAM user and no ACLs; killed at the end."""
    root = tmp_path_factory.mktemp("acl")
    extra = root / "authorizer.properties"
    extra.write_text(AUTHORIZER)
    broker = AclBroker(
        root / "kafka",
        sasl_ssl_port=free_port(),
        scram_user=USER,
        scram_password=PASSWORD,
        extra_config=extra,
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()
    assert not broker.running()


@dataclass
class Deployment:
    """Topics and names of one bridge deployment on the ACL broker."""

    broker: AclBroker
    topic: str
    dlq: str
    transactional_id: str
    group: str
    election: str

    def grant(self, kind: ResourceType, name: str, *ops: AclOperation) -> None:
        bindings = [
            AclBinding(
                kind,
                name,
                ResourcePatternType.LITERAL,
                f"User:{USER}",
                "*",
                op,
                AclPermissionType.ALLOW,
            )
            for op in ops
        ]
        admin = admin_client(self.broker.bootstrap)
        for future in admin.create_acls(bindings).values():
            future.result(timeout=30)

    def grant_all_but(self, *missing: str) -> None:
        """What the bridge needs, except the ACLs named in ``missing``."""
        read, write, describe = AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE
        wanted: dict[str, tuple[ResourceType, str, tuple[AclOperation, ...]]] = {
            "topic": (ResourceType.TOPIC, self.topic, (read, write, describe)),
            "topic-read": (ResourceType.TOPIC, self.topic, (read,)),
            "dlq": (ResourceType.TOPIC, self.dlq, (write, describe)),
            "txn": (ResourceType.TRANSACTIONAL_ID, self.transactional_id, (write, describe)),
            "election": (ResourceType.TOPIC, self.election, (read, write, describe)),
            "group": (ResourceType.GROUP, self.group, (read, describe)),
        }
        for name, (kind, resource, ops) in wanted.items():
            granted = (write, describe) if name == "topic" and "topic-read" in missing else ops
            if name not in missing and name != "topic-read":
                self.grant(kind, resource, *granted)

    def kafka(self, **extra: Any) -> KafkaSettings:
        return KafkaSettings(
            bootstrap_servers=self.broker.sasl_bootstrap,
            topic=self.topic,
            dlq_topic=self.dlq,
            transactional_id=self.transactional_id,
            create_topics=False,
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username=USER,
            sasl_password=PASSWORD,
            ssl_ca_location=str(self.broker.ca_file),
            properties={"log_level": "3"},
            **extra,
        )


@pytest.fixture
def deployment(acl_broker: AclBroker) -> Deployment:
    """Fresh topics and names (made as the super user) for one test."""
    name = f"acl-{uuid.uuid4().hex[:10]}"
    d = Deployment(
        acl_broker, f"hits-{name}", f"hits-{name}-dlq", f"txn-{name}", f"el-{name}", f"el-{name}"
    )
    for topic, parts in ((d.topic, 3), (d.dlq, 1), (d.election, 1)):
        create_topic(acl_broker.bootstrap, topic, partitions=parts)
    return d


def _begin_and_commit(d: Deployment, records: list[bytes], fencing: Any = None) -> Publisher:
    pub = Publisher(d.kafka(), PublishSettings(kafka_outage_s=20), Metrics())
    pub.begin(fencing)
    pub.publish_many(records, NOW)
    pub.commit()
    return pub


def _denied(d: Deployment, records: list[bytes], fencing: Any = None) -> tuple[str, float]:
    started = time.monotonic()
    with pytest.raises(KafkaSetupError) as info:
        _begin_and_commit(d, records, fencing).close(5)
    took = time.monotonic() - started
    text = str(info.value)
    assert "\n" not in text
    assert PASSWORD not in text
    return text, took


HITS = [b'{"hitIdHigh":1,"hitIdLow":%d}' % n for n in range(20)]


def test_missing_transactional_id_write_names_the_acl(deployment: Deployment) -> None:
    """No Write on the TransactionalId: begin() raises at once, naming operation, resource
    type, name and principal."""
    deployment.grant_all_but("txn")
    text, took = _denied(deployment, HITS)
    assert f"Write on TransactionalId '{deployment.transactional_id}' denied" in text
    assert f"User:{USER}" in text
    assert took < 20


def test_missing_topic_write_names_the_topic(deployment: Deployment) -> None:
    """No Write on the dead-letter topic: the commit raises, naming Write on that topic."""
    deployment.grant_all_but("dlq")
    deployment.grant(ResourceType.TOPIC, deployment.dlq, AclOperation.DESCRIBE)
    text, _ = _denied(deployment, [*HITS, b"not json"])
    assert "Write on Topic" in text
    assert f"'{deployment.dlq}'" in text


def test_missing_topic_read_for_the_seed_names_it(deployment: Deployment) -> None:
    """No Read on the hits topic: seeding the dedupe window cannot work, and begin() says
    Read on that topic is missing instead of running without the seed."""
    deployment.grant_all_but("topic-read")
    earlier = Producer({"bootstrap.servers": deployment.broker.bootstrap, "log_level": 3})
    earlier.produce(deployment.topic, HITS[0], headers=[("hit-id", b"1:0")])
    assert earlier.flush(30) == 0  # a previous term's hit, written as the super user
    text, took = _denied(deployment, HITS)
    assert f"Read on Topic '{deployment.topic}' denied" in text
    assert took < 30


def test_missing_group_read_on_the_offsets_commit_names_the_group(
    deployment: Deployment,
) -> None:
    """No Read on the election group: the commit (which sends the term's offsets) raises,
    naming Read on Group."""
    deployment.grant_all_but("group")
    member = Consumer(
        {
            "bootstrap.servers": deployment.broker.bootstrap,  # the super user joins
            "group.id": deployment.group,
            "group.protocol": "classic",
            "log_level": 3,
        }
    )
    member.subscribe([deployment.election])
    deadline = time.monotonic() + 60
    while not member.assignment():
        assert time.monotonic() < deadline, "the group member never got its partition"
        member.poll(0.1)

    class Term:
        def offsets(self) -> list[TopicPartition]:
            return [TopicPartition(deployment.election, 0, 0)]

        def group_metadata(self) -> object:
            return member.consumer_group_metadata()

        def wait_renewed(self, stale: object, timeout_s: float) -> bool:
            return False

    try:
        text, _ = _denied(deployment, HITS, Term())
    finally:
        member.close()
    assert "Read on Group" in text


def test_bridge_run_exits_2_naming_the_missing_acl(deployment: Deployment, tmp_path: Path) -> None:
    """``livestream-bridge run`` as a user without Write on its TransactionalId exits 2
    within a bounded time, its output naming the ACL, without ever connecting upstream."""
    deployment.grant_all_but("txn")
    d = deployment
    with Simulator(SimulatorConfig(rate=100.0)) as sim:
        env = bridge_env(
            sim,
            d.broker.sasl_bootstrap,
            BRIDGE_KAFKA__TOPIC=d.topic,
            BRIDGE_KAFKA__DLQ_TOPIC=d.dlq,
            BRIDGE_KAFKA__CREATE_TOPICS="false",
            BRIDGE_KAFKA__TRANSACTIONAL_ID=d.transactional_id,
            BRIDGE_ELECTION__GROUP_ID=d.group,
            BRIDGE_ELECTION__TOPIC=d.election,
            BRIDGE_KAFKA__SECURITY_PROTOCOL="SASL_SSL",
            BRIDGE_KAFKA__SASL_MECHANISM="SCRAM-SHA-512",
            BRIDGE_KAFKA__SASL_USERNAME=USER,
            BRIDGE_KAFKA__SASL_PASSWORD=PASSWORD,
            BRIDGE_KAFKA__SSL_CA_LOCATION=str(d.broker.ca_file),
        )
        bridge = BridgeProc("acl", env, tmp_path).start()
        started = time.monotonic()
        try:
            code = bridge.wait(90)
        except subprocess.TimeoutExpired:
            bridge.stop()
            raise AssertionError(
                "the bridge kept retrying instead of exiting:\n" + bridge.logs()[-3000:]
            ) from None
        took = time.monotonic() - started
        attempts = sim.attempts()
    output = bridge.logs()
    print(f"\nmissing TransactionalId ACL: exit {code} after {took:.1f}s")
    assert code == 2, output[-3000:]
    assert f"Write on TransactionalId '{d.transactional_id}' denied" in output
    assert PASSWORD not in output
    assert attempts == [], "no upstream connection before Kafka accepted the writer"


def test_the_documented_acls_are_enough_for_writing_and_seeding(deployment: Deployment) -> None:
    """With exactly the ACLs the README lists (no group ACL for the seed reader), a writer
    commits and the next term's seed reads every id back."""
    deployment.grant_all_but()
    _begin_and_commit(deployment, HITS).close(10)
    b = Publisher(deployment.kafka(), PublishSettings(), Metrics())
    b.begin(None)
    b.publish_many(HITS, NOW)
    b.close(10)
    assert b.counters["dedupe_seeded"] == len(HITS)
    assert b.counters["records_deduplicated"] == len(HITS)
