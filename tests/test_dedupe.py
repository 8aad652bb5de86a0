"""HitIdWindow (C) and PyHitIdWindow (its Python definition) and the hit-id helpers:
exactness, coverage, the two windows' identical answers and the id text rules."""

from __future__ import annotations

import json
import re
from collections import deque

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge._window import Window
from bridge.dedupe import (
    HitIdWindow,
    PyHitIdWindow,
    hit_id_key,
    hit_id_key_from_text,
    hit_id_text,
)

U64 = (1 << 64) - 1

AnyWindow = HitIdWindow | PyHitIdWindow
# Every window test runs against both: the C window is the one the publisher uses.
both = pytest.mark.parametrize("make", [HitIdWindow, PyHitIdWindow], ids=["c", "python"])


class ReferenceWindow:
    """The model: every id ever inserted (for false positives) and the last ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.recent: deque[tuple[int, int]] = deque()
        self.recent_set: set[tuple[int, int]] = set()
        self.ever: set[tuple[int, int]] = set()

    def add(self, hit_id: tuple[int, int]) -> None:
        self.ever.add(hit_id)
        self.recent.append(hit_id)
        self.recent_set.add(hit_id)
        if len(self.recent) > self.capacity:
            self.recent_set.discard(self.recent.popleft())


def _check_against_model(window: AnyWindow, ops: list[tuple[int, int]]) -> None:
    model = ReferenceWindow(window.capacity)
    for hit_id in ops:
        seen = window.seen_or_add(*hit_id)
        if hit_id in model.recent_set:
            assert seen, f"{hit_id} is among the last {window.capacity} ids but was not detected"
        if seen:
            assert hit_id in model.ever, f"false positive for {hit_id}"
        else:
            model.add(hit_id)
        for recent in model.recent:
            assert recent in window, f"{recent} forgotten while within capacity"


# Small id spaces make repeats (and so the interesting cases) frequent.
small_ids = st.tuples(st.integers(0, 3), st.integers(0, 40))
wide_ids = st.tuples(st.integers(0, U64), st.integers(0, U64))


@both
@settings(max_examples=300, deadline=None)
@given(
    capacity=st.integers(1, 40),
    epochs=st.integers(1, 6),
    bucket=st.integers(1, 8),
    ops=st.lists(st.one_of(small_ids, wide_ids), max_size=400),
)
def test_window_matches_reference_model(
    make: type[AnyWindow], capacity: int, epochs: int, bucket: int, ops: list[tuple[int, int]]
) -> None:
    """Against a deque+set model: never a false positive, every id in the last capacity found."""
    _check_against_model(make(capacity, epochs=epochs, bucket=bucket, load=1.0), ops)


@both
@settings(max_examples=50, deadline=None)
@given(capacity=st.integers(1, 300), seed=st.integers(0, 2**32))
def test_rotation_keeps_the_last_capacity_ids(
    make: type[AnyWindow], capacity: int, seed: int
) -> None:
    """Across many epoch rotations every id of the last ``capacity`` inserts stays detected."""
    import random

    rng = random.Random(seed)
    window = make(capacity, epochs=4, bucket=4)
    inserted: list[tuple[int, int]] = []
    for _ in range(capacity * 9 + 7):
        hit_id = (rng.getrandbits(64), rng.getrandbits(64))
        assert not window.seen_or_add(*hit_id)
        inserted.append(hit_id)
        for recent in inserted[-capacity:]:
            assert recent in window
    epochs = min(4, capacity)
    assert capacity <= len(window) < (epochs + 1) * -(-capacity // epochs)


@pytest.mark.parametrize("native", [True, False], ids=["c", "python"])
def test_full_buckets_spill_to_the_stash_without_forgetting(native: bool) -> None:
    """With two one-slot buckets, ids that do not fit go to the stash and are still exact."""
    window: Window | PyHitIdWindow
    if native:
        window = Window(20, 2, 2, 1)  # the C table as its constructor takes it: two slots
    else:
        window = PyHitIdWindow(20, epochs=2, bucket=1, load=1.0)
        window._nb = 2  # squeeze the table to two slots (the buffers are larger; harmless)
    ids = [(7, n) for n in range(20)]
    for hit_id in ids:
        assert not window.seen_or_add(*hit_id)
    assert window.stats()["stashed_total"] > 0
    assert all(window.seen_or_add(*hit_id) for hit_id in ids)
    assert not window.seen_or_add(7, 1000)


@both
def test_zero_id_is_remembered_and_distinct(make: type[AnyWindow]) -> None:
    """The all-zero id, which looks like an empty slot, is handled exactly."""
    window = make(10)
    assert (0, 0) not in window
    assert not window.seen_or_add(0, 0)
    assert window.seen_or_add(0, 0)
    assert not window.seen_or_add(0, 1)
    assert not window.seen_or_add(1, 0)


@both
def test_seed_and_len(make: type[AnyWindow]) -> None:
    """seed() remembers ids oldest first and reports how many were new; len counts them."""
    window = make(100)
    assert window.seed([(1, 2), (3, 4), (1, 2)]) == 2
    assert len(window) == 2
    assert window.seen_or_add(3, 4)
    assert not window.seen_or_add(5, 6)
    assert len(window) == 3


@both
def test_default_capacity_is_about_19_bytes_per_id(make: type[AnyWindow]) -> None:
    """The default window's table stays near 19 bytes per id (114 MB for 6M ids)."""
    window = make()
    try:
        assert window.nbytes / window.capacity < 19.5
    finally:
        window.close()


@both
def test_rejects_bad_parameters(make: type[AnyWindow]) -> None:
    """Nonsense sizes are refused at construction."""
    with pytest.raises(ValueError):
        make(0)
    with pytest.raises(ValueError):
        make(10, bucket=0)
    with pytest.raises(ValueError):
        make(10, epochs=0)


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 60),
    epochs=st.integers(1, 6),
    bucket=st.integers(1, 8),
    ops=st.lists(st.one_of(small_ids, wide_ids), max_size=500),
)
def test_c_window_answers_as_the_python_one(
    capacity: int, epochs: int, bucket: int, ops: list[tuple[int, int]]
) -> None:
    """The C window is the Python one's table: the same answer for every id, the same len and
    stash, through rotations and full buckets."""
    c = HitIdWindow(capacity, epochs=epochs, bucket=bucket, load=1.0)
    py = PyHitIdWindow(capacity, epochs=epochs, bucket=bucket, load=1.0)
    assert (c.slots, c.nbytes, c.capacity) == (py.slots, py.nbytes, py.capacity)
    for hit_id in ops:
        assert c.seen_or_add(*hit_id) == py.seen_or_add(*hit_id), hit_id
        assert len(c) == len(py)
    assert c.stats() == py.stats()
    assert all((hit_id in c) == (hit_id in py) for hit_id in ops)


def test_c_window_refuses_what_is_not_an_id_and_use_after_close() -> None:
    """Ids outside 0..2**64-1 raise (the publisher never passes one), lookups of them say
    no, and a closed window refuses work instead of touching freed memory."""
    window = HitIdWindow(10)
    with pytest.raises(OverflowError):
        window.seen_or_add(-1, 0)
    with pytest.raises(OverflowError):
        window.seen_or_add(0, 1 << 64)
    assert (-1, 0) not in window and ("1", "2") not in window and 5 not in window
    window.close()
    with pytest.raises(ValueError):
        window.seen_or_add(1, 2)
    assert (1, 2) not in window
    bare = Window.__new__(Window)  # never initialised: refuses work, does not crash
    with pytest.raises(ValueError):
        bare.seen_or_add(1, 2)
    with pytest.raises(ValueError):
        bare.stats()
    assert (1, 2) not in bare and len(bare) == 0


@pytest.mark.parametrize(
    ("high", "low", "expected"),
    [
        (1, 2, (1, 2)),
        ("1", "2", (1, 2)),
        (1, "2", (1, 2)),
        ("0", "18446744073709551615", (0, U64)),
        (U64, "18446744073709551615", (U64, U64)),
        (1000.0, 3, (1000, 3)),
        (None, 1, None),
        (1, None, None),
        ("", "1", None),
        (1.5, 1, None),
        (1.8446744073709552e19, 1, None),
    ],
)
def test_hit_id_key_numbers_and_missing(high: object, low: object, expected: object) -> None:
    """Numbers and digit strings are the same id; missing, empty and inexact parts give None."""
    assert hit_id_key(high, low) == expected


def test_hit_id_key_hashes_other_text() -> None:
    """Text that is not a 64-bit number is hashed: stable, distinct and 64-bit."""
    a = hit_id_key("abc", "1")
    b = hit_id_key("abc", "2")
    assert a is not None and b is not None
    assert a != b
    assert a == hit_id_key("abc", 1)
    assert all(0 <= part <= U64 for part in a)
    assert hit_id_key(-5, 1) == hit_id_key("-5", "1") != hit_id_key(5, 1)
    assert hit_id_key(U64 + 1, 1) == hit_id_key(str(U64 + 1), "1")
    assert hit_id_key(True, 1) != hit_id_key("true", "1")


@settings(max_examples=200, deadline=None)
@given(
    high=st.one_of(st.integers(-(2**70), 2**70), st.text(max_size=12), st.booleans()),
    low=st.one_of(st.integers(0, U64), st.text(max_size=12)),
)
def test_header_text_gives_the_records_key_or_none(high: object, low: object) -> None:
    """A ``hit-id`` header alone yields the record's own key when it can, else None (then
    the seed reads the record): never another id's key."""
    text = hit_id_text(high, low)
    key = hit_id_key(high, low)
    if text is None:
        assert key is None
    else:
        assert hit_id_key_from_text(text) in (key, None)
    if type(high) is int and type(low) is int and 0 <= high <= U64:
        assert hit_id_key_from_text(f"{high}:{low}") == (high, low)


_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]*")


def _same_id_model(value: object) -> object:
    """What makes two hit-id components the same id: equal JSON values, where a number and
    the string of its canonical decimal (no sign on 0, no leading zeros) count as equal."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("num", value)
    if isinstance(value, float):
        return ("num", int(value)) if value.is_integer() and abs(value) <= 2**53 else None
    if isinstance(value, str):
        return ("num", int(value)) if _CANONICAL_INT.fullmatch(value) else ("str", value)
    return ("json", orjson.dumps(value))


# Few characters, many separators and zeros: the strings that used to collide.
_tricky_text = st.text(alphabet='0123:a"-', max_size=6)
_component = st.one_of(
    _tricky_text,
    st.integers(-(2**65), 2**65),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.lists(st.one_of(st.integers(0, 3), _tricky_text), max_size=2),
)


def _look_alikes(a: tuple[object, object]) -> st.SearchStrategy[tuple[object, object]]:
    """Ids that print like ``a``: its text split at another colon, its parts as strings,
    zero-padded or JSON-encoded, and unrelated ids."""
    options: list[st.SearchStrategy[tuple[object, object]]] = [st.tuples(_component, _component)]
    text = hit_id_text(*a)
    if text is not None:
        cuts = [i for i, c in enumerate(text) if c == ":"]
        options.append(st.sampled_from(cuts).map(lambda i: (text[:i], text[i + 1 :])))
    options.append(st.just((str(a[0]), str(a[1]))))
    options.append(st.just((f"0{a[0]}", a[1])))
    options.append(st.just((json.dumps(a[0]), a[1])))
    return st.one_of(options)


@settings(max_examples=1500, deadline=None)
@given(a=st.tuples(_component, _component), data=st.data())
def test_distinct_ids_never_share_a_key(a: tuple[object, object], data: st.DataObject) -> None:
    """Two hit ids get the same dedupe key exactly when they are the same id (model above):
    the id pair to hashed-input mapping is injective, so only a 128-bit hash collision could
    merge two ids."""
    b = data.draw(_look_alikes(a))
    model_a = tuple(_same_id_model(v) for v in a)
    model_b = tuple(_same_id_model(v) for v in b)
    key_a, key_b = hit_id_key(*a), hit_id_key(*b)
    assert (key_a is None) == (None in model_a)
    assert (key_b is None) == (None in model_b)
    if key_a is not None and key_b is not None:
        assert (key_a == key_b) == (model_a == model_b), (a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("a:b", "c"), ("a", "b:c")),
        (("0123", "1"), ("123", "1")),
        (("1", "0123"), ("1", "123")),
        ((True, 1), ("true", 1)),
        (([1], 2), ("[1]", 2)),
        (("-0", 1), (0, 1)),
    ],
)
def test_ids_that_used_to_collide_are_distinct(
    a: tuple[object, object], b: tuple[object, object]
) -> None:
    """Pairs whose joined text (or number) was the same are different ids now."""
    assert hit_id_key(*a) != hit_id_key(*b)


def test_hit_id_text_prints_values_as_they_appear() -> None:
    """Numbers print as integers, strings as they are."""
    assert hit_id_text(12, 34) == "12:34"
    assert hit_id_text("0012", "x") == "0012:x"
    assert hit_id_text(3.0, 4) == "3:4"
    assert hit_id_text(None, 4) is None
