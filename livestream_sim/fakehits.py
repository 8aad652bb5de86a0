"""Realistic fake Live Stream hits and malformed lines: what the simulator's corpus is made of.

A hit is one compact JSON object in UTF-8, shaped after the fields listed in
``shared/livestream-api.md``. Every hit is built as a *template*: fixed bytes before and
after a small stamped region that holds ``hitIdLow`` (always 19 digits), ``timeGMT`` and
``receivedTimeGMT`` (always 10 digits). Stamping a template is one ``bytes %`` call, which
is what lets the simulator cycle a pre-generated corpus with fresh hit ids on every pass.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "LOW_BASE",
    "LOW_SPAN",
    "LOW_STEP",
    "Template",
    "Visitor",
    "hit_id_low",
    "make_hit",
    "make_template",
    "make_visitor",
    "malformed_line",
    "pad_hit",
    "stamp",
]

LOW_BASE = 10**18
LOW_SPAN = 8 * 10**18  # keeps every hitIdLow at 19 digits and below 2**63
LOW_STEP = 2654435761  # prime, hence coprime with LOW_SPAN: seq -> hitIdLow is injective

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
    return LOW_BASE + (salt + seq * LOW_STEP) % LOW_SPAN


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
class Template:
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


def make_template(
    rng: random.Random,
    visitor: Visitor,
    *,
    id_high: int,
    report_suite: str,
    hit_bytes: int,
    unknown: int,
) -> Template:
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
    return Template(True, visitor.key, rng.randrange(0, 6), head, region, tail)


def stamp(t: Template, salt: int, seq: int, ts: int) -> bytes:
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
    t = make_template(
        rng,
        visitor or make_visitor(rng),
        id_high=id_high,
        report_suite=report_suite,
        hit_bytes=hit_bytes,
        unknown=unknown_field,
    )
    return stamp(t, id_high, seq, now)


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
