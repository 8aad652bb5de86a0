"""Realistic Live Stream hits, malformed lines, and the corpus the simulator serves.

A hit is one compact JSON object in UTF-8, shaped after the fields listed in
``shared/livestream-api.md``. Every hit is built as a *template*: fixed bytes before and
after a small stamped region that holds ``hitIdLow`` (always 19 digits), ``timeGMT`` and
``receivedTimeGMT`` (always 10 digits). Stamping a template is one ``bytes %`` call, which
is what lets the simulator cycle a pre-generated corpus with fresh hit ids on every pass.

For ``rate=0`` the corpus is also kept compressed in batches of ``BATCH`` records, with
the stamped regions cut out (see ``Corpus._batch``): serving a whole batch then costs a few
byte copies per record instead of compression, and the client still gets one gzip stream
that compresses about as well as a real one.
"""

from __future__ import annotations

import bisect
import dataclasses
import random
import struct
import sys
import threading
import zlib
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
ZLIB_HEADER = b"\x78\x01"
# A non-final empty stored block: a valid continuation of any deflate stream at a flush point.
EMPTY_BLOCK = b"\x00\x00\x00\xff\xff"
CRLF = b"\r\n"

_LOW_BASE = 10**18
_LOW_SPAN = 8 * 10**18  # keeps every hitIdLow at 19 digits and below 2**63
_LOW_STEP = 2654435761  # prime, hence coprime with _LOW_SPAN: seq -> hitIdLow is injective
_VISITORS = 1500

_PAGES = (
    ("Accueil", "https://www.example.fr/"),
    ("Café & Crème – Nos produits", "https://www.example.fr/produits/cafe-creme"),
    ("東京の天気予報", "https://www.example.jp/tenki/tokyo?utm_source=newsletter"),
    ("🎉 Soldes d'été – jusqu'à -50 %", "https://www.example.fr/soldes?ref=banner"),
    ("Home", "https://www.example.com/"),
    ("Checkout: Payment", "https://www.example.com/checkout/payment?step=3"),
    ("Search results", "https://www.example.com/search?q=running+shoes&page=2"),
    ("Mein Konto – Übersicht", "https://www.example.de/konto/uebersicht"),
    ("Carrito de compra", "https://www.example.es/carrito"),
    ("购物车", "https://www.example.cn/cart"),
    ("Корзина покупок", "https://www.example.ru/korzina"),
    ("Ürün Detayı: Çay Bardağı", "https://www.example.com.tr/urun/cay-bardagi-6li"),
    ("Product: Trail Runner 3 👟", "https://www.example.com/p/trail-runner-3?color=blue"),
)
_GEO = (
    ("fra", "paris", "75", "orange"),
    ("jpn", "tokyo", "13", "ntt"),
    ("usa", "san jose", "ca", "comcast"),
    ("deu", "münchen", "by", "telekom"),
    ("bra", "são paulo", "sp", "vivo"),
    ("chn", "上海", "sh", "china telecom"),
    ("esp", "a coruña", "ga", "movistar"),
    ("tur", "i̇stanbul", "34", "türk telekom"),
)
_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.6 Safari/605.1.15",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0.6723.102 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
)
_WORDS = (
    "spring_sale",
    "newsletter",
    "logged in",
    "guest",
    "premium",
    "café",
    "crème brûlée",
    "naïve",
    "smørrebrød",
    "東京",
    "ラーメン",
    "北京烤鸭",
    "서울",
    "🎉",
    "🚀",
    "👟",
    "✓",
    "running shoes",
    "size:42",
    "color=blue",
    "cmp:2026-q2|email",
    "a/b test variant B",
    "internal search",
    "order#",
    "Grüße",
    "ñandú",
    "Ελληνικά",
    "עברית",
    "العربية",
)
# Slices of this give free text of any length; shuffled once so slices differ in content.
_FILLER = " ".join(random.Random(7).choices(_WORDS, k=400))
_EVENTS = ("event1", "event2", "event5=3", "purchase", "prodView", "scAdd", "scCheckout")
_MALFORMED = (
    b'{"hitIdHigh": 1, ',
    b"not json",
    b'[{"hitIdHigh":"1","hitIdLow":"2"}]',
    b'{"pageName":"caf\xe9 \xff\xfe broken utf-8"}',
    b'{"hitIdHigh":"7","hitIdLow":}',
    b'{"evars":{"evar1":"unterminated',
)


def hit_id_low(salt: int, seq: int) -> int:
    """The 19-digit ``hitIdLow`` of sequence number ``seq`` (unique per seq for one salt)."""
    return _LOW_BASE + (salt + seq * _LOW_STEP) % _LOW_SPAN


@dataclass(frozen=True, slots=True)
class Visitor:
    """One visitor of the pool: the id fields it puts on hits and its split key."""

    ids: Mapping[str, str | int]
    key: int
    agent: str
    ip: str
    geo: tuple[str, str, str, str]


def make_visitor(rng: random.Random) -> Visitor:
    """A visitor; about one in five is known only by its Experience Cloud ID."""
    high, low = rng.getrandbits(62), rng.getrandbits(62)
    if rng.random() < 0.2:
        ids: dict[str, str | int] = {"mcVisIdHigh": str(high), "mcVisIdLow": str(low)}
        canonical = f"mc:{high}:{low}"
    else:
        as_text = rng.random() < 0.5
        ids = {
            "visIdHigh": str(high) if as_text else high,
            "visIdLow": str(low) if as_text else low,
        }
        canonical = f"{high}:{low}"
        if rng.random() < 0.1:
            ids["customVisId"] = f"crm-{rng.randrange(10**8):08d}"
    ip = f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
    return Visitor(ids, zlib.crc32(canonical.encode()), rng.choice(_AGENTS), ip, rng.choice(_GEO))


def _text(rng: random.Random, length: int) -> str:
    start = rng.randrange(len(_FILLER) - length)
    return _FILLER[start : start + length]


def _num(value: int, quoted: bool) -> bytes:
    return b'"%d"' % value if quoted else b"%d" % value


def _body(rng: random.Random, visitor: Visitor, report_suite: str, unknown: int) -> dict[str, Any]:
    page, url = rng.choice(_PAGES)
    country, city, region, isp = visitor.geo
    body: dict[str, Any] = {"reportSuite": report_suite, **visitor.ids}
    body |= {
        "pageName": page,
        "pageURL": url,
        "referrer": rng.choice(("", "https://www.google.com/", "https://t.co/x1y2z3")),
        "hitSource": rng.choice((1, "1", 5)),
        "pageEventType": rng.choice(("page", "link_click", "exit_link")),
        "geoCountry": country,
        "geoCity": city,
        "geoRegion": region,
        "geoDMA": rng.choice((0, "0", 807)),
        "isp": isp,
        "userAgent": visitor.agent,
        "ip": visitor.ip,
        "language": rng.choice(("fr-FR", "en-US", "ja-JP", "de-DE", "zh-CN")),
        "browserWidth": rng.choice((390, "1280", 1920)),
        "browserHeight": rng.choice((844, "720", 1080)),
        "events": rng.sample(_EVENTS, rng.randrange(0, 4)),
        "props": {
            f"prop{i}": _text(rng, rng.randrange(4, 30)) for i in range(1, rng.randrange(2, 7))
        },
        "products": [
            {
                "category": rng.choice(("shoes", "café", "家電", "")),
                "name": f"SKU-{rng.randrange(10**6):06d}",
                "quantity": rng.randrange(1, 4),
                "price": str(round(rng.uniform(1, 300), 2)),
            }
            for _ in range(rng.randrange(0, 3))
        ],
    }
    if unknown:
        body[f"xNewField{unknown}"] = {"introduced": "2026-04", "value": _text(rng, 24)}
    return body


@dataclass(frozen=True, slots=True)
class _Template:
    """A record before stamping. ``region`` (a ``%b`` template for hitIdLow, timeGMT and
    receivedTimeGMT) is empty for a malformed line; ``tail`` ends with the record's CRLF."""

    hit: bool
    key: int
    age: int
    head: bytes
    region: bytes
    tail: bytes

    @property
    def stamped_len(self) -> int:
        return len(self.region) - 6 + 39 if self.region else 0


def _template(
    rng: random.Random,
    visitor: Visitor,
    *,
    id_high: int,
    report_suite: str,
    hit_bytes: int,
    unknown: int,
) -> _Template:
    q_id, q_time = rng.random() < 0.5, rng.random() < 0.5
    head = b'{"hitIdHigh":' + _num(id_high, q_id) + b',"hitIdLow":' + (b'"' if q_id else b"")
    quote = b'"' if q_time else b""
    region = (
        (b'%b"' if q_id else b"%b")
        + b',"timeGMT":' + quote + b"%b" + quote
        + b',"receivedTimeGMT":' + quote + b"%b" + quote
    )  # fmt: skip
    body = _body(rng, visitor, report_suite, unknown)
    fixed = len(head) + len(region) - 6 + 19 + 10 + 10 + 1
    deficit = int(hit_bytes * rng.uniform(0.6, 1.4)) - fixed - len(orjson.dumps(body))
    evars: dict[str, str] = {}
    while deficit > 16:
        value = _text(rng, min(rng.randrange(8, 120), deficit))
        name = f"evar{len(evars) + 1}"
        evars[name] = value
        deficit -= len(name) + len(value.encode()) + 6
    if evars:
        body["evars"] = evars
    tail = b"," + orjson.dumps(body)[1:]
    return _Template(True, visitor.key, rng.randrange(0, 6), head, region, tail)


def _stamp(t: _Template, salt: int, seq: int, ts: int) -> bytes:
    if not t.region:
        return t.head + t.tail
    low = b"%d" % hit_id_low(salt, seq)
    return t.head + t.region % (low, b"%d" % (ts - t.age), b"%d" % ts) + t.tail


def make_hit(
    rng: random.Random,
    seq: int,
    *,
    id_high: int = 3_141_592_653_589_793_238,
    report_suite: str = "sim.demo.prod",
    hit_bytes: int = 1800,
    now: int = 1_780_000_000,
    unknown_field: int = 0,
    visitor: Visitor | None = None,
) -> bytes:
    """One hit's JSON (no CRLF). ``hitIdLow`` derives from ``seq``; sizes vary from 0.6 to 1.4
    times ``hit_bytes`` (a hit has at least ~900 bytes of fields, so smaller targets give
    that); ``unknown_field`` > 0 adds a field named after it that no consumer knows yet."""
    t = _template(
        rng,
        visitor or make_visitor(rng),
        id_high=id_high,
        report_suite=report_suite,
        hit_bytes=hit_bytes,
        unknown=unknown_field,
    )
    return _stamp(t, id_high, seq, now)


def malformed_line(rng: random.Random) -> bytes:
    """A line Live Stream might send that is not a valid hit (never contains CR or LF)."""
    return rng.choice(_MALFORMED)


def pad_hit(record: bytes, size: int) -> bytes:
    """``record`` (a JSON object) grown with a filler field to exactly ``size`` bytes, if larger.

    The filler is pseudo-random hex, which gunzips about two to one like real text does; a
    run of one byte would inflate a thousandfold, which the bridge rightly treats as a
    gzip bomb rather than a hit."""
    room = size - len(record) - len(b',"xPadding":""')
    if room < 0:
        return record
    filler = random.Random(size).randbytes(room // 2 + 1).hex().encode()[:room]
    return record[:-1] + b',"xPadding":"' + filler + b'"}'


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
        self._items: list[_Template | None] = [None] * self.size
        self._batches: list[_Batch | None] = [None] * -(-self.size // BATCH)
        pool_rng = random.Random(f"visitors:{seed}")
        self._visitors = [make_visitor(pool_rng) for _ in range(_VISITORS)]

    def _build(self, i: int) -> _Template:
        rng = random.Random(f"hit:{self._seed}:{i}")
        nth = i + 1
        end = CRLF + CRLF if self._empty and nth % self._empty == 0 else CRLF
        if self._malformed and nth % self._malformed == 0:
            t = _Template(False, i, 0, malformed_line(rng), b"", end)
        else:
            unknown = nth if self._unknown and nth % self._unknown == 0 else 0
            t = _template(
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

    def _get(self, seq: int) -> _Template:
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
        slots: list[tuple[int, _Template, bytes]] = []
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
            record = _stamp(t, self.id_high, seq, ts)
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
            low = _LOW_BASE + (salt + (first + j) * _LOW_STEP) % _LOW_SPAN
            ts = stamps[j]
            region = t.region % (b"%d" % low, b"%d" % (ts - t.age), b"%d" % ts)
            out += (stored + region, batch.segments[k + 1])
        return b"".join(out)


@dataclass(frozen=True, slots=True)
class _Batch:
    segments: tuple[bytes, ...]  # compressed text around the regions, one more than slots
    # Per stamped region: offset in the batch, template, stored-block header.
    slots: tuple[tuple[int, _Template, bytes], ...]


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


RETAINED_RECORDS = 200_000


class RecordLog:
    """The one logical stream of a report suite: records at seq 0, 1, 2, ... over a corpus.

    Keeps the most recent ``RETAINED_RECORDS`` (records are virtual, so this costs only a
    timestamp table), when each was produced, and which were fully written at least once.
    Not thread-safe: the simulator calls it under its own lock.
    """

    def __init__(self, corpus: Corpus, *, total_hits: int | None) -> None:
        self.corpus = corpus
        self.next_seq = 0
        self._total = total_hits
        self._hits = 0
        self._ts_seq: list[int] = []  # first seq of each produced run ...
        self._ts_val: list[int] = []  # ... and its receivedTimeGMT
        self._pads: dict[int, int] = {}
        self._sent = bytearray()  # one bit per seq
        self._emitted = array("q")  # hit seqs in order of first emission

    @property
    def base(self) -> int:
        """The oldest retained seq."""
        return max(0, self.next_seq - RETAINED_RECORDS)

    def extend(self, count: int, now: float) -> bool:
        """Produce up to ``count`` records; False once ``total_hits`` hits exist."""
        if self._total is not None and self._hits >= self._total:
            return False
        self._ts_seq.append(self.next_seq)
        self._ts_val.append(int(now))
        for _ in range(count):
            if self._total is not None and self._hits >= self._total:
                break
            self._hits += self.corpus.is_hit(self.next_seq)
            self.next_seq += 1
        base = self.base
        if (drop := bisect.bisect_right(self._ts_seq, base) - 1) > 0:
            del self._ts_seq[:drop], self._ts_val[:drop]
        if self._pads and min(self._pads) < base:
            self._pads = {k: v for k, v in self._pads.items() if k >= base}
        return True

    def extend_to_batch_end(self, now: float) -> bool:
        """Produce up to the end of the current corpus batch, so batches stay aligned."""
        index = self.next_seq % self.corpus.size
        return self.extend(min(BATCH - index % BATCH, self.corpus.size - index), now)

    def take(self, pos: int, conns: int, slot: int) -> tuple[list[int], int]:
        """Up to BATCH seqs of slot ``slot``'s share from ``pos`` on, and the next pos.

        With one connection the run stops at a corpus batch boundary, so that in the
        rate=0 mode whole pre-compressed batches line up.
        """
        pos, end = max(pos, self.base), self.next_seq
        if conns == 1:
            index = pos % self.corpus.size
            stop = min(end, pos + self.corpus.size - index, pos + BATCH - index % BATCH)
            return list(range(pos, max(pos, stop))), max(pos, stop)
        out: list[int] = []
        key = self.corpus.visitor_key
        while pos < end and len(out) < BATCH:
            if key(pos) % conns == slot:
                out.append(pos)
            pos += 1
        return out, pos

    def pad_first_new_hit(self, seqs: Iterable[int], size: int) -> bool:
        """Pad the first never-sent hit among ``seqs`` to ``size`` bytes; False if none."""
        for seq in seqs:
            if self.corpus.is_hit(seq) and not self.was_sent(seq):
                self._pads[seq] = size
                return True
        return False

    def encode_args(self, seqs: list[int]) -> tuple[list[int], dict[int, int]]:
        """The receivedTimeGMT of each of ``seqs`` and the pads among them."""
        stamps: list[int] = []
        lo = hi = val = -1
        for seq in seqs:
            if not lo <= seq < hi:
                i = max(0, bisect.bisect_right(self._ts_seq, seq) - 1)
                lo, val = self._ts_seq[i], self._ts_val[i]
                hi = self._ts_seq[i + 1] if i + 1 < len(self._ts_seq) else sys.maxsize
            stamps.append(val)
        pads = {q: self._pads[q] for q in seqs if q in self._pads} if self._pads else {}
        return stamps, pads

    def record(self, seq: int) -> bytes:
        """The record at ``seq`` as it is written (without its CRLF)."""
        stamps, pads = self.encode_args([seq])
        return self.corpus.plain([seq], stamps, pads).rstrip(CRLF)

    def was_sent(self, seq: int) -> bool:
        byte = seq >> 3
        return byte < len(self._sent) and bool(self._sent[byte] & (1 << (seq & 7)))

    def first_unsent(self) -> int:
        seq = self.base
        while seq < self.next_seq and self.was_sent(seq):
            seq += 1
        return seq

    def mark_sent(self, seqs: list[int]) -> None:
        """Record that ``seqs`` were fully written to some client."""
        sent, is_hit = self._sent, self.corpus.is_hit
        if (need := (max(seqs) >> 3) + 1 - len(sent)) > 0:
            sent.extend(bytes(need + 65536))
        for seq in seqs:
            byte, bit = seq >> 3, 1 << (seq & 7)
            if not sent[byte] & bit:
                sent[byte] |= bit
                if is_hit(seq):
                    self._emitted.append(seq)

    def emitted_seqs(self) -> list[int]:
        return self._emitted.tolist()

    def hit_ids(self, seqs: Iterable[int]) -> list[str]:
        high = self.corpus.id_high
        return [f"{high}:{hit_id_low(high, seq)}" for seq in seqs]
