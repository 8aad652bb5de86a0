"""Turn the raw body of one Live Stream connection into records.

The body is one or more gzip members back to back; once gunzipped it is JSON records
separated by CRLF (LF alone is accepted too). A record may be split anywhere across the
chunks the network delivers, and so may a gzip member. Each record's bytes are passed on
exactly as Adobe sent them, less the line ending: nothing is parsed or re-serialised here,
so changes of field formatting on Adobe's side cannot break the bridge.

Memory stays bounded whatever arrives:

- ``batches`` gunzips in steps of at most ``_STEP`` output bytes and hands over the records
  of each step before it makes the next, so a caller that publishes a batch before asking
  for the next holds one step's worth of records at a time (a tiny compressed chunk can
  expand a thousandfold).
- A stream that inflates beyond ``max_ratio`` to one, measured over every ``_RATIO_SPAN``
  bytes of output, is no hit stream (JSON hits compress about ten to one): it is treated as
  broken (``UpstreamLost``), like corrupt gzip. So a gzip bomb costs at most one span of
  output before the connection is closed.
- A record longer than ``max_record_bytes`` is kept only as its first ``max_record_bytes``
  bytes while the rest is counted and dropped as it streams in.

Gunzip is zlib-ng's (the ``zlib-ng`` package: CPython's zlib module built on zlib-ng, the
same streaming interface): it inflated Live Stream's hits 2.5 times as fast as the zlib
CPython links, which had been the pump's largest native cost (``bench/decode.py``). The
lines after a piece's first are split in C (``bridge/_frame.c``): one copy per record and
no Python per record, where a split, a loop and a second copy to drop each CR cost four
times as much.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

from zlib_ng import zlib_ng

from bridge._frame import split
from bridge.errors import UpstreamLost

_GZIP_WBITS = 31  # zlib: gzip header and trailer, 32 KiB window
# What a corrupt stream raises. zlib_ng's stub declares ``error`` an instance; it is a class.
_CORRUPT = cast("type[Exception]", zlib_ng.error)
_STEP = 1 << 20  # most bytes gunzipped in one step
_RATIO_SPAN = 1 << 20  # output over which the compression ratio is judged
DEFAULT_MAX_RATIO = 200.0


class OversizedRecord(bytes):
    """The first ``max_record_bytes`` bytes of a longer record; ``size`` is its true length."""

    size: int

    def __new__(cls, head: bytes, size: int) -> OversizedRecord:
        obj = super().__new__(cls, head)
        obj.size = size
        return obj

    def __repr__(self) -> str:
        return f"OversizedRecord(head={len(self)} bytes, size={self.size})"

    def __reduce__(self) -> tuple[type[OversizedRecord], tuple[bytes, int]]:
        return (OversizedRecord, (bytes(self), self.size))


class RecordDecoder:
    """Incremental gunzip and record framing for one connection's body.

    ``batches`` takes raw (still compressed) body bytes and yields the records they
    complete, one bounded batch per gunzip step; ``feed`` is the same as one list. A corrupt
    stream, or one that inflates beyond ``max_ratio``, raises ``UpstreamLost``; the decoder
    is then unusable, which is fine: a new connection gets a new decoder.
    """

    def __init__(self, max_record_bytes: int, max_ratio: float = DEFAULT_MAX_RATIO) -> None:
        if max_record_bytes < 1:
            raise ValueError("max_record_bytes must be positive")
        if max_ratio <= 1:
            raise ValueError("max_ratio must be above 1")
        self.max_record_bytes = max_record_bytes
        self.max_ratio = max_ratio
        self.decompressed_bytes = 0
        # Output and input of the current ratio span.
        self._span_out = 0
        self._span_in = 0
        self._inflate: zlib_ng._Decompress | None = None  # None: the next byte starts a member
        self._partial = bytearray()  # start of a record whose end has not arrived yet
        # Set while the current record is too long: its head and how long it is so far.
        self._big_head: bytes | None = None
        self._big_size = 0
        self._big_ends_cr = False

    @property
    def buffered_bytes(self) -> int:
        """Decompressed bytes of an unfinished record held back (lost if the stream ends)."""
        return len(self._partial) + self._big_size

    def feed(self, data: bytes) -> list[bytes]:
        """Gunzip ``data`` and return every record it completes, in order.

        At most ``max_ratio`` times ``len(data)`` (plus one span) of output: fine for
        tests and benchmarks; the pump uses ``batches`` to hold one step at a time.
        """
        return [record for batch in self.batches(data) for record in batch]

    def batches(self, data: bytes) -> Iterator[list[bytes]]:
        """Gunzip ``data`` step by step, yielding the records each step completes."""
        pending = data
        while True:
            inflate = self._inflate
            if inflate is None:
                if not pending:
                    return
                inflate = self._inflate = zlib_ng.decompressobj(_GZIP_WBITS)
            try:
                piece = inflate.decompress(pending, _STEP)
            except _CORRUPT:
                raise UpstreamLost("corrupt gzip stream") from None
            if inflate.eof:  # member done; whatever follows starts the next one
                rest = inflate.unused_data
                self._inflate = None
            else:
                rest = inflate.unconsumed_tail
            self._measure(len(pending) - len(rest), len(piece))
            pending = rest
            if piece:
                self.decompressed_bytes += len(piece)
                out: list[bytes] = []
                self._frame(piece, out)
                if out:
                    yield out
            if self._inflate is not None and len(piece) < _STEP:  # zlib needs more input
                return
            # Otherwise the step was full, or a member ended: go on with the rest (b"" still
            # drains zlib's own buffer).

    def _measure(self, consumed: int, produced: int) -> None:
        self._span_in += consumed
        self._span_out += produced
        if self._span_out < _RATIO_SPAN:
            return
        ratio = self._span_out / max(1, self._span_in)
        self._span_in = self._span_out = 0
        if ratio > self.max_ratio:
            raise UpstreamLost(
                f"compression ratio {ratio:.0f}:1 is beyond any hit stream "
                f"(limit {self.max_ratio:.0f}:1): a broken or hostile stream"
            )

    def _frame(self, piece: bytes, out: list[bytes]) -> None:
        first_end = piece.find(b"\n")
        if first_end < 0:  # no line ends here: it all continues the current record
            if piece:
                self._grow(piece)
            return
        # The first line finishes what earlier pieces began; the C part frames the rest.
        first = piece[:first_end]
        if self._big_head is not None:
            self._finish_big(first, out)
        else:
            if self._partial:
                self._partial += first
                first = bytes(self._partial)
                self._partial = bytearray()
            record = first[:-1] if first.endswith(b"\r") else first
            limit = self.max_record_bytes
            if len(record) > limit:
                out.append(OversizedRecord(record[:limit], len(record)))
            elif record:
                out.append(record)
        records, tail = split(piece, first_end + 1, self.max_record_bytes, OversizedRecord)
        out.extend(records)
        if tail:
            self._grow(tail)

    def _grow(self, tail: bytes) -> None:
        limit = self.max_record_bytes
        if self._big_head is not None:
            self._big_size += len(tail)
            self._big_ends_cr = tail.endswith(b"\r")
            return
        self._partial += tail
        # One byte of slack: a record of exactly ``limit`` bytes may still be followed by CR.
        if len(self._partial) > limit + 1:
            self._big_head = bytes(self._partial[:limit])
            self._big_size = len(self._partial)
            self._big_ends_cr = self._partial.endswith(b"\r")
            self._partial = bytearray()

    def _finish_big(self, last: bytes, out: list[bytes]) -> None:
        assert self._big_head is not None
        size = self._big_size + len(last)
        ends_cr = last.endswith(b"\r") if last else self._big_ends_cr
        if ends_cr:
            size -= 1
        out.append(OversizedRecord(self._big_head, size))
        self._big_head, self._big_size, self._big_ends_cr = None, 0, False
