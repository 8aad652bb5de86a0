"""Every connection sends the same ``maxConnections``: the check a slot holder passes
before its term's first connection.

Live Stream answers 409 when clients disagree on ``maxConnections``, and replicas do
disagree while N is being changed (a rolling update runs old and new replicas side by
side). So before it first connects, a holder

1. *claims*: writes ``claimed`` with its N to its own slot's election log and waits until
   the record is stored;
2. *looks* at every other slot's log (0..7, whatever its own N) and at who holds that slot;
3. connects only if no other slot may have a connection with another N. A slot may have
   one when its last record is ``claimed`` or ``connected`` with another N and the slot is
   held, or was held until less than the reconnect grace ago (the dead holder's connection
   can outlive it that long at Adobe). A clean ``released`` never counts; an unclean one
   counts for the grace after it.

Otherwise it tries again at the next connection attempt (every second or so), holding its
slot. Claiming before looking makes two holders with different N that check at the same
moment see at least one of the other's claims, so at most one of them connects; both may
wait, and the wait ends when the replicas of the other N are gone, as at the end of any
rolling update. With one N everywhere the check passes at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from bridge.config import MAX_SLOTS
from bridge.election.base import CLAIMED, CONNECTED, RELEASED, Predecessor
from bridge.logs import EventLog

LOG = EventLog("bridge.election.agreement")
LIVE_KINDS = (CLAIMED, CONNECTED)


@dataclass(frozen=True)
class SlotView:
    """What another slot shows: who holds it now, and the last record of its log."""

    holder: str | None  # None: nobody holds the slot now
    last: Predecessor | None  # None: nothing was ever recorded


class Peek(Protocol):
    """Read-only views of slots' elections (one per backend)."""

    def views(self, slots: Iterable[int]) -> dict[int, SlotView]:
        """The slots among ``slots`` that exist; raises when they cannot be read now."""
        ...

    def close(self) -> None: ...


class Agreement:
    """One term's check (see the module docstring); ``ready`` is cheap once it passed."""

    def __init__(
        self,
        *,
        slot: int,
        max_connections: int,
        grace_s: float,
        claim: Callable[[], bool],
        peek: Peek,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.slot, self.max_connections, self.grace_s = slot, max_connections, grace_s
        self._claim, self._peek, self._clock, self._wall = claim, peek, clock, wall
        self._claimed = self._agreed = False
        self._unheld_since: dict[int, float] = {}
        self._told: tuple[tuple[int, int], ...] | None = None

    def ready(self) -> bool:
        """True once this holder may connect; False: not yet (ask again later)."""
        if self._agreed:
            return True
        if not self._claimed:
            self._claimed = self._claim()
            if not self._claimed:
                LOG.warning("election.claim_failed", slot=self.slot)
                return False
        others = [s for s in range(MAX_SLOTS) if s != self.slot]
        try:
            views = self._peek.views(others)
        except Exception as exc:
            LOG.warning("election.slots_unreadable", slot=self.slot, error=str(exc) or repr(exc))
            return False
        conflicts = tuple(
            (s, view.last.max_connections)
            for s, view in sorted(views.items())
            if view.last is not None and self._may_be_connected(s, view)
        )
        if conflicts:
            if conflicts != self._told:
                self._told = conflicts
                LOG.warning(
                    "election.slots_disagree",
                    slot=self.slot,
                    max_connections=self.max_connections,
                    others={f"slot {s}": n for s, n in conflicts},
                )
            return False
        self._agreed = True
        LOG.info("election.slots_agree", slot=self.slot, max_connections=self.max_connections)
        return True

    def _may_be_connected(self, slot: int, view: SlotView) -> bool:
        last = view.last
        if last is None or last.max_connections == self.max_connections:
            return False
        if last.kind == RELEASED:
            return not last.clean and self._wall() - last.at < self.grace_s
        if last.kind not in LIVE_KINDS:
            return False
        if view.holder is not None:
            self._unheld_since.pop(slot, None)
            return True
        since = self._unheld_since.setdefault(slot, self._clock())
        return self._clock() - since < self.grace_s
