"""The check before a slot holder's first connection (``bridge.election.agreement``): pure
logic over a fake view of the other slots; the real backends are exercised by
``tests/test_slots.py``."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from bridge.election.agreement import Agreement, SlotView
from bridge.election.base import CLAIMED, CONNECTED, RELEASED, Predecessor

pytestmark = pytest.mark.timeout(10)


class FakePeek:
    """Other slots as a test sets them; ``fail`` makes the next read raise."""

    def __init__(self, views: dict[int, SlotView] | None = None) -> None:
        self.slots = dict(views or {})
        self.asked: list[list[int]] = []
        self.fail = False

    def views(self, slots: Iterable[int]) -> dict[int, SlotView]:
        wanted = list(slots)
        self.asked.append(wanted)
        if self.fail:
            raise RuntimeError("broker unreachable")
        return {s: v for s, v in self.slots.items() if s in wanted}

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(kind: str, n: int, *, at: float = 0.0, clean: bool = False) -> Predecessor:
    return Predecessor("other", kind, at, clean, n)


def agreement(peek: FakePeek, clock: Clock, claims: list[bool] | None = None) -> Agreement:
    results = claims if claims is not None else [True]
    return Agreement(
        slot=1,
        max_connections=3,
        grace_s=60.0,
        claim=lambda: results.pop(0),
        peek=peek,
        clock=clock,
        wall=clock,
    )


def test_one_n_everywhere_agrees_at_once_and_looks_at_all_other_slots() -> None:
    """Other slots on the same N: ready at the first call, after looking at slots 0 and
    2..7 (whatever this replica's own N), and no second look afterwards."""
    peek = FakePeek({0: SlotView("a", record(CONNECTED, 3)), 2: SlotView("c", record(CLAIMED, 3))})
    check = agreement(peek, Clock())
    assert check.ready()
    assert peek.asked == [[0, 2, 3, 4, 5, 6, 7]]
    assert check.ready()
    assert len(peek.asked) == 1


@pytest.mark.parametrize("kind", [CLAIMED, CONNECTED])
def test_a_held_slot_on_another_n_blocks_until_it_is_released(kind: str) -> None:
    """A held slot whose last record claims or connects with another N blocks the
    connection; its clean release ends the wait."""
    peek = FakePeek({0: SlotView("a", record(kind, 2))})
    check = agreement(peek, Clock())
    assert not check.ready()
    assert not check.ready()
    peek.slots[0] = SlotView(None, record(RELEASED, 2, clean=True))
    assert check.ready()


def test_a_dead_holder_on_another_n_blocks_for_the_grace_only() -> None:
    """A slot nobody holds whose last record is a connection on another N blocks for the
    reconnect grace from when it was first seen unheld (its connection may linger at
    Adobe that long), then no more."""
    clock = Clock()
    peek = FakePeek({5: SlotView(None, record(CONNECTED, 2))})
    check = agreement(peek, clock)
    assert not check.ready()
    clock.now += 59.0
    assert not check.ready()
    clock.now += 1.0
    assert check.ready()


def test_an_unclean_release_on_another_n_blocks_for_the_grace_after_it() -> None:
    """An unclean release on another N counts for the grace after its own time."""
    clock = Clock()
    peek = FakePeek({0: SlotView(None, record(RELEASED, 2, at=clock.now - 30.0))})
    check = agreement(peek, clock)
    assert not check.ready()
    clock.now += 30.0
    assert check.ready()


def test_nothing_is_checked_before_the_claim_is_stored() -> None:
    """A claim that could not be stored is retried, and no other slot is looked at
    before it is (claiming first is what keeps two disagreeing holders apart)."""
    peek = FakePeek()
    check = agreement(peek, Clock(), claims=[False, True])
    assert not check.ready()
    assert peek.asked == []
    assert check.ready()


def test_unreadable_slots_mean_not_yet() -> None:
    """When the other slots cannot be read, the holder does not connect yet."""
    peek = FakePeek()
    peek.fail = True
    check = agreement(peek, Clock())
    assert not check.ready()
    peek.fail = False
    assert check.ready()


def test_records_from_before_slots_count_as_one_connection() -> None:
    """An election record without max_connections (written before slots existed) reads as
    N = 1, so a held slot 0 of an old single-connection deployment blocks N = 3."""
    old = Predecessor.from_record({"identity": "x", "kind": CONNECTED, "at": 1.0})
    assert old.max_connections == 1
    check = agreement(FakePeek({0: SlotView("x", old)}), Clock())
    assert not check.ready()


@pytest.mark.parametrize("bad", [0, 9, "2", True, 2.0])
def test_a_record_with_a_bad_max_connections_is_refused(bad: object) -> None:
    """max_connections in an election record must be an integer from 1 to 8."""
    with pytest.raises(ValueError, match="max_connections"):
        Predecessor.from_record(
            {"identity": "x", "kind": CONNECTED, "at": 1.0, "max_connections": bad}
        )
