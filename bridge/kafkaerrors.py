"""Kafka error codes and what each means to the bridge, in one place.

The codes come in sets, and one set overlaps another on purpose:

* ``PRODUCER_FENCED``: a newer producer took our ``transactional.id``.
* ``GENERATION_MOVED``: the election's group generation we commit offsets with is gone.
  A standby joining the group moves it too, while we keep the partition: then the election
  renews our metadata and the same records go again. Only a lost term makes it a fence.
* ``MEMBER_GONE``: our election membership itself is gone.
* ``FENCED_CODES``: all three. :func:`classify_error` is the one place that decides the
  overlap (``GENERATION_MOVED`` first, asking whether we still lead); nothing else may test
  ``FENCED_CODES`` for a writer's error.
* ``DENIAL_CODES``: refused credentials, a TLS failure or a missing ACL;
  :func:`credentials_problem` says which, naming the ACL to grant (never a secret).
* ``TOO_LARGE_CODES``: a message above a size limit (dead-lettered, not retried).
* ``TRANSIENT_CODES``: a topic or a leader still settling; they clear up by themselves.

``PRODUCE_ERRORS`` are what ``Producer.produce`` raises: a full queue or a Kafka error; the
writer waits out or acts on either, never losing the message.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

from confluent_kafka import KafkaError, KafkaException

from bridge.config import KafkaSettings
from bridge.errors import KafkaSetupError

__all__ = [
    "AUTHENTICATION_CODES",
    "AUTHORIZATION_CODES",
    "DENIAL_CODES",
    "FENCED_CODES",
    "GENERATION_MOVED",
    "MEMBER_GONE",
    "PRODUCER_FENCED",
    "PRODUCE_ERRORS",
    "SSL_CODES",
    "TOO_LARGE_CODES",
    "TRANSIENT_CODES",
    "Meaning",
    "classify_error",
    "credentials_problem",
    "raise_if_reader_denied",
    "transient",
]

PRODUCE_ERRORS = (BufferError, KafkaException)

PRODUCER_FENCED = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
)
GENERATION_MOVED = frozenset({KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS})
MEMBER_GONE = frozenset(
    {
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError.STALE_MEMBER_EPOCH,
        KafkaError.FENCED_MEMBER_EPOCH,
    }
)
FENCED_CODES = PRODUCER_FENCED | GENERATION_MOVED | MEMBER_GONE

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
SSL_CODES = frozenset({KafkaError._SSL})
DENIAL_CODES = AUTHENTICATION_CODES | AUTHORIZATION_CODES | SSL_CODES

TOO_LARGE_CODES = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})

# Right after a topic is created or a leader moves, these clear up by themselves.
TRANSIENT_CODES = frozenset(
    {
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
    }
)


class Meaning(enum.Enum):
    """What a transactional writer does about an error (confluent-kafka's pattern)."""

    RENEWED = "renewed"  # generation moved, term still ours: abort, replay with new metadata
    FENCED = "fenced"  # deposed: stop writing at once
    DENIED = "denied"  # credentials or ACL: no retry helps (KafkaSetupError)
    FATAL = "fatal"  # the producer is unusable: a new one, then replay
    ABORT = "abort"  # the transaction is unusable: abort, begin, replay
    RETRY = "retry"  # call again
    FAILED = "failed"  # none of the above: give up loudly (PublishError)


def classify_error(  # noqa: PLR0911 - one return per meaning, in precedence order
    err: KafkaError, still_leading: Callable[[], bool]
) -> Meaning:
    """The meaning of ``err`` for a transactional writer, in precedence order.

    ``still_leading`` is asked only for a ``GENERATION_MOVED`` code (it may wait for the
    election to renew the metadata); if the term is lost, that code is a fence like the rest
    of ``FENCED_CODES``.
    """
    code = err.code()
    if code in GENERATION_MOVED and still_leading():
        return Meaning.RENEWED
    if code in FENCED_CODES:
        return Meaning.FENCED
    if code in DENIAL_CODES:
        return Meaning.DENIED
    if err.fatal():
        return Meaning.FATAL
    if err.txn_requires_abort():
        return Meaning.ABORT
    if err.retriable():
        return Meaning.RETRY
    return Meaning.FAILED


def transient(err: KafkaError) -> bool:
    """Will ``err`` clear up by itself (retriable, or a topic or leader still settling)?"""
    return bool(err.retriable()) or err.code() in TRANSIENT_CODES


def credentials_problem(
    kafka: KafkaSettings,
    err: KafkaError,
    *,
    topics: Sequence[str] = (),
    read: bool = False,
    group: str | None = None,
) -> str | None:
    """One line describing an error in ``DENIAL_CODES``, or None for other errors.

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
    if code in SSL_CODES:
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


def raise_if_reader_denied(kafka: KafkaSettings, err: KafkaError, topic: str) -> None:
    """Raise ``KafkaSetupError`` naming the missing ACL when a reader of ``topic`` was denied.

    The bridge's readers assign partitions and never commit, so the group.id librdkafka
    insists on is never used: a denial on it is not a problem.
    """
    if err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
        return
    problem = credentials_problem(kafka, err, topics=(topic,), read=True)
    if problem:
        raise KafkaSetupError(problem)
