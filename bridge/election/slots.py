"""``maxConnections`` = N: N slots, one election per slot, at most one held per replica.

Slot i is an ordinary election of the configured backend on the slot's own resources
(``Settings.for_slot``: slot 0 keeps the configured names, slot i >= 1 appends ``-i``). So
every slot keeps each rule one connection has: its own election log and reconnect grace,
its own transactional id, its own fencing.

A replica without a slot is a candidate in every slot's election; the first it wins is its
slot, and it leaves the other elections at once, so it never holds two (one process, one
connection, one core). If it wins a second before it could leave (two holders died
together), it leaves that one without writing a record, as a crash would: the slot's next
holder then reads the previous holder's last record and waits its grace, which is the safe
reading. When its term ends the replica becomes a candidate in every slot again.

The per-slot elections report to a private ``State`` and ``Metrics`` (their heartbeats go
to the replica's ``State`` under a per-slot name, so /healthz still sees a stuck election
thread); this class reports the replica's one role.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from bridge.config import Settings
from bridge.election.base import Election, RoleReporter, Term
from bridge.logs import EventLog
from bridge.observability import Metrics, State

LOG = EventLog("bridge.election.slots")
POLL_S = 0.1  # how soon a set stop is noticed while waiting for any slot
Factory = Callable[[Settings, Metrics, State], Election]


class _SlotState(State):
    """What a slot's election sees as ``State``: its heartbeats reach the replica's State
    under a per-slot name; its role reports stay here (they describe one slot only)."""

    def __init__(self, replica: State, slot: int) -> None:
        super().__init__(identity=replica.identity)
        self._replica, self._suffix = replica, f"-slot-{slot}"

    def beat(self, loop: str, allowed_s: float) -> None:
        self._replica.beat(loop + self._suffix, allowed_s)

    def forget(self, loop: str) -> None:
        self._replica.forget(loop + self._suffix)


class SlotElection:
    """Holds at most one of ``max_connections`` slots (see the module docstring)."""

    def __init__(self, settings: Settings, metrics: Metrics, state: State, make: Factory) -> None:
        self.identity = settings.election.identity
        self.slots = settings.livestream.max_connections
        self._settings, self._make, self._state = settings, make, state
        self._roles = RoleReporter(self.identity, metrics, state, LOG)
        self._lock = threading.Lock()  # guards the three fields below
        self._candidates: dict[int, tuple[Election, _SlotState]] = {}
        self._held: tuple[int, Election, Term] | None = None
        self._closed = False
        self._leaving: list[threading.Thread] = []

    # -- what the service calls -----------------------------------------------------------

    def start(self) -> None:
        self._roles.standby(None)

    def wait_for_leadership(self, stop: threading.Event) -> Term | None:
        self._let_go_of_held()
        self._open_candidates()
        with self._lock:
            candidates = dict(self._candidates)
        won: queue.SimpleQueue[tuple[int, Term | None, BaseException | None]]
        won = queue.SimpleQueue()
        enough = threading.Event()
        for slot, (election, _) in candidates.items():
            threading.Thread(
                target=_wait_one,
                args=(slot, election, enough, won),
                name=f"slot-{slot}-candidate",
                daemon=True,
            ).start()
        try:
            while not stop.is_set():
                try:
                    slot, term, error = won.get(timeout=POLL_S)
                except queue.Empty:
                    self._report_seen(candidates)
                    continue
                if error is not None:
                    raise error
                if term is not None and not term.lost.is_set():
                    return self._take(slot, term)
            return None
        finally:
            enough.set()

    def leader(self) -> str | None:
        with self._lock:
            if self._held is not None and not self._held[2].lost.is_set():
                return self.identity
            candidates = list(self._candidates.values())
        for election, _ in candidates:
            if (name := election.leader()) is not None and name != self.identity:
                return name
        return None

    def announce_connected(self) -> None:
        if (held := self._held) is not None:
            held[1].announce_connected()

    def claim(self) -> bool:
        held = self._held
        return held is not None and held[1].claim()

    def release(self, *, clean: bool) -> None:
        if (held := self._held) is not None:
            held[1].release(clean=clean)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            held, self._held = self._held, None
            candidates, self._candidates = self._candidates, {}
        for election, _ in candidates.values():
            election.close()
        if held is not None:
            held[1].close()
        for thread in self._leaving:
            thread.join(timeout=30.0)

    # -- inside -----------------------------------------------------------------------------

    def _open_candidates(self) -> None:
        for slot in range(self.slots):
            with self._lock:
                if self._closed or slot in self._candidates:
                    continue
            view = _SlotState(self._state, slot)
            election = self._make(self._settings.for_slot(slot), Metrics(), view)
            election.start()
            with self._lock:
                self._candidates[slot] = (election, view)

    def _take(self, slot: int, term: Term) -> Term:
        """Keep ``slot``; leave every other slot's election (in the background, so the
        term starts now, not after up to seven group leaves)."""
        term.slot = slot
        with self._lock:
            mine = self._candidates.pop(slot)[0]
            others, self._candidates = list(self._candidates.values()), {}
            self._held = (slot, mine, term)
        thread = threading.Thread(
            target=_close_all, args=([e for e, _ in others],), name="slot-leave", daemon=True
        )
        self._leaving = [t for t in self._leaving if t.is_alive()] + [thread]
        thread.start()
        term.lost.subscribe(lambda _reason: self._roles.standby(None, term.number))
        self._roles.leader(term.number)
        LOG.info("election.slot_taken", slot=slot, slots=self.slots, term=term.number)
        return term

    def _let_go_of_held(self) -> None:
        """A slot whose term has ended is left, then contended for again like any other
        (its election may still be a member of the slot's group or hold its Lease)."""
        with self._lock:
            held, self._held = self._held, None
        if held is not None:
            held[1].close()
            LOG.info("election.slot_left", slot=held[0], term=held[2].number)
        self._roles.standby(None)

    def _report_seen(self, candidates: dict[int, tuple[Election, _SlotState]]) -> None:
        # A standby names a slot holder it saw (slot 0's first), as a single election does.
        for _, (_, view) in sorted(candidates.items()):
            if view.leader_identity not in (None, self.identity):
                self._roles.seen_leader(view.leader_identity)
                return


def _wait_one(
    slot: int,
    election: Election,
    enough: threading.Event,
    won: queue.SimpleQueue[tuple[int, Term | None, BaseException | None]],
) -> None:
    try:
        while not enough.is_set():
            if (term := election.wait_for_leadership(enough)) is None:
                return
            won.put((slot, term, None))
            # Taken (then ``enough`` is set), or lost before it was: then this slot is
            # contended for again, and a later win must reach the caller too.
            while not enough.is_set() and not term.lost.wait(POLL_S):
                pass
    except BaseException as exc:  # handed to the waiting caller, which raises it
        won.put((slot, None, exc))


def _close_all(elections: list[Election]) -> None:
    for election in elections:
        election.close()
