"""Kafka error codes and their meaning: the fenced / generation-moved overlap decided in one
place, denials named without secrets, transient codes."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError
from pydantic import SecretStr

from bridge.config import KafkaSettings
from bridge.errors import KafkaSetupError
from bridge.kafkaerrors import (
    DENIAL_CODES,
    FENCED_CODES,
    GENERATION_MOVED,
    Meaning,
    classify_error,
    credentials_problem,
    raise_if_reader_denied,
    transient,
)


class _Leading:
    """A still_leading answer that records whether it was asked."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.answer


@pytest.mark.parametrize("code", sorted(GENERATION_MOVED))
def test_a_moved_generation_is_renewed_while_leading_and_fenced_otherwise(code: int) -> None:
    """ILLEGAL_GENERATION / REBALANCE_IN_PROGRESS (also fencing codes) mean RENEWED while the
    election says we still lead, FENCED once it says the term is lost."""
    assert code in FENCED_CODES  # the overlap classify_error decides
    err = KafkaError(code, txn_requires_abort=True)
    assert classify_error(err, _Leading(True)) is Meaning.RENEWED
    assert classify_error(err, _Leading(False)) is Meaning.FENCED


@pytest.mark.parametrize("code", sorted(FENCED_CODES - GENERATION_MOVED))
def test_other_fencing_codes_are_fenced_without_asking_the_election(code: int) -> None:
    """A fenced producer or a gone membership is FENCED at once; the (slow) still-leading
    question is never asked, even for an error that is also fatal or abortable."""
    leading = _Leading(True)
    err = KafkaError(code, fatal=True, txn_requires_abort=True)
    assert classify_error(err, leading) is Meaning.FENCED
    assert leading.asked == 0


@pytest.mark.parametrize(
    ("err", "meaning"),
    [
        (KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, fatal=True), Meaning.DENIED),
        (KafkaError(KafkaError.SASL_AUTHENTICATION_FAILED, retriable=True), Meaning.DENIED),
        (KafkaError(KafkaError._SSL), Meaning.DENIED),
        (KafkaError(KafkaError._INCONSISTENT, fatal=True, txn_requires_abort=True), Meaning.FATAL),
        (KafkaError(KafkaError._MSG_TIMED_OUT, txn_requires_abort=True), Meaning.ABORT),
        (KafkaError(KafkaError._TIMED_OUT, retriable=True), Meaning.RETRY),
        (KafkaError(KafkaError.INVALID_CONFIG), Meaning.FAILED),
    ],
)
def test_meanings_follow_the_precedence_order(err: KafkaError, meaning: Meaning) -> None:
    """Denial before fatal before abortable before retriable; anything else FAILED."""
    assert classify_error(err, _Leading(True)) is meaning


@pytest.mark.parametrize(
    "code",
    [*sorted(DENIAL_CODES), KafkaError._TRANSPORT, KafkaError.ILLEGAL_GENERATION, 0],
)
def test_credentials_problem_answers_exactly_for_denials(code: int) -> None:
    """credentials_problem has a line for every code classify_error calls DENIED, and none
    for any other code."""
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1")
    line = credentials_problem(kafka, KafkaError(code))
    assert (line is not None) == (code in DENIAL_CODES)


def test_credentials_problem_is_one_line_without_the_password() -> None:
    """A refused login names the user and the variables, never the password."""
    kafka = KafkaSettings(
        bootstrap_servers="127.0.0.1:1",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="bridge",
        sasl_password=SecretStr("hunter2-secret"),
    )
    line = credentials_problem(kafka, KafkaError(KafkaError._AUTHENTICATION, "bad password"))
    assert line is not None
    assert "\n" not in line
    assert "BRIDGE_KAFKA__SASL_USERNAME" in line
    assert "bridge" in line
    assert "hunter2" not in line
    denied = credentials_problem(kafka, KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    assert denied is not None and "TOPIC_AUTHORIZATION_FAILED" in denied
    assert credentials_problem(kafka, KafkaError(KafkaError._TRANSPORT)) is None


def test_a_reader_is_denied_on_the_topic_but_not_on_its_unused_group() -> None:
    """A reader's missing topic ACL raises, naming Read on the topic; a group denial does not
    (the readers assign partitions and never use their group)."""
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1")
    with pytest.raises(KafkaSetupError, match="Read on Topic 'hits-x'"):
        raise_if_reader_denied(kafka, KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), "hits-x")
    raise_if_reader_denied(kafka, KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED), "hits-x")


def test_transient_codes_clear_up_by_themselves() -> None:
    """A leader or topic still settling, or any retriable error, is transient; a denial not."""
    assert transient(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))
    assert transient(KafkaError(KafkaError.INVALID_CONFIG, retriable=True))
    assert not transient(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
