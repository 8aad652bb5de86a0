"""What a Live Stream record is: a hit (its id, key and headers) or a dead letter (why).

The rules, in order:

1. An :class:`~bridge.decode.OversizedRecord` (longer than the decoder keeps) is
   ``oversized``; a record that is not JSON is ``not_json``; JSON that is not an object is
   ``not_object``.
2. A hit's id is ``hitIdHigh``/``hitIdLow`` (the rules of :mod:`bridge.dedupe`); without a
   usable id it is ``missing_hit_id``, unless ``publish.require_hit_id`` is off (then it
   is published without one and never deduplicated).
3. The message key is the visitor id (``visIdHigh:visIdLow``, else ``mcVisIdHigh:mcVisIdLow``,
   else none) when ``publish.key`` is ``visitor``.
4. Headers: ``hit-id`` (when it has one), ``report-suite`` (the record's, else the
   configured one, else none) and ``received-at`` (milliseconds since the epoch).

:func:`classify` is the reference. :meth:`bridge.publish.Publisher.publish_many` inlines
the same rules for the forms Live Stream sends and calls the helpers here for the rest;
``tests/test_classify.py`` holds the two to agreeing on generated records. Both read the
record's fields through :mod:`bridge.fields`: ``classify`` with its reference (orjson), the
publisher with its native-speed reader, held to the same answer there too.

A dead letter carries the record (only its head when it is too large) and the headers of
:func:`dead_letter`.
"""

from __future__ import annotations

from typing import NamedTuple

from bridge.decode import OversizedRecord
from bridge.dedupe import hit_id_key, hit_id_text
from bridge.fields import NOT_JSON, NOT_OBJECT, Fields, reference_fields

__all__ = [
    "DLQ_HEAD_BYTES",
    "MISSING_HIT_ID",
    "NOT_JSON",
    "NOT_OBJECT",
    "OVERSIZED",
    "Header",
    "Headers",
    "Hit",
    "classify",
    "dead_letter",
    "received_at_header",
    "report_suite",
    "stamp",
    "visitor_key",
]

Header = tuple[str, str]
# A message's headers as the producer takes them fastest (names are distinct: the order
# consumers see is the insertion order).
Headers = dict[str, str]

OVERSIZED, MISSING_HIT_ID = "oversized", "missing_hit_id"
DLQ_HEAD_BYTES = 64 * 1024  # how much of an oversized record the dead-letter topic keeps


class Hit(NamedTuple):
    """A record to publish: ``ids`` its dedupe key (None: no id), ``hit_id`` its header."""

    ids: tuple[int, int] | None
    hit_id: str | None
    key: str | None
    suite: str | None
    stamp: object  # the hit's own time, for the freshness metrics (bridge.freshness)


def received_at_header(received_at: float) -> Header:
    """The ``received-at`` header of a record read at ``received_at`` (epoch seconds)."""
    return ("received-at", str(int(received_at * 1000)))


def visitor_key(doc: Fields) -> str | None:
    """The message key of a hit when keyed by visitor: its visitor id, if any."""
    return hit_id_text(doc.visIdHigh, doc.visIdLow) or hit_id_text(doc.mcVisIdHigh, doc.mcVisIdLow)


def report_suite(doc: Fields, default: str | None) -> str | None:
    """The ``report-suite`` header value: the record's, else ``default``; None: no header."""
    suite = doc.reportSuite or default
    if not suite:
        return None
    return suite if type(suite) is str else str(suite)


def stamp(doc: Fields) -> object:
    """The hit's own time as it appears (parsed by bridge.freshness at commit)."""
    return doc.receivedTimeGMT or doc.timeGMT


def classify(
    record: bytes,
    *,
    require_hit_id: bool = True,
    key_by_visitor: bool = True,
    default_suite: str | None = None,
) -> Hit | str:
    """The record as a :class:`Hit`, or the reason to dead-letter it (see module doc)."""
    if type(record) is OversizedRecord:
        return OVERSIZED
    doc = reference_fields(record)
    if isinstance(doc, str):
        return doc  # NOT_JSON or NOT_OBJECT
    high, low = doc.hitIdHigh, doc.hitIdLow
    ids = hit_id_key(high, low)
    if ids is None and require_hit_id:
        return MISSING_HIT_ID
    return Hit(
        ids=ids,
        hit_id=None if ids is None else hit_id_text(high, low) or "",
        key=visitor_key(doc) if key_by_visitor else None,
        suite=report_suite(doc, default_suite),
        stamp=stamp(doc),
    )


def dead_letter(
    record: bytes, reason: str, received_ms: str, max_bytes: int, size: int | None = None
) -> tuple[bytes, list[Header]]:
    """The dead-letter message of ``record``: its value and headers.

    ``size`` is the record's true length when it is known to be too large (then only the
    head is kept); any record is cut to what a message of ``max_bytes`` holds.
    """
    headers = [("reason", reason), ("received-at", received_ms)]
    value = bytes(record)
    room = max_bytes - 2048  # whatever the reason, the DLQ message must fit
    if size is not None or len(value) > room:
        value = value[: min(DLQ_HEAD_BYTES, room) if size is not None else room]
        headers.append(("original-size", str(len(record) if size is None else size)))
    return value, headers
