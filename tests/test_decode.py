"""RecordDecoder: incremental gunzip and CRLF/LF framing of a Live Stream body."""

from __future__ import annotations

import gzip
import itertools
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge._frame import split
from bridge.decode import OversizedRecord, RecordDecoder
from bridge.errors import UpstreamLost

ROOT = Path(__file__).resolve().parent.parent


def decode_all(decoder: RecordDecoder, chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (any order, duplicates allowed)."""
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def gzip_members(body: bytes, splits: list[int]) -> bytes:
    """``body`` compressed as several gzip members back to back, cut at ``splits``."""
    return b"".join(gzip.compress(part, compresslevel=6) for part in cut(body, splits) or [b""])


# Records as Adobe might send them: JSON-ish text with inner spaces, unicode, empties.
record_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"),
    max_size=80,
)
records_st = st.lists(record_text.map(lambda s: s.encode()), max_size=40)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=records_st,
    crlf=st.lists(st.booleans(), min_size=40, max_size=40),
    member_splits=st.lists(st.integers(min_value=0, max_value=10_000), max_size=4),
    chunk_splits=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_any_split_reassembles_records(
    records: list[bytes], crlf: list[bool], member_splits: list[int], chunk_splits: list[int]
) -> None:
    """Any cut of a one- or many-member gzip stream yields exactly the non-empty records."""
    body = b"".join(r + (b"\r\n" if crlf[i] else b"\n") for i, r in enumerate(records))
    compressed = gzip_members(body, member_splits)
    decoder = RecordDecoder(max_record_bytes=10_000)
    got = decode_all(decoder, cut(compressed, chunk_splits))
    assert got == [r for r in records if r]
    assert not any(isinstance(r, OversizedRecord) for r in got)
    assert decoder.decompressed_bytes == len(body)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=30),
    crlf=st.lists(st.booleans(), min_size=30, max_size=30),
    chunk_splits=st.lists(st.integers(min_value=0, max_value=2_000), max_size=20),
)
def test_stray_carriage_returns_frame_like_line_ends(
    records: list[bytes], crlf: list[bool], chunk_splits: list[int]
) -> None:
    """A CR inside a record is content, and an LF ending takes one CR before it as part of
    the line end, whichever of the CRLF fast path or the LF path frames the piece."""
    body = b"".join(r + (b"\r\n" if crlf[i] else b"\n") for i, r in enumerate(records))
    expected = []
    for i, r in enumerate(records):
        record = r[:-1] if not crlf[i] and r.endswith(b"\r") else r
        if record:
            expected.append(record)
    decoder = RecordDecoder(max_record_bytes=10_000)
    assert decode_all(decoder, cut(gzip.compress(body), chunk_splits)) == expected


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=12),
    limit=st.integers(min_value=1, max_value=120),
    crlf=st.booleans(),
    chunk_splits=st.lists(st.integers(min_value=0, max_value=5_000), max_size=40),
)
def test_oversized_records_keep_framing(
    sizes: list[int], limit: int, crlf: bool, chunk_splits: list[int]
) -> None:
    """Records over the limit come out once as OversizedRecord(head, true size) and the
    records after them are framed exactly."""
    records = [bytes([65 + i % 26]) * n for i, n in enumerate(sizes)]
    end = b"\r\n" if crlf else b"\n"
    compressed = gzip.compress(b"".join(r + end for r in records))
    got = decode_all(RecordDecoder(limit), cut(compressed, chunk_splits))
    expected = [r for r in records if r]
    assert len(got) == len(expected)
    for want, have in zip(expected, got, strict=True):
        if len(want) > limit:
            assert isinstance(have, OversizedRecord)
            assert have.size == len(want)
            assert bytes(have) == want[:limit]
        else:
            assert not isinstance(have, OversizedRecord)
            assert have == want


@settings(max_examples=300)
@given(piece=st.binary(max_size=200), start=st.integers(0, 200), limit=st.integers(1, 50))
def test_the_c_framing_matches_a_split_on_lf(piece: bytes, start: int, limit: int) -> None:
    """bridge._frame.split is the Python framing: lines after ``start`` split on LF, one CR
    before each LF dropped, empty lines left out, long ones cut, the rest the tail."""
    start = min(start, len(piece))
    *lines, tail = piece[start:].split(b"\n")
    want = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    records, rest = split(piece, start, limit, OversizedRecord)
    assert rest == tail
    assert [bytes(r) for r in records] == [w[:limit] for w in want if w]
    assert [getattr(r, "size", len(r)) for r in records] == [len(w) for w in want if w]
    assert all(
        isinstance(r, OversizedRecord) == (len(w) > limit)
        for r, w in zip(records, [w for w in want if w], strict=True)
    )


def test_the_c_framing_refuses_a_start_outside_the_piece() -> None:
    """A start beyond the piece, or a limit below one, is a caller's bug: ValueError."""
    with pytest.raises(ValueError):
        split(b"ab\n", 4, 10, OversizedRecord)
    with pytest.raises(ValueError):
        split(b"ab\n", 0, 0, OversizedRecord)


def test_record_of_exactly_the_limit_is_not_oversized() -> None:
    """A record of exactly max_record_bytes followed by CRLF split before the CR is whole."""
    record = b"x" * 1024
    compressed = gzip.compress(record + b"\r\n" + b"next\r\n")
    chunks = []
    inflate_split = RecordDecoder(1024)
    # Feed byte by byte so the CR arrives alone after the full record.
    for i in range(len(compressed)):
        chunks.extend(inflate_split.feed(compressed[i : i + 1]))
    assert chunks == [record, b"next"]
    assert not isinstance(chunks[0], OversizedRecord)


def test_record_bytes_are_untouched() -> None:
    """Inner spaces, tabs, unicode and a trailing space survive; only the CR goes."""
    record = '{ "pageName" : "caf\u00e9 \u2603",\t"x": [1, 2] } '.encode()
    got = RecordDecoder(4096).feed(gzip.compress(record + b"\r\n"))
    assert got == [record]


def test_unfinished_record_is_held_back() -> None:
    """A record without its line end is not returned and counts as buffered."""
    decoder = RecordDecoder(4096)
    assert decoder.feed(gzip.compress(b'{"a":1}\r\n{"b"')) == [b'{"a":1}']
    assert decoder.buffered_bytes == 4


def test_decompression_bomb_stays_bounded() -> None:
    """A huge compressible record is reported with its size while memory stays bounded
    (with the ratio check relaxed, which would otherwise refuse such a stream first)."""
    size = 64_000_000
    inflate = zlib.compressobj(9, wbits=31)
    compressed = inflate.compress(b"a" * size) + inflate.compress(b"\nok\n") + inflate.flush()
    decoder = RecordDecoder(2048, max_ratio=1e9)
    got = decoder.feed(compressed)
    assert got == [b"a" * 2048, b"ok"]
    assert isinstance(got[0], OversizedRecord)
    assert got[0].size == size
    assert decoder.buffered_bytes == 0


def test_oversized_repr_hides_content() -> None:
    """The repr of an OversizedRecord names sizes, not the (possibly huge) content."""
    rec = OversizedRecord(b"secretish" * 10, 5000)
    assert repr(rec) == "OversizedRecord(head=90 bytes, size=5000)"


@pytest.mark.parametrize(
    "garbage",
    [
        b"not gzip at all",
        gzip.compress(b"ok\n")[:-8] + b"\x00" * 8,
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff\x07\x00",
    ],
)
def test_corrupt_gzip_raises_upstream_lost(garbage: bytes) -> None:
    """Bytes that are not a valid gzip stream raise UpstreamLost('corrupt gzip stream')."""
    with pytest.raises(UpstreamLost, match="corrupt gzip stream"):
        RecordDecoder(1024).feed(garbage)


def test_garbage_after_a_member_raises() -> None:
    """Non-gzip bytes after a complete member are a corrupt stream, not silently ignored."""
    decoder = RecordDecoder(1024)
    assert decoder.feed(gzip.compress(b"one\n")) == [b"one"]
    with pytest.raises(UpstreamLost, match="corrupt gzip stream"):
        decoder.feed(b"<html>oops</html>")


def test_bench_script_prints_rates() -> None:
    """bench/decode.py runs at a tiny size and prints MB/s figures and a ratio."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "decode.py"), "--mb", "0.5", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines = {line.split(":")[0]: line.split(":", 1)[1] for line in result.stdout.splitlines()}
    assert float(lines["bridge RecordDecoder.feed"].split()[0]) > 0
    assert float(lines["bare zlib-ng decompress"].split()[0]) > 0
    assert float(lines["bare zlib decompress"].split()[0]) > 0
    assert float(lines["ratio bridge/zlib-ng"]) > 0


def _bomb(records: int) -> bytes:
    """One gzip member that inflates ``records`` tiny records from a few KB."""
    return gzip.compress(b"{}\r\n" * records, compresslevel=9)


def test_gzip_bomb_is_a_broken_stream_not_a_crash() -> None:
    """A chunk inflating far beyond any hit stream's ratio raises UpstreamLost after about
    one ratio span of output, instead of inflating everything into memory."""
    bomb = _bomb(4_000_000)  # 16 MB of records from about 16 KB
    assert len(bomb) < 64 * 1024
    decoder = RecordDecoder(1024)
    seen = 0
    with pytest.raises(UpstreamLost, match="compression ratio"):
        for batch in decoder.batches(bomb):
            seen += len(batch)
    # At most about one span (1 MiB) of output was framed before the stream was refused.
    assert decoder.decompressed_bytes <= 2 * (1 << 20)
    assert seen <= (2 * (1 << 20)) // 4


def test_batches_are_bounded_by_one_gunzip_step() -> None:
    """Every batch holds at most one step (1 MiB) of decompressed records, so a caller that
    publishes each batch before taking the next never holds a whole chunk's expansion."""
    body = b"".join(
        b'{"hitIdLow":%d,"pad":"%s"}\r\n' % (i, os.urandom(30).hex().encode())
        for i in range(60_000)
    )
    decoder = RecordDecoder(4096)
    batches = list(decoder.batches(gzip.compress(body)))
    assert len(batches) >= 3
    assert all(sum(len(r) + 2 for r in batch) <= (1 << 20) + 4096 for batch in batches)
    assert [r for b in batches for r in b] == body.split(b"\r\n")[:-1]


def test_real_hit_streams_pass_the_ratio_check() -> None:
    """The simulator's hit corpus, which stands for real hits, stays far below the default
    ratio limit, so the bomb check never closes a real stream."""
    from livestream_sim import Simulator, SimulatorConfig

    hits = 5000
    sim = Simulator(SimulatorConfig(total_hits=hits))
    body = sim.corpus.plain(range(hits), [1_770_000_000] * hits, {})
    compressed = gzip.compress(body, compresslevel=9)
    assert len(body) / len(compressed) < 50
    assert len(RecordDecoder(1 << 20).feed(compressed)) == hits


def test_ratio_limit_must_exceed_one() -> None:
    """A ratio limit of 1 or less would refuse every gzip stream: rejected at construction."""
    with pytest.raises(ValueError, match="max_ratio"):
        RecordDecoder(1024, max_ratio=1.0)
