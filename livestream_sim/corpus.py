"""The corpus the simulator serves, and how one connection's body is compressed.

A ``Corpus`` is a fixed number of record templates (``fakehits``) cycled with fresh hit
ids on every pass. For ``rate=0`` it is also kept compressed in batches of ``BATCH``
records, with the stamped regions cut out (see ``Corpus._batch``): serving a whole batch
then costs a few byte copies per record instead of compression, and the client still gets
one gzip stream that compresses about as well as a real one.
"""

from __future__ import annotations

import dataclasses
import random
import struct
import threading
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from livestream_sim.fakehits import (
    LOW_BASE,
    LOW_SPAN,
    LOW_STEP,
    Template,
    hit_id_low,
    make_template,
    make_visitor,
    malformed_line,
    pad_hit,
    stamp,
)

__all__ = [
    "BATCH",
    "CRLF",
    "EMPTY_BLOCK",
    "GZIP_HEADER",
    "ZLIB_HEADER",
    "Corpus",
    "StreamEncoder",
]

GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
ZLIB_HEADER = b"\x78\x01"
# A non-final empty stored block: a valid continuation of any deflate stream at a flush point.
EMPTY_BLOCK = b"\x00\x00\x00\xff\xff"
CRLF = b"\r\n"
_VISITORS = 1500

BATCH = 256  # corpus records per pre-compressed batch
_STORED = struct.Struct("<HH")


class Corpus:
    """``size`` record templates, cycled: seq ``s`` uses template ``s % size``. Every pass
    gets fresh hit ids for free, because ``hitIdLow`` derives from ``s`` itself.

    Templates are built lazily and deterministically (from ``seed`` and their index), so a
    corpus costs nothing until used; ``build_all`` pre-generates them. A race between two
    threads building the same template builds it twice with the same result, hence no lock
    around templates.
    """

    def __init__(
        self,
        *,
        size: int,
        seed: int,
        id_high: int,
        report_suite: str,
        hit_bytes: int,
        malformed_every: int = 0,
        empty_every: int = 0,
        unknown_field_every: int = 0,
    ) -> None:
        self.size = max(1, size)
        self.id_high = id_high
        self._seed = seed
        self._suite = report_suite
        self._hit_bytes = hit_bytes
        self._malformed = malformed_every
        self._empty = empty_every
        self._unknown = unknown_field_every
        self._items: list[Template | None] = [None] * self.size
        self._batches: list[_Batch | None] = [None] * -(-self.size // BATCH)
        pool_rng = random.Random(f"visitors:{seed}")
        self._visitors = [make_visitor(pool_rng) for _ in range(_VISITORS)]

    def _build(self, i: int) -> Template:
        rng = random.Random(f"hit:{self._seed}:{i}")
        nth = i + 1
        end = CRLF + CRLF if self._empty and nth % self._empty == 0 else CRLF
        if self._malformed and nth % self._malformed == 0:
            t = Template(False, i, 0, malformed_line(rng), b"", end)
        else:
            unknown = nth if self._unknown and nth % self._unknown == 0 else 0
            t = make_template(
                rng,
                rng.choice(self._visitors),
                id_high=self.id_high,
                report_suite=self._suite,
                hit_bytes=self._hit_bytes,
                unknown=unknown,
            )
            t = dataclasses.replace(t, tail=t.tail + end)
        self._items[i] = t
        return t

    def _get(self, seq: int) -> Template:
        i = seq % self.size
        return self._items[i] or self._build(i)

    def _batch(self, b: int) -> _Batch:
        """Batch ``b`` compressed once, with its stamped regions cut out.

        The compressor is fed ``\\x01`` bytes in place of each region and its output for them
        is dropped; a stored block of the real bytes goes there when serving. No JSON text
        contains ``\\x01``, so no later match can refer into a region, and the lengths agree,
        so every distance stays right.
        """
        got = self._batches[b]
        if got is not None:
            return got
        z, sync = zlib.compressobj(6, zlib.DEFLATED, -15), zlib.Z_SYNC_FLUSH
        segments: list[bytes] = []
        slots: list[tuple[int, Template, bytes]] = []
        pending: list[bytes] = []
        first = b * BATCH
        for i in range(first, min(first + BATCH, self.size)):
            t = self._items[i] or self._build(i)
            if not t.region:
                pending += (t.head, t.tail)
                continue
            pending.append(t.head)
            segments.append(z.compress(b"".join(pending)) + z.flush(sync))
            z.compress(b"\x01" * t.stamped_len)
            z.flush(sync)
            n = t.stamped_len
            slots.append((i - first, t, b"\x00" + _STORED.pack(n, n ^ 0xFFFF)))
            pending = [t.tail]
        # A full flush, so that whatever the connection sends next needs nothing from here.
        segments.append(z.compress(b"".join(pending)) + z.flush(zlib.Z_FULL_FLUSH))
        got = _Batch(tuple(segments), tuple(slots))
        self._batches[b] = got
        return got

    def build_all(self, *, precompress: bool = False, stop: threading.Event | None = None) -> None:
        """Pre-generate every template (about 45 µs each), then every batch if asked; gives
        up early once ``stop`` is set."""
        for b in range(len(self._batches)):
            if stop is not None and stop.is_set():
                return
            if precompress:
                self._batch(b)
            else:
                self.prepare(b * BATCH, BATCH)

    def prepare(self, start: int, count: int) -> None:
        """Build the templates for seqs ``start .. start+count-1`` now (outside caller locks)."""
        for seq in range(start, start + min(count, self.size)):
            self._get(seq)

    def is_hit(self, seq: int) -> bool:
        return self._get(seq).hit

    def visitor_key(self, seq: int) -> int:
        """What hits are split by across connections (a malformed line uses its index)."""
        return self._get(seq).key

    def hit_id(self, seq: int) -> str | None:
        """``"hitIdHigh:hitIdLow"`` of the hit at ``seq``, or None for a malformed line."""
        if not self._get(seq).hit:
            return None
        return f"{self.id_high}:{hit_id_low(self.id_high, seq)}"

    def plain(self, seqs: Iterable[int], stamps: Sequence[int], pads: Mapping[int, int]) -> bytes:
        """The records at ``seqs`` (received at ``stamps``), each ending in CRLF, uncompressed;
        a hit whose seq is in ``pads`` is padded to that many bytes."""
        out: list[bytes] = []
        for seq, ts in zip(seqs, stamps, strict=True):
            t = self._get(seq)
            record = stamp(t, self.id_high, seq, ts)
            if seq in pads and t.hit:
                cut = len(record) - len(t.tail) + len(t.tail.rstrip(CRLF))
                record = pad_hit(record[:cut], pads[seq]) + record[cut:]
            out.append(record)
        return b"".join(out)

    def batch_bytes(self, seqs: Sequence[int], stamps: Sequence[int]) -> bytes | None:
        """Raw deflate for ``seqs`` if they are exactly one corpus batch, else None."""
        n = len(seqs)
        i0 = seqs[0] % self.size if n else 1
        if i0 % BATCH or seqs[-1] - seqs[0] != n - 1 or n != min(BATCH, self.size - i0):
            return None
        batch = self._batch(i0 // BATCH)
        salt, first = self.id_high, seqs[0]
        out = [batch.segments[0]]
        for k, (j, t, stored) in enumerate(batch.slots):
            low = LOW_BASE + (salt + (first + j) * LOW_STEP) % LOW_SPAN  # hit_id_low, inlined
            ts = stamps[j]
            region = t.region % (b"%d" % low, b"%d" % (ts - t.age), b"%d" % ts)
            out += (stored + region, batch.segments[k + 1])
        return b"".join(out)


@dataclass(frozen=True, slots=True)
class _Batch:
    segments: tuple[bytes, ...]  # compressed text around the regions, one more than slots
    # Per stamped region: offset in the batch, template, stored-block header.
    slots: tuple[tuple[int, Template, bytes], ...]


class StreamEncoder:
    """One connection's body: a gzip (or zlib) header, then raw deflate that never ends.

    Each ``encode`` call ends on a flush, so the client can decode every record sent so
    far at once. With ``fast`` (the rate=0 mode) every call ends on a full flush, which lets
    whole pre-compressed corpus batches be spliced in between, and the rest is compressed at
    level 1; otherwise compression keeps its context across calls, like a real server.
    """

    def __init__(self, corpus: Corpus, *, gzip: bool = True, fast: bool = False) -> None:
        self.header = GZIP_HEADER if gzip else ZLIB_HEADER
        self._corpus = corpus
        self._fast = fast
        self._z = zlib.compressobj(1 if fast else 6, zlib.DEFLATED, -15)
        self._flush = zlib.Z_FULL_FLUSH if fast else zlib.Z_SYNC_FLUSH

    def encode(self, seqs: Sequence[int], stamps: Sequence[int], pads: Mapping[int, int]) -> bytes:
        if self._fast and not pads:
            got = self._corpus.batch_bytes(seqs, stamps)
            if got is not None:
                return got
        return self._z.compress(self._corpus.plain(seqs, stamps, pads)) + self._z.flush(self._flush)
