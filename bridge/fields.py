"""The fields of a record the bridge reads, at native speed, with orjson's exact verdict.

:func:`reference_fields` is the definition: ``orjson.loads`` of the whole record (which is
also the check that it is valid UTF-8 JSON), ``not_json`` or ``not_object`` when it is
not an object, else the :class:`Fields` the bridge reads, each ``None`` when absent (the
``dict.get`` of the parsed object). :class:`FieldReader` gives the same answer, value and
type alike, for about half the CPU on Live Stream's 1.8 KB hits, because building the
whole dict is most of what ``orjson.loads`` costs.

How: no library alone gives orjson's answer (``tests/test_classify.py`` holds them to it):

* simdjson (pysimdjson) validates the whole document, UTF-8 included, at a fifth of the
  cost of ``orjson.loads``, but keeps the *first* of duplicate keys (orjson: the last)
  and refuses integers beyond 64 bits and nesting of 1024 (orjson: a float, accepted);
  it accepts a leading UTF-8 BOM (orjson does not).
* msgspec decoding only these fields into a Struct keeps the last duplicate, like orjson,
  but does not check the UTF-8 of the strings it skips, accepts integers beyond 64 bits
  and numbers beyond a double where orjson refuses or gives a float, and refuses deep
  nesting sooner.

So simdjson is the validator (whatever it accepts, orjson accepts, a BOM aside, which is
looked for first), and *anything* either raises goes to :func:`reference_fields`: orjson
has the last word on every record the fast path is not sure of; only those (bad or rare
records) pay one more parse. The fields of what simdjson accepted are read in C
(``bridge/_fields.c``) when each is plain (a string without escapes, a 64-bit integer,
true, false, null: what Live Stream sends), which costs a fifth of msgspec's full read;
msgspec reads the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import orjson
import simdjson

from bridge._fields import Reader

__all__ = ["FIELDS", "NOT_JSON", "NOT_OBJECT", "FieldReader", "Fields", "reference_fields"]

NOT_JSON, NOT_OBJECT = "not_json", "not_object"
_BOM = b"\xef\xbb\xbf"


class Fields(msgspec.Struct, gc=False):
    """The values a hit's id, key, headers and freshness stamp come from (None: absent)."""

    hitIdHigh: Any = None  # the record's own field names
    hitIdLow: Any = None
    visIdHigh: Any = None
    visIdLow: Any = None
    mcVisIdHigh: Any = None
    mcVisIdLow: Any = None
    reportSuite: Any = None
    receivedTimeGMT: Any = None
    timeGMT: Any = None


FIELDS: tuple[str, ...] = Fields.__struct_fields__


def reference_fields(record: bytes) -> Fields | str:
    """The record's :class:`Fields` as ``orjson.loads`` sees them, or why there are none."""
    try:
        doc = orjson.loads(record)
    except orjson.JSONDecodeError:
        return NOT_JSON
    if type(doc) is not dict:
        return NOT_OBJECT
    get = doc.get
    return Fields(*[get(name) for name in FIELDS])


class FieldReader:
    """:func:`reference_fields` at native speed (see module doc). Not thread-safe: one
    simdjson parser, reused for every record (it holds one document at a time)."""

    def __init__(self) -> None:
        self._parse = simdjson.Parser().parse
        self._plain = Reader(FIELDS, Fields).read
        self._decode = msgspec.json.Decoder(Fields).decode

    @property
    def validator(self) -> tuple[Callable[[bytes], object], type]:
        """This reader's simdjson parse and the type it gives for a JSON object, for the
        publisher's native lane (bridge/_lane.c), which validates as :meth:`read` does."""
        return self._parse, simdjson.Object

    def read(self, record: bytes) -> Fields | str:
        """The record's fields, or ``NOT_JSON`` / ``NOT_OBJECT``: exactly orjson's answer."""
        try:
            # simdjson accepts a leading BOM, orjson does not. No simdjson proxy may outlive
            # this line: the next parse would raise (then orjson would decide: right, but
            # slow). Anything but an object is a dead letter, rare: orjson says which.
            if not record.startswith(_BOM) and type(self._parse(record)) is simdjson.Object:
                fields = self._plain(record)
                return fields if fields is not None else self._decode(record)
        except Exception:  # noqa: S110 - whatever either library refuses, orjson decides
            pass
        return reference_fields(record)
