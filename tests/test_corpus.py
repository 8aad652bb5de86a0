"""The simulator's content: fake hits, the corpus and its pre-compressed batches, and the
record log (livestream_sim.fakehits, .corpus, .recordlog)."""

from __future__ import annotations

import random
import statistics
import zlib

import orjson
import pytest

from livestream_sim.corpus import BATCH, CRLF, Corpus, StreamEncoder
from livestream_sim.fakehits import hit_id_low, make_hit, malformed_line, pad_hit
from livestream_sim.recordlog import RecordLog

HIGH = 1_234_567_890_123_456_789


def _corpus(size: int = 600, **kw: int) -> Corpus:
    return Corpus(size=size, seed=3, id_high=HIGH, report_suite="sim.t", hit_bytes=1800, **kw)


def _records(data: bytes) -> list[bytes]:
    return [r for r in data.split(CRLF) if r]


def test_make_hit_is_valid_json_with_the_contract_fields() -> None:
    """A hit is one compact JSON object carrying the fields the contract lists."""
    hit = orjson.loads(make_hit(random.Random(1), 7))
    for name in ("hitIdHigh", "hitIdLow", "reportSuite", "timeGMT", "receivedTimeGMT"):
        assert name in hit
    for name in ("pageName", "pageURL", "geoCountry", "geoCity", "userAgent", "ip", "props"):
        assert name in hit
    assert ("visIdHigh" in hit) or ("mcVisIdHigh" in hit)
    assert int(hit["hitIdLow"]) == hit_id_low(3_141_592_653_589_793_238, 7)


@pytest.mark.parametrize("target", [1200, 1800, 4000])
def test_hit_sizes_average_near_hit_bytes(target: int) -> None:
    """The mean JSON size of many hits lies within 10 % of hit_bytes (from ~1 KB up)."""
    rng = random.Random(5)
    sizes = [len(make_hit(rng, i, hit_bytes=target)) for i in range(400)]
    assert abs(statistics.mean(sizes) - target) < 0.1 * target


def test_hit_ids_are_unique_across_corpus_passes() -> None:
    """Cycling the corpus several times never repeats a hit id."""
    corpus = _corpus(size=300)
    seqs = list(range(1200))
    data = corpus.plain(seqs, [1_780_000_000] * len(seqs), {})
    ids = [(r["hitIdHigh"], r["hitIdLow"]) for r in map(orjson.loads, _records(data))]
    assert len(ids) == 1200
    assert len({(str(a), str(b)) for a, b in ids}) == 1200
    assert [corpus.hit_id(s) for s in seqs] == [f"{a}:{b}" for a, b in ids]


def test_corpus_has_unicode_id_variants_and_unknown_fields() -> None:
    """Hits carry non-ASCII text, ids as strings and as numbers, mcVisId-only visitors and,
    every Nth hit, a field nobody knows yet."""
    corpus = _corpus(size=500, unknown_field_every=50)
    text = corpus.plain(range(500), [1_780_000_000] * 500, {})
    hits = [orjson.loads(r) for r in _records(text)]
    decoded = text.decode()
    assert any(ch in decoded for ch in "éü") and "東京" in decoded and "🎉" in decoded
    assert {type(h["hitIdHigh"]) for h in hits} == {int, str}
    assert {type(h["receivedTimeGMT"]) for h in hits} == {int, str}
    assert any("mcVisIdHigh" in h and "visIdHigh" not in h for h in hits)
    unknown = [h for h in hits if any(k.startswith("xNewField") for k in h)]
    assert len(unknown) == 10


def test_malformed_and_empty_records() -> None:
    """malformed_every and empty_every put bad lines and empty records at those positions."""
    corpus = _corpus(size=100, malformed_every=10, empty_every=4)
    data = corpus.plain(range(100), [1_780_000_000] * 100, {})
    lines = data.split(CRLF)[:-1]
    assert lines.count(b"") == 25
    bad = 0
    for line in filter(None, lines):
        try:
            bad += not isinstance(orjson.loads(line), dict)
        except orjson.JSONDecodeError:
            bad += 1
    assert bad == 10
    assert [corpus.is_hit(s) for s in range(10)] == [True] * 9 + [False]
    assert corpus.hit_id(9) is None


def test_malformed_lines_are_invalid_and_single_line() -> None:
    """Every malformed line fails to parse as a JSON object and contains no CR or LF."""
    rng = random.Random(0)
    for _ in range(50):
        line = malformed_line(rng)
        assert b"\r" not in line and b"\n" not in line
        try:
            parsed = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        assert not isinstance(parsed, dict)


def test_pad_hit_gives_exact_size_and_valid_json() -> None:
    """pad_hit grows a hit to exactly the size asked and keeps it a valid object."""
    padded = pad_hit(make_hit(random.Random(2), 1), 100_000)
    assert len(padded) == 100_000
    assert orjson.loads(padded)["hitIdLow"]


@pytest.mark.parametrize("gzip", [True, False])
def test_encoder_batches_decode_to_the_plain_records(gzip: bool) -> None:
    """The fast encoder's output (spliced batches and live-compressed runs, padded records
    included) inflates to exactly the plain records, over two corpus passes."""
    corpus = _corpus(size=3 * BATCH + 40, malformed_every=17, empty_every=9)
    encoder = StreamEncoder(corpus, gzip=gzip, fast=True)
    runs = [(0, 5, {}), (5, BATCH, {7: 4000}), (BATCH, 2 * BATCH, {}), (2 * BATCH, 800, {})]
    runs += [(800, 900, {}), (3 * BATCH + 40, 4 * BATCH + 40, {})]
    out, expected = [encoder.header], []
    for start, stop, pads in runs:
        seqs = list(range(start, stop))
        stamps = [1_780_000_000 + s // 100 for s in seqs]
        out.append(encoder.encode(seqs, stamps, pads))
        expected.append(corpus.plain(seqs, stamps, pads))
    assert corpus.batch_bytes(list(range(BATCH, 2 * BATCH)), [0] * BATCH) is not None
    inflated = zlib.decompressobj(47).decompress(b"".join(out))
    assert inflated == b"".join(expected)
    assert 4000 in {len(r) for r in _records(inflated)}


def test_record_log_splits_shares_and_stops_at_total_hits() -> None:
    """Shares of one log for two slots are disjoint, cover every record, and production
    stops after total_hits hits."""
    log = RecordLog(_corpus(size=400), total_hits=700)
    while log.extend(100, 1_780_000_000.0):
        pass
    assert log.next_seq == 700
    shares = []
    for slot in (0, 1):
        pos, got = 0, []
        while pos < log.next_seq:
            seqs, pos = log.take(pos, 2, slot)
            got += seqs
        shares.append(set(got))
    assert not shares[0] & shares[1]
    assert shares[0] | shares[1] == set(range(700))
    keys = {log.corpus.visitor_key(s) % 2 for s in shares[0]}
    assert keys == {0}
