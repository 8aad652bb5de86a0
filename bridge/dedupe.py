"""Drop replayed hits: an exact, bounded memory of the most recent hit ids.

Live Stream resends hits around reconnects; a hit is the same hit when its id, the pair
``hitIdHigh``/``hitIdLow``, is the same. :class:`HitIdWindow` remembers at least the last
``capacity`` ids it was given and answers "seen before?" with no false positives: a false
positive would drop a real hit, which is data loss. A false negative (an id older than the
window) only lets a duplicate through.

Two ids are the same id when both parts are the same JSON value, a number and the string
of its canonical decimal counting as one (``123`` = ``"123"``, but ``"0123"`` is another id).
Numeric ids in 0..2**64-1 are the key themselves; any other id is hashed from an
unambiguous (tagged, length-prefixed) encoding of its two parts, so ``"a:b"``+``"c"`` and
``"a"``+``"b:c"`` differ: distinct ids share a key only on a 128-bit BLAKE2b collision.

Layout (why not a ``set``: a Python int pair costs ~100 bytes, 6M of them ~600 MB)
-------------------------------------------------------------------------------
:class:`HitIdWindow`, the publisher's, keeps this table in C (``bridge/_window.c``): about
0.5 µs per id where :class:`PyHitIdWindow`, the same table in Python and the definition
the tests hold the C one to, spends about 2.6 µs on a dozen 128-bit integer objects.

Each id becomes a 128-bit key through a bijection (multiply by an odd constant modulo
2**128, then an xor-shift), so the key *is* the id: comparing keys is exact. The table is
``NB`` buckets of ``W`` (64) slots held in flat buffers:

* ``fp``   1 byte per slot, the key's top 8 bits (anonymous mmap, faulted in when made)
* ``rest`` 15 bytes per slot, the key's other 120 bits (anonymous mmap, the same)
* ``tags`` 1 byte per slot, the *epoch* the slot was written in, 0 for a free slot
* ``free`` 1 byte per bucket, its number of free slots

A key may live in one of two buckets (chosen by two independent slices of its bits) and is
inserted into the emptier one ("two choices" keeps bucket loads within a few slots of the
mean, so the table runs at 95% load). A lookup is two ``find`` calls of the fingerprint
byte over one 64-byte cache line each (memchr, in C); a match is confirmed on the other 15
bytes. In the rare case both buckets are full the key goes to a small ``stash`` dict, so
nothing the window promises to remember is ever dropped.

Ids are grouped in epochs of ``ceil(capacity / epochs)`` inserts. The last ``epochs + 1``
epochs are live; when an epoch ends, one ``bytes.translate`` over ``tags`` marks the slots
of the oldest epoch free and the free counts are recounted (C speed: ~20 ms for the default
size, every 375,000 inserts). Freed keys stay in place until reused and are still found by
lookups, which is harmless: an id that was ever seen is a real duplicate. Live ids are
never overwritten, so the last ``capacity`` inserted ids are always found.

The pages are faulted in when the window is made (about 40 ms for the default size, during
a new leader's start-up): left to fault on first write, the first few hundred thousand ids
of every term each paid one to two microseconds more (a page fault), just when a new
leader has a backlog to catch up. The window touches all of its pages within seconds at
any real rate anyway.

Memory is ``17 * slots`` bytes, ``slots ~= capacity * (1 + 1/epochs) / load``: about 19 bytes
per id with the defaults (114 MB for 6,000,000 ids).
"""

from __future__ import annotations

import hashlib
import math
import mmap
import re
from collections import deque
from collections.abc import Iterable

import orjson

from bridge._window import Window

__all__ = [
    "HitIdWindow",
    "PyHitIdWindow",
    "hit_id_key",
    "hit_id_key_from_text",
    "hit_id_text",
]

_U64 = (1 << 64) - 1
_M56 = (1 << 56) - 1
_M120 = (1 << 120) - 1
_M128 = (1 << 128) - 1
# Odd multipliers: multiplication modulo 2**128 by an odd number is a bijection.
_C1 = 0x9E3779B97F4A7C15F39CC0605CEDC835
_FLOAT_EXACT = 1 << 53
_HASH_PERSON = b"ls-hit-id-2"  # -2: the tagged, length-prefixed input
_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]*")

DEFAULT_CAPACITY = 6_000_000


def _id_text(value: object) -> str | None:  # noqa: PLR0911 - one return per JSON type
    """The text of one hit-id component as it appeared, or None when it is unusable."""
    if type(value) is str:
        return value or None
    if type(value) is int:
        return str(value)
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        # A JSON number that is not a 64-bit integer reaches us as a float, which may have
        # lost digits: two different ids could become one. Only exact values are usable.
        if value.is_integer() and abs(value) <= _FLOAT_EXACT:
            return str(int(value))
        return None
    if isinstance(value, int):
        return str(int(value))
    return orjson.dumps(value).decode()


def _u64(text: str) -> int | None:
    """The number ``text`` spells in canonical decimal (no sign, no leading zero), if a u64."""
    if text.isascii() and text.isdigit() and len(text) <= 20 and (text[0] != "0" or text == "0"):
        n = int(text)
        if n <= _U64:
            return n
    return None


def _component(value: object) -> bytes | None:  # noqa: PLR0911 - one return per JSON type
    """One hit-id component as a tagged, unambiguous byte string; None when unusable.

    Numbers, and strings spelling an integer in canonical decimal, share the tag ``n`` (Live
    Stream sends ids as numbers or as strings); other strings ``s``, booleans ``b``, other
    JSON ``j``. Distinct components (in that sense) give distinct encodings.
    """
    if type(value) is str:
        if not value:
            return None
        if _CANONICAL_INT.fullmatch(value):
            return b"n" + value.encode()
        return b"s" + value.encode("utf-8", "surrogatepass")
    if isinstance(value, bool):
        return b"b1" if value else b"b0"
    if isinstance(value, int):
        return b"n%d" % value
    if value is None:
        return None
    if isinstance(value, float):
        if value.is_integer() and abs(value) <= _FLOAT_EXACT:
            return b"n%d" % int(value)
        return None  # inexact: see _id_text
    return b"j" + orjson.dumps(value)


def _hashed(high: bytes, low: bytes) -> tuple[int, int]:
    # The first part's length goes first: with it, the input spells exactly one pair.
    data = len(high).to_bytes(8, "big") + high + low
    digest = hashlib.blake2b(data, digest_size=16, person=_HASH_PERSON).digest()
    return int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:], "big")


def hit_id_text(high: object, low: object) -> str | None:
    """The ``hit-id`` header value, ``high:low`` as the values appeared; None when unusable."""
    type_h, type_l = type(high), type(low)
    if (type_h is int or (type_h is str and high)) and (type_l is int or (type_l is str and low)):
        return f"{high}:{low}"
    if high is None or low is None:
        return None
    th, tl = _id_text(high), _id_text(low)
    if th is None or tl is None:
        return None
    return f"{th}:{tl}"


def hit_id_key(high: object, low: object) -> tuple[int, int] | None:
    """The dedupe key of a hit id: two unsigned 64-bit ints, or None when there is none.

    Integers in 0..2**64-1, and strings spelling one in canonical decimal, are taken as
    they are (so ``123`` and ``"123"`` are the same id, ``"0123"`` another). Any other id is
    hashed with BLAKE2b-128 from the tagged encoding of :func:`_component`, length-prefixed,
    so two distinct ids never share the hashed input; they share a key only on a 128-bit
    hash collision. Missing, null, empty-string and inexact (large float) parts give None.
    """
    if type(high) is int and type(low) is int and 0 <= high <= _U64 and 0 <= low <= _U64:
        return high, low
    if type(high) is str and type(low) is str:
        h, lo = _u64(high), _u64(low)
        if h is not None and lo is not None:
            return h, lo
    ch, cl = _component(high), _component(low)
    if ch is None or cl is None:
        return None
    if ch[:1] == b"n" and cl[:1] == b"n":
        h, lo = _u64(ch[1:].decode()), _u64(cl[1:].decode())
        if h is not None and lo is not None:
            return h, lo
    return _hashed(ch, cl)


def hit_id_key_from_text(text: str) -> tuple[int, int] | None:
    """The dedupe key a ``hit-id`` header value stands for, when the text alone says so.

    Only ``high:low`` of two canonical 64-bit numbers is unambiguous; for any other text
    (``a:b:c`` may be ``a:b``+``c`` or ``a``+``b:c``) this returns None and the key must come
    from the record itself (:func:`hit_id_key` of its fields).
    """
    high, sep, low = text.partition(":")
    if not sep:
        return None
    h, lo = _u64(high), _u64(low)
    if h is None or lo is None:
        return None
    return h, lo


def _mix(high: int, low: int) -> int:
    k = (((high << 64) | low) * _C1) & _M128
    return k ^ (k >> 64)


_FP = [bytes((i,)) for i in range(256)]


def _prefaulted(length: int) -> mmap.mmap:
    """Zeroed anonymous memory whose pages are all mapped now (see the module doc)."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
    return mmap.mmap(-1, length, flags=flags)


def _shape(capacity: int, epochs: int, load: float, bucket: int) -> tuple[int, int]:
    """(epochs, buckets) of a window of ``capacity`` ids; ValueError for a bad argument."""
    if capacity < 1:
        raise ValueError("capacity must be at least 1")
    if not 1 <= epochs <= 250:
        raise ValueError("epochs must be in 1..250")
    if not 0.1 <= load <= 1.0:
        raise ValueError("load must be in 0.1..1.0")
    if not 1 <= bucket <= 255:
        raise ValueError("bucket must be in 1..255")
    epochs = min(epochs, capacity)
    most = math.ceil(capacity / epochs) * (epochs + 1)  # live ids at the end of an epoch
    return epochs, max(1, math.ceil(most / load / bucket))


class HitIdWindow(Window):
    """At least the last ``capacity`` hit ids, exactly: :class:`PyHitIdWindow`'s table and
    answers, in C (``bridge/_window.c``), at a fifth of its cost per id. The publisher's.

    ``epochs``, ``load`` and ``bucket`` trade memory for speed and are fine as they are.
    Not thread-safe: one publisher owns it.
    """

    __slots__ = ()

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        *,
        epochs: int = 16,
        load: float = 0.95,
        bucket: int = 64,
    ) -> None:
        epochs, buckets = _shape(capacity, epochs, load, bucket)
        super().__init__(capacity, epochs, buckets, bucket)


class PyHitIdWindow:
    """:class:`HitIdWindow` in Python: the definition its C twin is tested against, and
    the layout the module doc draws."""

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        *,
        epochs: int = 16,
        load: float = 0.95,
        bucket: int = 64,
    ) -> None:
        epochs, self._nb = _shape(capacity, epochs, load, bucket)
        self.capacity = capacity
        self._epoch_size = math.ceil(capacity / epochs)
        self._epochs = epochs
        self._w = bucket
        slots = self._nb * bucket
        self._fp = _prefaulted(slots)
        self._rest = _prefaulted(slots * 15)
        self._fp_find = self._fp.find
        self._tags = bytearray(slots)
        self._free = bytearray([bucket]) * self._nb  # free slots per bucket
        self._stash: dict[int, int] = {}  # key -> tag, for ids whose buckets were both full
        self._zero_tag = 0  # the all-zero key (id 0:0) cannot be told from a free slot
        self._tag = 1
        self._in_epoch = 0
        self._live: deque[tuple[int, int]] = deque()  # (tag, count) of finished live epochs
        self._live_ids = 0  # the sum of those counts, so len() never walks the deque
        self._stashed_total = 0

    @property
    def slots(self) -> int:
        return self._nb * self._w

    @property
    def nbytes(self) -> int:
        """Bytes the table occupies once every page was touched (its steady state)."""
        return self.slots * 17 + self._nb

    def __len__(self) -> int:
        """How many ids are currently guaranteed to be remembered.

        Safe to call from another thread (a metrics scrape): two plain reads, where
        iterating the deque while the owner rotates an epoch would raise.
        """
        return self._in_epoch + self._live_ids

    def stats(self) -> dict[str, int]:
        return {
            "ids": len(self),
            "slots": self.slots,
            "bytes": self.nbytes,
            "stash": len(self._stash),
            "stashed_total": self._stashed_total,
        }

    def _in_bucket(self, k: int, fp: bytes, start: int) -> bool:
        """Is key ``k`` (fingerprint ``fp``) in the bucket whose first slot is ``start``?"""
        find, end = self._fp_find, start + self._w
        i = find(fp, start, end)
        if i < 0:
            return False
        rest = (k & _M120).to_bytes(15, "little")
        view = self._rest
        while i >= 0:
            j = i * 15
            if view[j : j + 15] == rest:
                return True
            i = find(fp, i + 1, end)
        return False

    def __contains__(self, hit_id: object) -> bool:
        if not isinstance(hit_id, tuple) or len(hit_id) != 2:
            return False
        k = _mix(hit_id[0], hit_id[1])
        if not k:
            return self._zero_tag != 0
        nb, w, fp = self._nb, self._w, _FP[k >> 120]
        b1 = (((k >> 64) & _M56) * nb >> 56) * w
        b2 = ((k & _M56) * nb >> 56) * w
        return self._in_bucket(k, fp, b1) or self._in_bucket(k, fp, b2) or k in self._stash

    def seen_or_add(self, high: int, low: int) -> bool:
        """True when ``high:low`` was seen before (a duplicate); otherwise remember it."""
        # The hot path of every hit: locals only, each big-int operation done once.
        k = (((high << 64) | low) * _C1) & _M128
        k ^= k >> 64
        if not k:
            return self._zero_seen_or_add()
        top = k >> 120
        fp = _FP[top]
        nb, w = self._nb, self._w
        b1 = (((k >> 64) & _M56) * nb) >> 56
        b2 = ((k & _M56) * nb) >> 56
        s1 = b1 * w
        s2 = b2 * w
        find = self._fp_find
        # The common case, a new id, costs two memchr over one cache line each.
        if (find(fp, s1, s1 + w) >= 0 and self._in_bucket(k, fp, s1)) or (
            find(fp, s2, s2 + w) >= 0 and self._in_bucket(k, fp, s2)
        ):
            return True
        stash = self._stash
        if stash and k in stash:
            return True
        free = self._free
        if free[b2] > free[b1]:
            b1, s1 = b2, s2
        if free[b1]:
            free[b1] -= 1
            tags = self._tags
            j = tags.find(0, s1, s1 + w)
            tags[j] = self._tag
            self._fp[j] = top
            j *= 15
            self._rest[j : j + 15] = (k & _M120).to_bytes(15, "little")
        else:
            stash[k] = self._tag
            self._stashed_total += 1
        n = self._in_epoch = self._in_epoch + 1
        if n >= self._epoch_size:
            self._rotate()
        return False

    def _zero_seen_or_add(self) -> bool:
        if self._zero_tag:
            return True
        self._zero_tag = self._tag
        self._in_epoch += 1
        if self._in_epoch >= self._epoch_size:
            self._rotate()
        return False

    def _rotate(self) -> None:
        """Close the current epoch; free the slots of the one that falls out of the window."""
        self._live.append((self._tag, self._in_epoch))
        self._live_ids += self._in_epoch
        self._in_epoch = 0
        self._tag = self._tag % 255 + 1
        if len(self._live) <= self._epochs:
            return
        old, dropped = self._live.popleft()
        self._live_ids -= dropped
        table = bytearray(range(256))
        table[old] = 0
        tags = self._tags = self._tags.translate(table)
        # Recount the free slots of every bucket (C-level count, one call per bucket).
        count, w = tags.count, self._w
        self._free = bytearray(count(0, s, s + w) for s in range(0, len(tags), w))
        if self._stash:
            for key in [key for key, tag in self._stash.items() if tag == old]:
                del self._stash[key]
        if self._zero_tag == old:
            self._zero_tag = 0

    def seed(self, ids: Iterable[tuple[int, int]]) -> int:
        """Remember ``ids`` (oldest first, e.g. the topic's tail); returns how many were new."""
        added = 0
        seen_or_add = self.seen_or_add
        for high, low in ids:
            if not seen_or_add(high, low):
                added += 1
        return added

    def close(self) -> None:
        """Give the memory back now rather than at garbage collection."""
        self._fp.close()
        self._rest.close()
        self._tags = bytearray(0)
