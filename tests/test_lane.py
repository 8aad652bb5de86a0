"""The publisher's native lane (bridge/_lane.c) sending exactly what its general path
(``Publisher._publish_one``, the definition) sends, record for record, and never losing or
double-counting a hit it could not hand to Kafka."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import simdjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge._lane import Lane
from bridge.kafkaerrors import PRODUCE_ERRORS
from tests.publishing import NOW, FakeProducer, fake_publisher, sent
from tests.publishing import fake_fixture as _fake_fixture  # noqa: F401 - the `fake` fixture
from tests.test_hostile import hostile_line

U64 = (1 << 64) - 1
# Opens every transaction: the first message goes through the general path (add), which
# asks for its delivery report; the lane takes the ones after it.
PRIMER = b'{"hitIdHigh":"1","hitIdLow":"1","visIdHigh":"2","visIdLow":"3"}'

# Ids in both forms the lane takes, from a pool small enough for a replay now and then.
_GOOD_IDS = st.tuples(st.sampled_from([1, 7, U64]), st.integers(0, 60)).map(
    lambda ids: ids if ids[1] % 2 else (str(ids[0]), str(ids[1] or 1))
)
_ODD = st.sampled_from(["011", "0", "", "1x", "\uff11\uff12", "1" * 20, "a\\b"]) | st.sampled_from(
    [U64 + 1, -1, True, False, None, 1.5, [1], {"a": "b"}]
)
# Text JSON writes without an escape (with ensure_ascii off).
_PLAIN_TEXT = st.text(
    st.characters(exclude_characters='"\\', exclude_categories=["Cs", "Cc"]), max_size=4
)


_VIS = _PLAIN_TEXT | st.integers(-(2**63), U64)
_FIELDS = {
    "mcVisIdHigh": _VIS,
    "mcVisIdLow": _VIS,
    "reportSuite": st.sampled_from(["rs", "\u00e9t\u00e9", "", 0, None, False]),
    "receivedTimeGMT": st.sampled_from([0, 7, -5, "", "2026", None, False, True]),
    "timeGMT": st.sampled_from([0, 8, "", "2025", None, True]),
}


@st.composite
def _hits(draw: st.DrawFn) -> bytes:
    """A hit-like object written as text, mostly in the form the lane takes: any of the
    fields the publisher reads; one time in three one field of another form (an odd id,
    key or value, or a key repeated with one), now and then an escape; other keys and
    spacing around."""
    high, low = draw(_GOOD_IDS)
    doc: dict[str, Any] = {"hitIdHigh": high, "hitIdLow": low}
    if draw(st.integers(0, 4)):
        doc["visIdHigh"], doc["visIdLow"] = draw(_VIS | _ODD), draw(_VIS)
    if draw(st.booleans()):  # the key when the visitor id is missing (or unusable)
        doc["mcVisIdHigh"], doc["mcVisIdLow"] = draw(_VIS), draw(_VIS)
    for name in draw(st.lists(st.sampled_from(sorted(_FIELDS)), max_size=5)):
        doc[name] = draw(_FIELDS[name])
    odd = draw(st.integers(0, 5))
    if odd == 0:
        doc[draw(st.sampled_from(["hitIdHigh", "visIdLow", *sorted(_FIELDS)]))] = draw(_ODD)
    pairs = [
        json.dumps(k) + ":" + json.dumps(v, ensure_ascii=draw(st.integers(0, 9)) == 0)
        for k, v in doc.items()
    ]
    if odd == 1:  # a repeated key: the last one counts
        pairs.insert(draw(st.integers(0, len(pairs))), '"hitIdLow":' + json.dumps(draw(_ODD)))
    if draw(st.booleans()):
        pairs.insert(0, '"page":{"hitIdHigh":"9","x":["}",{"y":"\\"]"}]}')
    gap = draw(st.sampled_from(["", " ", "\r\n\t"]))
    return ("{" + gap + ("," + gap).join(pairs) + gap + "}").encode()


_SETTINGS = settings(
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def fakes(fake: type[FakeProducer]) -> Iterator[type[FakeProducer]]:
    """The fake producer, for publishers made inside a hypothesis example."""
    yield fake


def _published(
    fake: type[FakeProducer], records: list[bytes], *, lane: bool, **publish: Any
) -> tuple[list[Any], list[Any], dict[str, float]]:
    """What a publisher sends for ``records`` after the primer, the stamps it keeps for the
    freshness metrics, and its counters; ``lane`` False: the general path alone."""
    fake.instances = []
    pub, _ = fake_publisher(report_suite=publish.pop("suite"), dedupe_seed=False, **publish)
    pub.begin(None)
    if not lane:
        pub._lane = None  # white-box: the switch the general path alone runs with
    pub.publish_many([PRIMER, *records], NOW)
    stamps = [(type(s), s) for s in pub._writer._batch.stamps]  # white-box: before commit
    pub.commit()
    return sent(fake.instances[0]), stamps, pub.counters


_CONFIG = st.fixed_dictionaries(
    {
        "key": st.sampled_from(["visitor", "none"]),
        "suite": st.sampled_from([None, "", "configured.rs"]),
        "require_hit_id": st.booleans(),
        "dedupe_window": st.sampled_from([0, 1000]),
    }
)


@_SETTINGS
@given(records=st.lists(_hits() | _hits() | hostile_line, min_size=4, max_size=24), cfg=_CONFIG)
def test_the_lane_sends_what_the_general_path_sends(
    fakes: type[FakeProducer], records: list[bytes], cfg: dict[str, Any]
) -> None:
    """Whatever the records (hits in every form, replays, hostile lines): the same messages
    in the same order (value, key, headers and their order), stamps and counters."""
    with_lane = _published(fakes, records, lane=True, **cfg)
    alone = _published(fakes, records, lane=False, **cfg)
    assert with_lane[0] == alone[0]
    assert with_lane[1] == alone[1]
    assert with_lane[2] == alone[2]


_VISITORS = [
    b'"visIdHigh":"10","visIdLow":11',
    b'"visIdHigh":-10,"visIdLow":"\xc3\xa9"',
    b'"visIdHigh":"","visIdLow":11,"mcVisIdHigh":"m","mcVisIdLow":2',
    b'"visIdHigh":true,"visIdLow":11,"mcVisIdHigh":"m","mcVisIdLow":2',
    b'"visIdHigh":1.5,"visIdLow":11,"mcVisIdHigh":"m","mcVisIdLow":2',
    b'"visIdHigh":"0","visIdLow":null,"mcVisIdHigh":"m","mcVisIdLow":2',
    b'"visIdLow":11,"mcVisIdHigh":"m","mcVisIdLow":2',
    b'"mcVisIdHigh":"m","mcVisIdLow":2',
    b'"mcVisIdHigh":"","mcVisIdLow":2',
    b'"mcVisIdHigh":false,"mcVisIdLow":2',
    b'"mcVisIdHigh":18446744073709551616,"mcVisIdLow":2',
    b'"visIdHigh":"1","visIdLow":"2","visIdHigh":null,"mcVisIdHigh":3,"mcVisIdLow":4',
    b'"x":1',
]


@pytest.mark.parametrize("visitor", _VISITORS)
def test_the_lane_keys_by_visitor_as_the_general_path_does(
    fake: type[FakeProducer], visitor: bytes
) -> None:
    """The visitor id, else (when it is missing) the Experience Cloud id, else whatever the
    general path makes of the odd forms: the same key either way."""
    records = [b'{"hitIdHigh":"5","hitIdLow":"%d",%s}' % (n, visitor) for n in range(3)]
    cfg = {"key": "visitor", "suite": None, "require_hit_id": True, "dedupe_window": 10}
    with_lane = _published(fake, records, lane=True, **cfg)
    assert with_lane == _published(fake, records, lane=False, **cfg)


@_SETTINGS
@given(records=st.lists(_hits(), min_size=1, max_size=12), limit=st.integers(1, 4))
def test_the_lane_commits_where_the_general_path_does(
    fakes: type[FakeProducer], records: list[bytes], limit: int
) -> None:
    """With a transaction full after ``limit`` messages, the commits cut the stream at the
    same places: the lane stops when it fills one, and the general path opens the next."""
    cuts = []
    for lane in (True, False):
        fakes.instances = []
        pub, _ = fake_publisher(commit_max_records=limit, dedupe_window=0, dedupe_seed=False)
        pub.begin(None)
        if not lane:
            pub._lane = None  # white-box, as above
        pub.publish_many([PRIMER, *records], NOW)
        cuts.append((len(fakes.instances[0].committed), len(fakes.instances[0].open)))
    assert cuts[0] == cuts[1]


class _FullOnce(FakeProducer):
    """A producer whose queue is full once, at its ``full_at``-th produce."""

    full_at = 0

    def produce(self, *args: Any, **kw: Any) -> None:
        _FullOnce.full_at -= 1
        if _FullOnce.full_at == 0:
            raise BufferError("Local: Queue full")
        super().produce(*args, **kw)


@pytest.mark.parametrize("full_at", [2, 3, 7])
def test_a_hit_the_producer_had_no_room_for_is_sent_once_and_is_no_replay(
    fake: type[FakeProducer], monkeypatch: pytest.MonkeyPatch, full_at: int
) -> None:
    """The lane put the hit's id in the window, then produce() said the queue was full: the
    general path waits for room and sends it, not counting it as a replay."""
    _FullOnce.full_at = full_at
    pub, metrics = fake_publisher(dedupe_seed=False)
    monkeypatch.setattr(pub._writer, "_make_producer", _FullOnce)  # white-box: the factory
    pub.begin(None)
    records = [
        b'{"hitIdHigh":"5","hitIdLow":"%d","visIdHigh":1,"visIdLow":2}' % n for n in range(9)
    ]
    pub.publish_many(records, NOW)
    pub.publish_many(records[:4], NOW)  # replays, dropped
    pub.commit()
    assert [v for _, v, _, _ in sent(fake.instances[0])] == records
    assert metrics.records_deduplicated._value.get() == 4


def test_each_path_observes_the_latency_of_one_hit_per_read(fake: type[FakeProducer]) -> None:
    """The first hit of each read (its received_at) asks for a delivery report that observes
    the publish latency, in the lane as in the general path: one per read and path."""
    pub, metrics = fake_publisher(dedupe_seed=False)
    pub.begin(None)
    hit = b'{"hitIdHigh":"5","hitIdLow":"%d","visIdHigh":1,"visIdLow":2}'
    for n, at in enumerate((NOW, NOW + 1, NOW + 1, NOW + 2)):
        pub.publish_many([hit % (3 * n + k) for k in range(3)], at)
    # NOW: the general path (the transaction's first hit), then the lane; NOW + 1 (twice)
    # and NOW + 2: the lane alone.
    (family,) = metrics.publish_latency.collect()
    assert [s.value for s in family.samples if s.name.endswith("_count")] == [4]


class _BrokenAt3(FakeProducer):
    """A producer whose third produce fails in a way the writer does not handle."""

    def produce(self, *args: Any, **kw: Any) -> None:
        if sum(c == "produce" for c in self.calls) == 2:
            raise RuntimeError("broken")
        super().produce(*args, **kw)


def test_a_lane_that_raises_leaves_the_transaction_counting_what_it_kept(
    fake: type[FakeProducer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error the writer does not handle goes up from the lane, and the open transaction
    still counts exactly the messages it keeps (hits and bytes), for its abort to replay."""
    pub, _ = fake_publisher(dedupe_seed=False)
    monkeypatch.setattr(pub._writer, "_make_producer", _BrokenAt3)  # white-box: the factory
    pub.begin(None)
    hit = b'{"hitIdHigh":"5","hitIdLow":"%d","visIdHigh":1,"visIdLow":2}'
    records = [hit % n for n in range(5)]
    with pytest.raises(RuntimeError, match="broken"):
        pub.publish_many(records, NOW)
    batch = pub._writer._batch  # white-box: the open transaction
    assert [m[1] for m in batch.kept] == records[:2]
    assert (batch.hits, batch.bytes) == (2, len(records[0]) + len(records[1]))


def test_a_lane_checks_what_it_is_given() -> None:
    """A lane refuses a window that is not the C window, and refuses work uninitialised."""
    parse = simdjson.Parser().parse
    with pytest.raises(TypeError, match="window"):
        Lane(parse, simdjson.Object, object(), "hits", True, None, PRODUCE_ERRORS)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="initialised"):
        Lane.__new__(Lane).run([], 0, print, [], [], [], 1, 1, "0", 0.0, print)


def test_the_publisher_runs_the_lane_only_within_a_term(fake: type[FakeProducer]) -> None:
    """A lane exists from begin() to close(): it holds the term's dedupe window."""
    pub, _ = fake_publisher(dedupe_seed=False)
    assert pub._lane is None  # white-box: the lane's lifetime
    pub.begin(None)
    assert isinstance(pub._lane, Lane)
    pub.close(1.0)
    assert pub._lane is None
