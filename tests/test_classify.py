"""The record rules of bridge.classify, and the Publisher (its general path and its native
lane) agreeing with them on every generated record (hit or dead letter, key, hit-id,
report-suite, received-at); bridge.fields' native-speed reader giving orjson's answer,
value and type, on any bytes."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge._fields import Reader
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
from bridge.fields import FIELDS, FieldReader, Fields, reference_fields
from bridge.publish import Publisher
from tests.publishing import NOW, FakeProducer, fake_publisher, sent
from tests.publishing import fake_fixture as _fake_fixture  # noqa: F401 - the `fake` fixture
from tests.test_hostile import field_value, hit_line, hostile_line

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


# A hit that opens the transaction, so that the record after it meets the native lane.
_PRIMER = b'{"hitIdHigh":"1","hitIdLow":"1","visIdHigh":"2","visIdLow":"3"}'


def _publish(
    pub: Publisher, record: bytes, lane: bool, fake: type[FakeProducer]
) -> tuple[str, bytes, Any, dict[str, Any]]:
    """The one message ``record`` becomes, as the first of its transaction (the general
    path) or, ``lane``, after a hit (the native lane takes it when of its form)."""
    pub.begin(None)
    pub.publish_many([_PRIMER, record] if lane else [record], NOW)
    *_, last = sent(fake.instances[0])
    return last


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
    lane=st.booleans(),
)
def test_the_fast_path_agrees_with_classify(  # noqa: PLR0917 - hypothesis passes each by name
    fake_publishers: type[FakeProducer],
    record: bytes,
    require_hit_id: bool,
    key: str,
    default_suite: str | None,
    lane: bool,
) -> None:
    """Whatever the record, the Publisher sends what classify says: the same dead-letter
    reason, or a hit with the same key, hit-id, report-suite and received-at headers;
    whether it opens a transaction (the general path) or follows a hit (the native lane)."""
    fake_publishers.instances = []
    pub, _ = fake_publisher(
        report_suite=default_suite,
        require_hit_id=require_hit_id,
        key=key,
        dedupe_window=0,  # every record reaches Kafka: nothing is a replay
        dedupe_seed=False,
    )
    topic, value, got_key, headers = _publish(pub, record, lane, fake_publishers)
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


# -- bridge.fields: the native-speed reader against orjson ---------------------------------

READER = FieldReader()  # one parser for every example, as the publisher holds one


def _same(a: object, b: object) -> bool:
    """Equal values of equal types, all the way down: ``1 == 1.0 == True`` and ``0.0 == -0.0``
    would hide a difference. Iterative: values nest over a thousand levels deep."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, Fields):
            assert isinstance(y, Fields)
            stack.extend((getattr(x, f), getattr(y, f)) for f in FIELDS)
        elif isinstance(x, float):
            assert isinstance(y, float)
            if x != y or math.copysign(1.0, x) != math.copysign(1.0, y):
                return False
        elif isinstance(x, list):
            assert isinstance(y, list)
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif isinstance(x, dict):
            assert isinstance(y, dict)
            if list(x) != list(y):  # the order of the keys too: orjson.dumps of an id keeps it
                return False
            stack.extend((x[k], y[k]) for k in x)
        elif x != y:
            return False
    return True


def _agrees(record: bytes) -> None:
    got, want = READER.read(record), reference_fields(record)
    assert _same(got, want), (record[:200], got, want)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)


@st.composite
def _objects(draw: st.DrawFn) -> bytes:
    """An object written as text, so a key may repeat, plainly or spelled with escapes."""
    pairs = []
    for _ in range(draw(st.integers(0, 8))):
        name = draw(st.sampled_from(FIELDS) | st.text(max_size=6))
        if draw(st.booleans()):
            key = json.dumps(name, ensure_ascii=draw(st.booleans()))
        else:  # the same key, every character escaped
            key = '"' + "".join(f"\\u{ord(c):04x}" for c in name) + '"'
        value = json.dumps(draw(_JSON), ensure_ascii=draw(st.booleans()))
        pairs.append(f"{key}:{value}")
    return ("{" + ",".join(pairs) + "}").encode("utf-8", "surrogatepass")


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """A record with a few bytes replaced, inserted or deleted."""
    data = bytearray(draw(_objects() | hit_line()))
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        byte = draw(st.sampled_from(b'\x00\xff\x80\xc3\xed\xef"\\{}[],:0-eE.u\t '))
        op = draw(st.integers(0, 2))
        if op == 0:
            data[at] = byte
        elif op == 1:
            data.insert(at, byte)
        else:
            del data[at]
    return bytes(data)


_MANY = settings(
    max_examples=1500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_MANY
@given(hostile_line | hit_line() | field_value())
def test_the_reader_agrees_with_orjson_on_hostile_records(record: bytes) -> None:
    """Invalid UTF-8, lone surrogates, NUL, BOM, NaN, huge numbers, deep nesting, duplicate
    ids, top-level non-objects: the reader's verdict and fields are orjson's."""
    _agrees(record)


@_MANY
@given(_objects())
def test_the_reader_keeps_the_last_of_duplicate_keys(record: bytes) -> None:
    """A key given twice, plainly or escaped: the last value wins, as with orjson, and every
    value comes back with orjson's type (int, float, nested dict key order included)."""
    _agrees(record)


@_MANY
@given(_mutated() | st.binary(max_size=200))
def test_the_reader_agrees_with_orjson_on_broken_bytes(record: bytes) -> None:
    """Records with bytes flipped, inserted or deleted, and random bytes: orjson's verdict."""
    _agrees(record)


def _deep(n: int) -> bytes:
    return b'{"hitIdHigh":1,"x":' + b"[" * n + b"0" + b"]" * n + b"}"


@pytest.mark.parametrize(
    "record",
    [
        b'\xef\xbb\xbf{"hitIdHigh":1}',  # simdjson accepts a BOM, orjson does not
        b'{"hitIdHigh":18446744073709551615,"hitIdLow":1}',  # u64: an int
        b'{"hitIdHigh":18446744073709551616,"hitIdLow":1}',  # beyond: a float for orjson
        b'{"hitIdHigh":-9223372036854775809,"hitIdLow":1}',
        b'{"x":1e999}',
        b'{"x":' + b"1" * 400 + b"}",
        b'{"x":1e-400,"y":-1e-400,"timeGMT":-0,"receivedTimeGMT":0.1e1}',
        b'{"reportSuite":1.7976931348623157e308,"timeGMT":2.2250738585072011e-308}',
        b'{"hitIdHigh":9007199254740993.0,"hitIdLow":0.30000000000000004441}',
        b'{"hitIdHigh":1,"x":NaN}',
        b'{"x":"\\ud800"}',
        b'{"x":"a\x00"}',
        b'{"x":"\xed\xa0\x80"}',
        b'{"\xff":1,"hitIdHigh":1}',
        b'{"hitIdHigh":1}\x00',
        b'{"hitIdHigh":1,"hitIdHigh":2}',
        b'{"hitIdHigh":1,"hit\\u0049dHigh":5}',
        b'{"hitIdHigh":{"a":1,"b":2,"a":3},"hitIdLow":[{"k":1,"k":[2]}]}',
        _deep(1022),
        _deep(1023),
        _deep(1024),
        _deep(1025),
        b" \t\r\n{}\r\n ",
        b"\x0c{}",
        b"[]",
        b"1",
        b"",
        b'"\\ud800"',
        b"18446744073709551616",
        # The C reader's plain values (bridge/_fields.c) and what it leaves to msgspec.
        b' { "hitIdHigh" : 12 , "hitIdLow"\t:\r"34" ,"reportSuite": true , "timeGMT" : null } ',
        b'{"hitIdHigh":-0,"hitIdLow":-9223372036854775808,"timeGMT":-1}',
        b'{"hitIdHigh":"a\\"b","hitIdLow":"\\u00e9","reportSuite":"\\u00e9t\\u00e9"}',
        b'{"hitIdHigh":1.0,"hitIdLow":1e2,"timeGMT":0,"receivedTimeGMT":10}',
        b'{"x":{"hitIdHigh":7,"y":["}",{"z":"]\\"}]},"hitIdHigh":8,"hitIdLow":"\xc3\xa9"}',
        b'{"hitIdHigh":[1,2],"hitIdLow":{"a":1}}',
        b'{"x":"\\\\","hitIdHigh":"\\\\"}',
        b'{"hitIdHigh":"1","hitIdHigh":"2","hitIdHigh":3}',
        b'{"hitIdHigh":"",  "visIdHigh":"\xe6\x9d\xb1", "x":[], "y":{}}',
    ],
)
def test_the_reader_agrees_with_orjson_on_the_edge_cases(record: bytes) -> None:
    """Each case where simdjson or msgspec alone would answer otherwise than orjson."""
    _agrees(record)


PLAIN = Reader(FIELDS, Fields)  # the C reader alone, without simdjson in front of it

# Text that JSON writes without an escape (ensure_ascii=False): no quote, backslash,
# control character or surrogate.
_unescaped = st.characters(exclude_characters='"\\', exclude_categories=["Cs", "Cc"])
_plain_value = st.integers(-(2**63), 2**64 - 1) | st.text(_unescaped) | st.booleans() | st.none()


@st.composite
def _plain_hits(draw: st.DrawFn) -> bytes:
    """Hits as Live Stream writes them: every field the bridge reads plain, any JSON around."""
    pairs = [
        json.dumps(name) + ":" + json.dumps(draw(_plain_value), ensure_ascii=False)
        for name in draw(st.lists(st.sampled_from(FIELDS), max_size=12))
    ]
    for _ in range(draw(st.integers(0, 4))):  # other keys, with any value (escapes too)
        key = draw(st.text(_unescaped, max_size=6).filter(lambda k: k not in FIELDS))
        value = json.dumps(draw(_JSON), ensure_ascii=draw(st.booleans()))
        pairs.insert(
            draw(st.integers(0, len(pairs))), json.dumps(key, ensure_ascii=False) + ":" + value
        )
    gap = draw(st.sampled_from(["", " ", "\r\n\t"]))
    return (gap + "{" + gap + ("," + gap).join(pairs) + "}" + gap).encode()


@_MANY
@given(_plain_hits())
def test_the_c_reader_answers_for_plain_hits_as_orjson_does(record: bytes) -> None:
    """A valid record whose fields are plain is read by the C reader alone (no msgspec),
    with orjson's values and types, the last of repeated keys included."""
    got = PLAIN.read(record)
    assert got is not None, record
    assert _same(got, reference_fields(record)), (record, got)


@_MANY
@given(_mutated() | st.binary(max_size=300) | hostile_line)
def test_the_c_reader_stays_in_bounds_on_any_bytes(record: bytes) -> None:
    """Given bytes that are not valid JSON (the bridge never does that: simdjson is asked
    first), the C reader neither raises nor crashes: it returns None or Fields."""
    got = PLAIN.read(record)
    assert got is None or isinstance(got, Fields)


def test_an_uninitialised_c_reader_refuses_work() -> None:
    """A Reader made without its fields and class raises instead of calling nothing."""
    with pytest.raises(ValueError):
        Reader.__new__(Reader).read(b"{}")


@settings(
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(record=hostile_line | _objects() | _mutated(), lane=st.booleans())
def test_the_publisher_agrees_with_classify_on_hostile_records(
    fake_publishers: type[FakeProducer], record: bytes, lane: bool
) -> None:
    """Through the publisher's reader, or its native lane, a hostile record is the hit or
    dead letter classify makes of it with orjson: same topic, key, hit-id and report-suite."""
    fake_publishers.instances = []
    pub, _ = fake_publisher(report_suite="cfg.rs", dedupe_window=0, dedupe_seed=False)
    topic, value, key, headers = _publish(pub, record, lane, fake_publishers)
    verdict = classify(record, default_suite="cfg.rs")
    if isinstance(verdict, str):
        assert (topic, key, headers["reason"]) == ("dlq", None, verdict)
        return
    assert (topic, value, key) == ("hits", record, verdict.key)
    assert list(headers) == ["hit-id", "report-suite", "received-at"]
    assert (headers["hit-id"], headers["report-suite"]) == (verdict.hit_id, verdict.suite)
