"""The record rules of bridge.classify, and the Publisher's inlined fast path agreeing with
them on every generated record (hit or dead letter, key, hit-id, report-suite, received-at)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.classify import (
    DLQ_HEAD_BYTES,
    MISSING_HIT_ID,
    NOT_JSON,
    NOT_OBJECT,
    OVERSIZED,
    Hit,
    classify,
    dead_letter,
    received_at_header,
)
from bridge.decode import OversizedRecord
from tests.publishing import NOW, FakeProducer, fake_publisher, sent
from tests.publishing import fake_fixture as _fake_fixture  # noqa: F401 - the `fake` fixture

U64 = (1 << 64) - 1

# Id-like values in every form the rules distinguish: numbers in and out of u64, canonical
# and zero-padded digit strings, other text, empties, and other JSON types.
_ID = st.one_of(
    st.integers(0, U64),
    st.integers(-(1 << 70), 1 << 70),
    st.integers(0, U64).map(str),
    st.from_regex(r"0[0-9]{0,21}", fullmatch=True),
    st.from_regex(r"[0-9]{19,22}", fullmatch=True),
    st.text(max_size=8),
    st.just(""),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(0, 9), max_size=2),
)
_FIELDS = ("hitIdHigh", "hitIdLow", "visIdHigh", "visIdLow", "mcVisIdHigh", "mcVisIdLow")
_SUITE = st.one_of(st.text(max_size=6), st.integers(), st.none(), st.booleans())


@st.composite
def _records(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["object", "object", "object", "other_json", "garbage", "big"]))
    if kind == "garbage":
        return draw(st.binary(max_size=20))
    if kind == "other_json":
        return json.dumps(
            draw(st.one_of(st.integers(), st.lists(st.integers()), st.text()))
        ).encode()
    doc: dict[str, Any] = {}
    for name in _FIELDS:
        if draw(st.booleans()):
            doc[name] = draw(_ID)
    if draw(st.booleans()):
        doc["reportSuite"] = draw(_SUITE)
    if draw(st.booleans()):
        doc["receivedTimeGMT"] = draw(st.integers(0, 2_000_000_000))
    record = json.dumps(doc).encode()  # the standard encoder: integers beyond 64 bits too
    if kind == "big":
        return OversizedRecord(record, len(record) + draw(st.integers(1, 10**7)))
    return record


@pytest.fixture
def fake_publishers(fake: type[FakeProducer]) -> Iterator[type[FakeProducer]]:
    """The fake producer, for publishers made inside a hypothesis example."""
    yield fake


@settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    record=_records(),
    require_hit_id=st.booleans(),
    key=st.sampled_from(["visitor", "none"]),
    default_suite=st.one_of(st.none(), st.just(""), st.just("configured.rs")),
)
def test_the_fast_path_agrees_with_classify(
    fake_publishers: type[FakeProducer],
    record: bytes,
    require_hit_id: bool,
    key: str,
    default_suite: str | None,
) -> None:
    """Whatever the record, the Publisher sends what classify says: the same dead-letter
    reason, or a hit with the same key, hit-id, report-suite and received-at headers."""
    fake_publishers.instances = []
    pub, _ = fake_publisher(
        report_suite=default_suite,
        require_hit_id=require_hit_id,
        key=key,
        dedupe_window=0,  # every record reaches Kafka: nothing is a replay
        dedupe_seed=False,
    )
    pub.begin(None)
    pub.publish(record, NOW)
    ((topic, value, got_key, headers),) = sent(fake_publishers.instances[0])
    verdict = classify(
        record,
        require_hit_id=require_hit_id,
        key_by_visitor=key == "visitor",
        default_suite=default_suite,
    )
    assert headers["received-at"] == received_at_header(NOW)[1]
    if isinstance(verdict, str):
        assert (topic, got_key, headers["reason"]) == ("dlq", None, verdict)
        return
    assert (topic, value, got_key) == ("hits", record, verdict.key)
    assert headers.get("hit-id") == verdict.hit_id
    assert headers.get("report-suite") == verdict.suite


def test_reasons_follow_the_rules_in_order() -> None:
    """Oversized before JSON, JSON before object, object before a usable hit id."""
    assert classify(OversizedRecord(b'{"hitIdHigh":1,"hitIdLow":2}', 10**6)) == OVERSIZED
    assert classify(b"{nope") == NOT_JSON
    assert classify(b"[1]") == NOT_OBJECT
    assert classify(b'{"hitIdHigh":1}') == MISSING_HIT_ID
    assert isinstance(classify(b'{"hitIdHigh":1}', require_hit_id=False), Hit)


def test_a_hit_carries_its_id_key_suite_and_time() -> None:
    """A hit's id is its dedupe key and header text; the key is the visitor id, else the
    Marketing Cloud visitor id; the suite the record's, else the configured one."""
    hit = classify(
        b'{"hitIdHigh":"12","hitIdLow":3,"mcVisIdHigh":"m","mcVisIdLow":4,"timeGMT":7}',
        default_suite="rs",
    )
    assert hit == Hit(ids=(12, 3), hit_id="12:3", key="m:4", suite="rs", stamp=7)


def test_a_dead_letter_keeps_the_head_of_an_oversized_record() -> None:
    """An oversized record keeps only its head and says its true size; a record that fits
    is kept whole, without original-size."""
    head = b"x" * (DLQ_HEAD_BYTES + 10)
    value, headers = dead_letter(head, OVERSIZED, "1", 1_048_576, size=5_000_000)
    assert value == head[:DLQ_HEAD_BYTES]
    assert headers == [("reason", OVERSIZED), ("received-at", "1"), ("original-size", "5000000")]
    value, headers = dead_letter(b"[1]", NOT_OBJECT, "1", 1_048_576)
    assert (value, len(headers)) == (b"[1]", 2)
