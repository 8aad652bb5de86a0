"""``bridge.election.slots``: pure logic over fake per-slot elections (the real backends
run in ``tests/test_slots.py``)."""

from __future__ import annotations

import queue
import threading

import pytest

from bridge.config import LivestreamSettings, Settings
from bridge.election.base import Term
from bridge.election.slots import SlotElection
from bridge.observability import Metrics, State

pytestmark = pytest.mark.timeout(20)


class FakeElection:
    """One slot's election: a test hands it terms to win; records what was called."""

    def __init__(self, settings: Settings) -> None:
        self.identity = settings.election.identity
        self.topic = settings.election.topic
        self.terms: queue.SimpleQueue[Term] = queue.SimpleQueue()
        self.closed = threading.Event()
        self.claims = 0

    def start(self) -> None:
        pass

    def wait_for_leadership(self, stop: threading.Event) -> Term | None:
        while not stop.is_set() and not self.closed.is_set():
            try:
                return self.terms.get(timeout=0.02)
            except queue.Empty:
                continue
        return None

    def leader(self) -> str | None:
        return None

    def announce_connected(self) -> None:
        pass

    def claim(self) -> bool:
        self.claims += 1
        return True

    def release(self, *, clean: bool) -> None:
        pass

    def close(self) -> None:
        self.closed.set()


class Rig:
    """A SlotElection over fakes; ``made`` holds every fake it made, per slot."""

    def __init__(self, slots: int = 3) -> None:
        self.made: dict[int, list[FakeElection]] = {}
        settings = Settings(
            _env_file=None,
            livestream=LivestreamSettings(url="http://127.0.0.1:9/x", max_connections=slots),
            auth={"access_token": "t"},
            kafka={"bootstrap_servers": "127.0.0.1:9"},
        )
        self.state = State(identity="r")
        self.election = SlotElection(settings, Metrics(slots), self.state, self._make)
        self.election.start()

    def _make(self, settings: Settings, _metrics: Metrics, _state: State) -> FakeElection:
        fake = FakeElection(settings)
        slot = int(fake.topic.rsplit("-", 1)[1]) if fake.topic[-2] == "-" else 0
        self.made.setdefault(slot, []).append(fake)
        return fake

    def latest(self, slot: int) -> FakeElection:
        return self.made[slot][-1]

    def wait(self) -> Term | None:
        return self.election.wait_for_leadership(threading.Event())


def test_the_first_slot_won_is_kept_and_the_others_are_left() -> None:
    """A win of slot 2 is the replica's term (slot 2, leader role); the candidates for the
    other slots are closed, and the election is a candidate in no other slot."""
    rig = Rig()
    threading.Timer(0.1, lambda: rig.latest(2).terms.put(Term(7))).start()
    term = rig.wait()
    assert term is not None and term.slot == 2 and term.number == 7
    assert rig.latest(0).closed.wait(5) and rig.latest(1).closed.wait(5)
    assert not rig.latest(2).closed.is_set()
    assert rig.state.role == "leader"
    assert rig.election.claim() and rig.latest(2).claims == 1
    rig.election.close()


def test_a_term_lost_before_it_was_taken_is_contended_for_again() -> None:
    """A slot won and lost before the replica took it stays contended for: its next win
    is the one returned."""
    rig = Rig(slots=2)
    lost = Term(1)
    lost.lose("rebalanced")
    threading.Timer(0.1, lambda: rig.latest(0).terms.put(lost)).start()
    threading.Timer(0.4, lambda: rig.latest(0).terms.put(Term(2))).start()
    term = rig.wait()
    assert term is not None and term.number == 2 and term.slot == 0
    rig.election.close()


def test_after_a_term_ends_every_slot_is_contended_for_anew() -> None:
    """Once its term ends the replica stands by, leaves the held slot's election and is a
    candidate in every slot again (fresh elections)."""
    rig = Rig(slots=2)
    threading.Timer(0.1, lambda: rig.latest(1).terms.put(Term(3))).start()
    first = rig.wait()
    assert first is not None and first.slot == 1
    held = rig.latest(1)
    first.lose("lease taken")
    assert rig.state.role == "standby"
    threading.Timer(0.3, lambda: rig.latest(0).terms.put(Term(4))).start()
    second = rig.wait()
    assert held.closed.is_set()
    assert second is not None and second.slot == 0
    assert len(rig.made[0]) == 2 and len(rig.made[1]) == 2
    rig.election.close()


def test_a_stop_returns_none_and_close_leaves_every_election() -> None:
    """A set stop ends the wait with None; close() closes every candidate."""
    rig = Rig(slots=2)
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    assert rig.election.wait_for_leadership(stop) is None
    rig.election.close()
    assert all(f.closed.is_set() for fakes in rig.made.values() for f in fakes)
