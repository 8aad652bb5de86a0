"""Hostile records: hypothesis-generated lines through the decoder and the real Publisher.

Two passes. The pure pass (many examples) runs gzip -> ``RecordDecoder`` -> ``Publisher``
over a fake librdkafka producer and holds every record against an independent oracle: the
standard library's JSON parser plus orjson's documented limits (nesting deeper than 1024,
lone surrogates, numbers beyond a double, integers beyond 64 bits read as floats) and the
hit-id rules of ``bridge.dedupe``. The integration pass (few examples) sends such records
through a real transactional ``Publisher`` to the real broker and reads both topics back.

Either way: no crash; each record is published (byte-identical value, ``hit-id`` header),
dropped as a replay, or dead-lettered with a reason, and the metrics count exactly that.
"""

from __future__ import annotations

import gzip
import itertools
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import bridge.publish as publish_mod
from bridge.config import KafkaSettings, PublishSettings
from bridge.decode import OversizedRecord, RecordDecoder
from bridge.dedupe import hit_id_key, hit_id_text
from bridge.observability import DLQ_REASONS, Metrics
from bridge.publish import Publisher
from tests.harness import metric_value
from tests.kafkautil import read_all
from tests.publishing import FakeProducer

U64 = (1 << 64) - 1
I64_MIN = -(1 << 63)
MAX_DEPTH = 1024  # orjson's nesting limit
TOPIC, DLQ = "hits", "hits-dlq"

# -- hostile lines -------------------------------------------------------------------------

_ID_DIGITS = st.integers(0, U64)
_INVALID_UTF8 = (b"\xff", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x80")
_LONE = (b"\\ud800", b"\\udfff", b"\\udc00\\ud800", b"\\ud83d", b"\\ud83d\\u0041")
_NUMBERS = (
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e999",
    b"-1e999",
    b"1e-999",
    b"18446744073709551615",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"1" * 400,
    b"-0",
    b"0.1e1",
    b"9007199254740993",
    b"1.0",
)


@st.composite
def hit_id_value(draw: st.DrawFn) -> bytes | None:
    """The JSON text of one hit-id component (None: left out), mostly valid."""
    kind = draw(st.integers(0, 11))
    n = draw(_ID_DIGITS)
    options: list[bytes | None] = [
        b"%d" % n,
        b'"%d"' % n,
        b"%d" % n,
        b'"%d"' % n,
        None,
        b"null",
        b'""',
        b'"abc"',
        b"-%d" % (n + 1),
        draw(st.sampled_from(_NUMBERS)),
        draw(st.sampled_from((b"true", b"false", b"[1]", b'{"a":1}', b'"\\u0661\\u0662"'))),
        b'"%s"' % (b"9" * draw(st.integers(19, 22))),
    ]
    return options[kind]


@st.composite
def string_value(draw: st.DrawFn) -> bytes:
    """A JSON string token, possibly broken (raw NUL, invalid UTF-8, lone surrogates)."""
    text = draw(st.text(max_size=30)).encode("utf-8", "surrogatepass")
    text = json.dumps(text.decode("utf-8", "surrogatepass"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )[1:-1]
    spice = draw(
        st.sampled_from(
            [b"", b"\x00", b"\\u0000", b"\xef\xbb\xbf", b"\t", b"\r", *_INVALID_UTF8, *_LONE]
        )
    )
    at = draw(st.integers(0, len(text)))
    return b'"' + text[:at] + spice + text[at:] + b'"'


@st.composite
def field_value(draw: st.DrawFn) -> bytes:  # noqa: PLR0911 - one return per kind
    kind = draw(st.integers(0, 6))
    if kind == 0:
        return draw(string_value())
    if kind == 1:
        return draw(st.sampled_from(_NUMBERS))
    if kind == 2:
        depth = draw(st.sampled_from((2, 50, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 5)))
        opener, closer = draw(st.sampled_from(((b"[", b"]"), (b'{"d":', b"}"))))
        return opener * depth + b"0" + closer * depth
    if kind == 3:
        return b'"' + b"x" * draw(st.integers(1000, 9000)) + b'"'
    if kind == 4:
        return b"[" + b",".join(draw(st.lists(st.sampled_from(_NUMBERS), max_size=4))) + b"]"
    if kind == 5:
        return draw(st.sampled_from((b"null", b"true", b"{}", b"[]", b'""')))
    return b"%d" % draw(st.integers(-(10**30), 10**30))


@st.composite
def hit_line(draw: st.DrawFn) -> bytes:
    """A JSON object shaped like a hit, with hostile ids, keys and values."""
    parts: list[bytes] = []
    high, low = draw(hit_id_value()), draw(hit_id_value())
    if high is not None:
        parts.append(b'"hitIdHigh":' + high)
    if low is not None:
        parts.append(b'"hitIdLow":' + low)
    if draw(st.booleans()):  # duplicate keys: the last one wins everywhere
        parts.append(b'"hitIdLow":' + (draw(hit_id_value()) or b"1"))
    if draw(st.booleans()):
        parts.append(b'"visIdHigh":' + (draw(hit_id_value()) or b"2"))
        parts.append(b'"visIdLow":' + (draw(hit_id_value()) or b"3"))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(
            st.sampled_from((b'"pageName"', b'"reportSuite"', b'"evar1"', b'"receivedTimeGMT"'))
        )
        parts.append(name + b":" + draw(field_value()))
    parts = draw(st.permutations(parts))
    body = b"{" + b",".join(parts) + b"}"
    prefix = draw(st.sampled_from((b"", b"", b"", b"\xef\xbb\xbf", b" ", b"\x00")))
    suffix = draw(st.sampled_from((b"", b"", b"", b" ", b"\x00", b",", b"}")))
    return prefix + body + suffix


def _no_newline(line: bytes) -> bytes:
    return line.replace(b"\n", b" ")


hostile_line = st.one_of(
    hit_line(),
    hit_line(),
    hit_line(),
    field_value(),  # scalars, arrays and strings at top level
    st.binary(max_size=80),
    st.sampled_from((b"   ", b"\r", b"[]", b"null", b'"\\ud800"', b"\xef\xbb\xbf{}", b"{}")),
).map(_no_newline)


# -- the oracle ----------------------------------------------------------------------------


class _Big:
    """An integer outside int64..uint64: orjson reads it as a (possibly inexact) float."""

    def __init__(self, value: int) -> None:
        self.value = value


def _int(text: str) -> int | float | _Big:
    n = int(text)  # ValueError past 4300 digits: invalid as well
    if I64_MIN <= n <= U64:
        return n
    float(n)  # OverflowError: beyond a double, invalid for orjson
    return _Big(n)


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("beyond a double")
    return value


def _reject(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


class _Object(dict[str, Any]):
    """A parsed object that keeps the pairs a duplicate key overwrote (the parser still
    had to read them, so they count for the limits)."""

    pairs: list[tuple[str, Any]]


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    obj.pairs = pairs
    return obj


def _depth_and_surrogates(value: Any, depth: int = 0) -> int:
    """Nesting depth of ``value``; raises ValueError on a lone surrogate anywhere."""
    if isinstance(value, str):
        if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            raise ValueError("lone surrogate")
        return depth
    if isinstance(value, list):
        return max([depth + 1, *(_depth_and_surrogates(v, depth + 1) for v in value)])
    if isinstance(value, _Object):
        for key, _ in value.pairs:
            _depth_and_surrogates(key)
        return max([depth + 1, *(_depth_and_surrogates(v, depth + 1) for _, v in value.pairs)])
    return depth


def parse(line: bytes) -> tuple[bool, Any]:
    """(valid, document) by the standard library's strict parser and orjson's limits."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * MAX_DEPTH))  # the stdlib parser recurses per level
    try:
        text = line.decode("utf-8")
        if text.startswith("\ufeff"):
            return False, None
        doc = json.loads(
            text,
            parse_constant=_reject,
            parse_int=_int,
            parse_float=_float,
            object_pairs_hook=_object,
        )
        if _depth_and_surrogates(doc) > MAX_DEPTH:
            return False, None
    except (ValueError, OverflowError):
        return False, None
    finally:
        sys.setrecursionlimit(limit)
    return True, doc


def _usable(component: Any) -> bool | None:
    """True: a usable id component; False: unusable (missing); None: not exactly specified."""
    if component is None or component == "" or isinstance(component, _Big):
        return False
    if isinstance(component, float):
        return component.is_integer() and abs(component) <= 2**53
    return True


def expected_outcome(record: bytes) -> str:
    """``hit``, a dead-letter reason, or ``oversized-or-hit`` near the size limit."""
    if isinstance(record, OversizedRecord):
        return "oversized"
    valid, doc = parse(record)
    if not valid:
        return "not_json"
    if not isinstance(doc, dict):
        return "not_object"
    if not (_usable(doc.get("hitIdHigh")) and _usable(doc.get("hitIdLow"))):
        return "missing_hit_id"
    return "hit"


DECODER_MAX = 8192


def _message_estimate(record: bytes) -> int:
    """Value plus the header and key text a hit's message carries (roughly)."""
    doc = orjson.loads(record)
    extra = [doc.get("reportSuite"), doc.get("hitIdHigh"), doc.get("hitIdLow")]
    extra += [doc.get("visIdHigh"), doc.get("visIdLow")]
    return len(record) + sum(len(str(v)) for v in extra if v is not None)


TOPIC_LIMIT = 6000  # max.message.bytes of the fake topic: produce() refuses near it


@pytest.fixture
def pure(
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[], tuple[Publisher, Metrics, list[FakeProducer]]]:
    """A Publisher over the fake producer (no broker): returns (publisher, metrics, producers)."""
    monkeypatch.setattr(publish_mod, "topic_message_limit", lambda *a, **k: TOPIC_LIMIT)

    def make() -> tuple[Publisher, Metrics, list[FakeProducer]]:
        FakeProducer.instances = []
        FakeProducer.script = {}
        metrics = Metrics()
        kafka = KafkaSettings(bootstrap_servers="fake:9092", topic=TOPIC, dlq_topic=DLQ)
        cfg = PublishSettings(dedupe_window=10_000, dedupe_seed=False, commit_max_records=1000)
        publisher = Publisher(kafka, cfg, metrics, producer_factory=FakeProducer)
        publisher.begin(None)
        return publisher, metrics, FakeProducer.instances

    return make


def _decode(lines: list[bytes], cuts: list[int]) -> list[bytes]:
    """The lines as Live Stream would send them (CRLF, gzip, arbitrary chunks), decoded."""
    body = gzip.compress(b"".join(line + b"\r\n" for line in lines))
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    decoder = RecordDecoder(DECODER_MAX)
    out: list[bytes] = []
    for a, b in itertools.pairwise(points):
        out += decoder.feed(body[a:b])
    return out


@settings(
    max_examples=250,
    deadline=None,
    database=None,
    # ``pure`` hands out a factory: every example makes its own publisher and metrics.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(lines=st.lists(hostile_line, min_size=1, max_size=12), cuts=st.lists(st.integers(0, 10**6)))
def test_hostile_records_are_classified_and_counted(
    pure: Callable[[], tuple[Publisher, Metrics, list[FakeProducer]]],
    lines: list[bytes],
    cuts: list[int],
) -> None:
    """Every decoded hostile record is published, dropped as a replay, or dead-lettered with
    the oracle's reason; nothing raises and the metrics count exactly that."""
    publisher, metrics, producers = pure()
    records = _decode(lines, cuts)
    wanted = [line for line in lines if line]
    assert [bytes(r) for r in records] == [
        line[:DECODER_MAX] if len(line) > DECODER_MAX else line for line in wanted
    ]
    assert all(
        isinstance(r, OversizedRecord) == (len(w) > DECODER_MAX)
        for r, w in zip(records, wanted, strict=True)
    )
    seen: set[tuple[int, int]] = set()
    expected: list[tuple[str, bytes]] = []  # (outcome, record) per record, in order
    for record in records:
        outcome = expected_outcome(record)
        event(outcome)
        if outcome == "hit":
            doc = orjson.loads(record)
            key = hit_id_key(doc.get("hitIdHigh"), doc.get("hitIdLow"))
            assert key is not None, record[:200]
            if key in seen:
                outcome = "replay"
            seen.add(key)
        expected.append((outcome, record))
        publisher.publish(record, time.time())
    publisher.commit()
    committed = [m for p in producers for m in p.committed]
    assert not any(p.open for p in producers)
    messages = iter(committed)
    counts: Counter[str] = Counter()
    for outcome, record in expected:
        if outcome == "replay":
            counts["replay"] += 1
            continue
        topic, value, key, headers = next(messages)
        names = dict(headers)
        if topic == TOPIC:
            assert outcome == "hit", (outcome, record[:300])
            assert value == record
            doc = orjson.loads(record)
            assert names["hit-id"] == hit_id_text(doc["hitIdHigh"], doc["hitIdLow"])
            assert "received-at" in names
            counts["hit"] += 1
            continue
        assert topic == DLQ
        reason = names["reason"]
        # Near the topic's size limit produce() itself refuses a valid hit (the value plus
        # its headers, and reportSuite is copied into one): then oversized is right too.
        near_limit = outcome == "hit" and _message_estimate(record) > TOPIC_LIMIT - 512 - 300
        assert reason == outcome or (near_limit and reason == "oversized"), (
            reason,
            outcome,
            record[:300],
        )
        if "original-size" in names:
            size = record.size if isinstance(record, OversizedRecord) else len(record)
            assert int(names["original-size"]) == size
            assert record.startswith(value)
        else:
            assert value == record
        counts[reason] += 1
    assert next(messages, None) is None, "more messages than records"
    text = metrics.render().decode()
    assert metric_value(text, "livestream_bridge_records_published_total") == counts["hit"]
    assert metric_value(text, "livestream_bridge_records_deduplicated_total") == counts["replay"]
    for reason in DLQ_REASONS:
        got = metric_value(text, "livestream_bridge_records_dead_lettered_total", reason=reason)
        assert got == counts[reason], (reason, counts)


# -- the integration pass ------------------------------------------------------------------


plain_hit = st.builds(
    lambda high, low, page: (
        b'{"hitIdHigh":"%d","hitIdLow":"%d","pageName":%s}' % (high, low, json.dumps(page).encode())
    ),
    _ID_DIGITS,
    _ID_DIGITS,
    st.text(max_size=40),
)
long_hit = st.builds(
    lambda n, size: b'{"hitIdHigh":7,"hitIdLow":%d,"pageName":"%s"}' % (n, b"y" * size),
    st.integers(0, U64),
    st.sampled_from((10_000, 500_000, 1_048_000, 1_100_000)),
)


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_hostile_records_through_the_real_broker(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """Hostile batches through a real transactional Publisher: both topics read back hold
    each record once (hit or dead letter with a reason) and agree with the metrics."""
    topic, dlq = topic_factory(3), topic_factory(3)
    metrics = Metrics()
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap,
        topic=topic,
        dlq_topic=dlq,
        transactional_id=f"hostile-{uuid.uuid4().hex[:8]}",
    )
    publisher = Publisher(kafka, PublishSettings(dedupe_window=100_000), metrics)
    publisher.begin(None)
    sent: list[bytes] = []

    @settings(
        max_examples=30,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(st.one_of(plain_hit, hit_line(), hostile_line, long_hit), max_size=10))
    def batch(lines: list[bytes]) -> None:
        for line in lines:
            publisher.publish(line, time.time())
            sent.append(line)
        publisher.commit()

    try:
        batch()
    finally:
        publisher.close(30)
    hits = read_all(kafka_bootstrap, topic, timeout=60)
    dead = read_all(kafka_bootstrap, dlq, timeout=60)
    text = metrics.render().decode()
    published = metric_value(text, "livestream_bridge_records_published_total")
    replays = metric_value(text, "livestream_bridge_records_deduplicated_total")
    reasons = Counter((dict(r.headers)["reason"] or b"").decode() for r in dead)
    print(
        f"\nhostile (real broker): sent={len(sent)} published={len(hits)} "
        f"dead_lettered={dict(reasons)} deduplicated={replays:.0f}"
    )
    assert len(hits) == published
    assert len(hits) + len(dead) + replays == len(sent)
    sent_set = set(sent)
    assert all(r.value in sent_set for r in hits)
    assert all(dict(r.headers).get("hit-id") for r in hits)
    assert len({r.value for r in hits}) == len(hits)
    for reason in DLQ_REASONS:
        got = metric_value(text, "livestream_bridge_records_dead_lettered_total", reason=reason)
        assert got == reasons[reason], (reason, reasons)
    for r in dead:
        headers = {k: (v or b"").decode() for k, v in r.headers}
        assert headers["reason"] in DLQ_REASONS
        if "original-size" in headers:
            assert any(
                s.startswith(r.value or b"") and len(s) == int(headers["original-size"])
                for s in sent
            )
        else:
            assert r.value in sent_set
