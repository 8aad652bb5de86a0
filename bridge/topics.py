"""Kafka start-up checks: reach the cluster, find (or create) the hits and dead-letter topics.

Everything here fails fast with one readable line (``KafkaSetupError``): refused credentials,
missing permissions, a topic that is missing while creating topics is not allowed, a
cluster that does not answer within the deadline. Messages name settings and topics,
never secret values.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._resource import ResourceType
from confluent_kafka.cimpl import NewTopic

from bridge.config import KafkaSettings
from bridge.errors import KafkaSetupError
from bridge.observability import EventLog
from bridge.secrets import Secrets, secret_values

log = EventLog("bridge.topics")

CREATE_TOPICS_VAR = "BRIDGE_KAFKA__CREATE_TOPICS"

AUTHENTICATION_CODES = frozenset(
    {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
)
AUTHORIZATION_CODES = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
    }
)
_SSL_CODES = frozenset({KafkaError._SSL})
# Another writer owns the transactional.id, or the election generation we commit with is stale.
FENCED_CODES = frozenset(
    {
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.STALE_MEMBER_EPOCH,
        KafkaError.FENCED_MEMBER_EPOCH,
    }
)
TOO_LARGE_CODES = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})


MESSAGE_MAX_BYTES = 1_048_576  # a 1,000,000-byte record plus key and headers; broker: 1,048,588

LIBRDKAFKA_REPEAT_S = 30.0  # one distinct librdkafka log line per this long


class _Repeats(logging.Filter):
    """Lets each distinct librdkafka log line through once per ``every_s``.

    While a broker is down librdkafka logs the same failed connect several times a second
    ("Connect to ... failed: Connection refused (after 0ms in state CONNECT)"): thousands of
    identical error lines in a long outage. The varying timing part is ignored.
    """

    _TIMING = re.compile(r"\(after \d+ms in state [A-Z_]+\)|\d+ms")

    def __init__(self, every_s: float) -> None:
        super().__init__()
        self._every = every_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = f"{record.levelno}:{self._TIMING.sub('', record.getMessage())}"
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._every:
                return False
            if len(self._last) >= 1024:  # bounded: distinct lines are few in practice
                self._last.clear()
            self._last[key] = now
        return True


def kafka_logger(name: str) -> logging.Logger:
    """The logger librdkafka client ``name`` logs to, with repeated lines held back."""
    logger = logging.getLogger(f"bridge.kafka.{name}")
    if not any(isinstance(f, _Repeats) for f in logger.filters):
        logger.addFilter(_Repeats(LIBRDKAFKA_REPEAT_S))
    return logger


def producer_config(
    kafka: KafkaSettings,
    compression: str,
    error_cb: Callable[[KafkaError], None],
    message_max_bytes: int = MESSAGE_MAX_BYTES,
) -> dict[str, Any]:
    """The transactional producer: throughput defaults, user properties, then EOS essentials.

    The queue bounds are a safety net: the publisher commits at ``commit_max_records`` or
    16 MiB, far below them, and a commit flushes the queue. ``message_max_bytes`` should
    be below the topic's ``max.message.bytes``: then a record too large for the topic is
    refused by ``produce()`` itself (and dead-lettered), not by the broker in the middle of
    a transaction, where it would fail every retry of that transaction.
    """
    conf: dict[str, Any] = {
        "client.id": "livestream-bridge",
        "compression.type": compression,
        "linger.ms": 10,
        "batch.size": 1_000_000,
        "batch.num.messages": 10_000,
        "queue.buffering.max.kbytes": 65_536,
        "queue.buffering.max.messages": 100_000,
        "message.max.bytes": message_max_bytes,
    }
    conf.update(kafka.client_config())
    # Never overridable: exactly-once depends on them.
    conf |= {"transactional.id": kafka.transactional_id, "enable.idempotence": True}
    conf |= {"acks": "all", "logger": kafka_logger("producer")}
    conf["error_cb"] = error_cb
    return conf


def credentials_problem(
    kafka: KafkaSettings,
    err: KafkaError,
    *,
    topics: Sequence[str] = (),
    read: bool = False,
    group: str | None = None,
) -> str | None:
    """One line describing an authentication/authorization error, or None for other errors.

    A denial names the ACL to grant: operation, resource type and name (``topics`` the
    topics the failed call used, ``read`` for a reader, ``group`` the consumer group).
    """
    code = err.code()
    who = (
        f"for BRIDGE_KAFKA__SASL_USERNAME ({kafka.sasl_username})"
        if kafka.sasl_username
        else f"with BRIDGE_KAFKA__SECURITY_PROTOCOL={kafka.security_protocol}"
    )
    if code in AUTHENTICATION_CODES:
        return (
            f"Kafka refused the credentials (SASL authentication failed) {who}: "
            "check BRIDGE_KAFKA__SASL_USERNAME, BRIDGE_KAFKA__SASL_PASSWORD and "
            "BRIDGE_KAFKA__SASL_MECHANISM"
        )
    if code in _SSL_CODES:
        return "Kafka TLS handshake failed: check BRIDGE_KAFKA__SSL_CA_LOCATION and the address"
    if code in AUTHORIZATION_CODES:
        return _missing_acl(kafka, code, topics or (kafka.topic,), read, group) + f" ({err.name()})"
    return None


def _missing_acl(
    kafka: KafkaSettings, code: int, topics: Sequence[str], read: bool, group: str | None
) -> str:
    principal = f"User:{kafka.sasl_username}" if kafka.sasl_username else "User:ANONYMOUS"
    if not kafka.sasl_username and kafka.security_protocol != "PLAINTEXT":
        principal = "<the bridge's principal>"
    if code == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
        op, kind, names, flag = (
            "Write",
            "TransactionalId",
            [kafka.transactional_id],
            "--transactional-id",
        )
    elif code == KafkaError.GROUP_AUTHORIZATION_FAILED:
        names = [group or "<BRIDGE_ELECTION__GROUP_ID>"]
        op, kind, flag = "Read", "Group", "--group"
    elif code == KafkaError.CLUSTER_AUTHORIZATION_FAILED:
        op, kind, names, flag = "IdempotentWrite", "Cluster", ["kafka-cluster"], "--cluster"
    else:
        op, kind, names, flag = ("Read" if read else "Write"), "Topic", list(topics), "--topic"
    what = " or ".join(f"'{n}'" for n in dict.fromkeys(names))
    target = flag if kind == "Cluster" else " ".join(f"{flag} {n}" for n in dict.fromkeys(names))
    return (
        f"{op} on {kind} {what} denied to {principal} by Kafka's authorizer: grant it "
        f"(kafka-acls.sh --add --allow-principal {principal} --operation {op} {target})"
    )


def _redact(kafka: KafkaSettings, text: str) -> str:
    return Secrets(secret_values(kafka)).scrub(text)


class _ErrorTrap:
    """error_cb that remembers the first credentials problem librdkafka reports."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.problem: str | None = None
        self.last: KafkaError | None = None

    def __call__(self, err: KafkaError) -> None:
        self.last = err
        if self.problem is None:
            self.problem = credentials_problem(self.kafka, err)


def admin_config(kafka: KafkaSettings, trap: _ErrorTrap | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = dict(kafka.client_config())
    conf.setdefault("client.id", "livestream-bridge-admin")
    conf["logger"] = kafka_logger("admin")
    if trap is not None:
        conf["error_cb"] = trap
    return conf


def _metadata(admin: AdminClient, kafka: KafkaSettings, trap: _ErrorTrap, timeout: float) -> Any:
    """Cluster metadata, retried in short steps so a refused login surfaces at once."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        # list_topics does not serve the client's queue: without this poll error_cb (the
        # trap) never runs, and refused credentials look like a cluster that stays silent.
        admin.poll(0)
        if trap.problem:
            raise KafkaSetupError(trap.problem)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            md = admin.list_topics(timeout=min(1.0, max(0.1, remaining)))
        except KafkaException as exc:
            err = exc.args[0]
            problem = credentials_problem(kafka, err)
            if problem:
                raise KafkaSetupError(problem) from None
            last = err.str()
            continue
        if md.brokers:
            return md
    detail = trap.last.str() if trap.last is not None else last
    raise KafkaSetupError(
        _redact(
            kafka,
            f"Kafka at {kafka.bootstrap_servers} (BRIDGE_KAFKA__BOOTSTRAP_SERVERS) did not answer "
            f"within {timeout:g}s" + (f": {detail}" if detail else ""),
        )
    )


def ensure_topics(kafka: KafkaSettings, *, timeout: float = 30.0) -> list[str]:
    """Make sure ``kafka.topic`` and ``kafka.dlq_topic`` exist; returns the ones created."""
    trap = _ErrorTrap(kafka)
    admin = AdminClient(admin_config(kafka, trap))
    deadline = time.monotonic() + timeout
    md = _metadata(admin, kafka, trap, timeout)
    wanted = list(dict.fromkeys([kafka.topic, kafka.dlq_topic]))
    missing = [t for t in wanted if t not in md.topics or md.topics[t].error is not None]
    if not missing:
        return []
    if not kafka.create_topics:
        raise KafkaSetupError(
            f"topic {missing[0]!r} does not exist and {CREATE_TOPICS_VAR} is false: create it "
            f"(or set {CREATE_TOPICS_VAR}=true)"
        )
    new = [
        NewTopic(
            name,
            num_partitions=kafka.partitions,
            replication_factor=kafka.replication_factor,
            config=dict(kafka.topic_config),
        )
        for name in missing
    ]
    remaining = max(1.0, deadline - time.monotonic())
    futures = admin.create_topics(new, operation_timeout=remaining, request_timeout=remaining)
    created: list[str] = []
    for name, future in futures.items():
        try:
            future.result(timeout=remaining)
            created.append(name)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # another replica was quicker
            problem = credentials_problem(kafka, err)
            if problem:
                raise KafkaSetupError(f"cannot create topic {name!r}: {problem}") from None
            raise KafkaSetupError(
                _redact(kafka, f"cannot create topic {name!r}: {err.name()}: {err.str()}")
            ) from None
    _wait_led(admin, kafka, trap, missing, deadline)
    for name in created:
        log.info("kafka.topic_created", topic=name, partitions=kafka.partitions)
    return created


def _wait_led(
    admin: AdminClient, kafka: KafkaSettings, trap: _ErrorTrap, names: list[str], deadline: float
) -> None:
    """Wait until every partition of ``names`` has a leader (created topics take a moment)."""
    while True:
        md = _metadata(admin, kafka, trap, max(1.0, deadline - time.monotonic()))
        pending = [
            n
            for n in names
            if n not in md.topics
            or md.topics[n].error is not None
            or not md.topics[n].partitions
            or any(p.leader < 0 for p in md.topics[n].partitions.values())
        ]
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise KafkaSetupError(f"topic {pending[0]!r} was created but has no leader yet")
        time.sleep(0.1)


def partitions_of(md: Any, topic: str) -> list[int]:
    tmd = md.topics.get(topic)
    if tmd is None or tmd.error is not None:
        return []
    return sorted(tmd.partitions)


def topic_message_limit(kafka: KafkaSettings, topic: str, timeout: float = 10.0) -> int | None:
    """The topic's ``max.message.bytes``, or None when it cannot be read (no ACL, ...)."""
    admin = AdminClient(admin_config(kafka))
    resource = ConfigResource(ResourceType.TOPIC, topic)
    try:
        entries = admin.describe_configs([resource], request_timeout=timeout)[resource].result(
            timeout=timeout
        )
        return int(entries["max.message.bytes"].value)
    except (KafkaException, KeyError, ValueError, TypeError, TimeoutError) as exc:
        log.info("kafka.topic_limit_unknown", topic=topic, error=type(exc).__name__)
        return None


class Probe:
    """A cached AdminClient for cheap reachability checks (thread-safe, for /readyz)."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self._admin: AdminClient | None = None

    def reachable(self, timeout: float) -> bool:
        if self._admin is None:
            conf = admin_config(self._kafka)
            conf["log_level"] = 3
            self._admin = AdminClient(conf)
        try:
            md = self._admin.list_topics(timeout=max(0.1, timeout))
        except KafkaException:
            return False
        return bool(md.brokers)
