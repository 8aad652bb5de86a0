"""Backend ``none``: a single instance that leads at once, with nothing to fence."""

from __future__ import annotations

import threading

from bridge.config import Settings
from bridge.election.base import RoleReporter, Term
from bridge.observability import EventLog, Metrics, State

LOG = EventLog("bridge.election.none")


class NoneElection:
    """Always the leader; a term ends only on ``release`` or ``close``."""

    def __init__(self, settings: Settings, metrics: Metrics, state: State) -> None:
        self.identity = settings.election.identity
        self._roles = RoleReporter(self.identity, metrics, state, LOG)
        self._lock = threading.Lock()
        self._term: Term | None = None
        self._terms = 0
        self._closed = False

    def start(self) -> None:
        with self._lock:
            if not self._closed:
                self._begin()

    def _begin(self) -> Term:
        self._terms += 1
        self._term = Term(self._terms)
        self._roles.leader(self._terms)
        return self._term

    def wait_for_leadership(self, stop: threading.Event) -> Term | None:
        with self._lock:
            if self._closed or stop.is_set():
                return None
            if self._term is None or self._term.lost.is_set():
                return self._begin()  # a released single instance simply leads again
            return self._term

    def leader(self) -> str | None:
        with self._lock:
            live = self._term is not None and not self._term.lost.is_set()
            return self.identity if live else None

    def announce_connected(self) -> None:
        """Nothing to record: there is no one to hand over to."""

    def release(self, *, clean: bool) -> None:
        with self._lock:
            self._end("released")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._end("closed")

    def _end(self, reason: str) -> None:
        term = self._term
        if term is not None and term.lose(reason):
            self._roles.standby(None, term.number)
