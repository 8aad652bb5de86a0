"""Backend ``none``: a single instance that leads at once, with nothing to fence.

There is no election log to say whether the previous process died holding its upstream
connection, yet a crash loop, an OOM kill or a container restart would otherwise connect
at once into a slot Live Stream may still count as taken (KA-16598). ``state_file`` stands
in for the log: while connected the leader keeps writing "connected until T" (wall-clock
time, as monotonic time does not survive the process), and a release writes "released"
with whether the connection was closed cleanly. A new process turns that record into its
first term's ``Predecessor``, so ``Term.grace_s`` applies the same rules as with the Kafka
election. Without a readable record the first term waits the full grace: not knowing is
treated like a predecessor that died connected.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from bridge.config import Settings
from bridge.election.base import CONNECTED, RELEASED, Predecessor, RoleReporter, Term
from bridge.logs import EventLog
from bridge.observability import Metrics, State

LOG = EventLog("bridge.election.none")
# How often a connected leader renews its record, and how far ahead each record reaches.
# The margin covers a heartbeat that runs late (a loaded host, a long GC pause): a process
# killed just before a late renewal must still be inside the "until" it last wrote.
HEARTBEAT_S = 1.0
HORIZON_S = 3.0


class StateFile:
    """The single instance's record of its upstream connection, kept across restarts."""

    def __init__(self, path: str | None, identity: str) -> None:
        self.path = None if path is None else Path(path)
        self.identity = identity
        self._failing = False
        self._last_kind: str | None = None  # renewals of "connected" are not logged

    def predecessor(self) -> Predecessor:
        """The record left by the previous process; "connected" (the full grace) if none."""
        unknown = Predecessor("unknown", CONNECTED, time.time(), False)
        if self.path is None:
            LOG.info("election.state_unknown", reason="no state_file set", grace="full")
            return unknown
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            if doc.get("kind") == CONNECTED:
                # By "until" the holder was gone or had renewed; a record it never renewed
                # means its connection ended no later than that: an unclean end at "until".
                doc = {**doc, "kind": RELEASED, "at": doc.get("until"), "clean": False}
            found = Predecessor.from_record(doc)
        except (OSError, ValueError) as exc:
            reason = "absent" if isinstance(exc, FileNotFoundError) else type(exc).__name__
            LOG.warning("election.state_unknown", path=str(self.path), reason=reason, grace="full")
            return unknown
        LOG.info(
            "election.state_read",
            path=str(self.path),
            identity=found.identity,
            kind=found.kind,
            clean=found.clean,
            age_s=round(time.time() - found.at, 3),
        )
        return found

    def write(self, kind: str, *, clean: bool) -> None:
        """Replace the record; failures are logged once per run of failures, never raised."""
        if self.path is None:
            return
        now = time.time()
        doc = {"identity": self.identity, "kind": kind, "at": now, "clean": clean}
        if kind == CONNECTED:
            doc["until"] = now + HORIZON_S
        scratch = self.path.with_name(f".{self.path.name}.tmp")
        try:
            # Written aside and renamed, so a kill mid-write leaves the previous record
            # whole. No fsync: a killed process leaves the page cache behind, and a node
            # crash takes the pod's volume with it.
            scratch.write_text(json.dumps(doc), encoding="utf-8")
            os.replace(scratch, self.path)
        except OSError as exc:
            if not self._failing:
                LOG.warning("election.state_unwritable", path=str(self.path), error=str(exc))
            self._failing = True
            return
        if self._failing or kind != CONNECTED or self._last_kind != CONNECTED:
            LOG.info("election.state_written", path=str(self.path), kind=kind, clean=clean)
        self._failing, self._last_kind = False, kind


class NoneElection:
    """Always the leader; a term ends only on ``release`` or ``close``."""

    def __init__(self, settings: Settings, metrics: Metrics, state: State) -> None:
        self.identity = settings.election.identity
        self._roles = RoleReporter(self.identity, metrics, state, LOG)
        self._lock = threading.Lock()
        self._term: Term | None = None
        self._terms = 0
        self._closed = False
        self._state = StateFile(settings.election.state_file, self.identity)
        self._beat_stop = threading.Event()
        self._beat: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if not self._closed:
                self._begin()

    def _begin(self) -> Term:
        self._terms += 1
        # Only the first term can inherit a connection from another process; later ones
        # follow a release in this process, and Upstream keeps the grace itself then.
        predecessor = self._state.predecessor() if self._terms == 1 else None
        self._term = Term(self._terms, predecessor=predecessor)
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

    def claim(self) -> bool:
        """Nothing to record: a single instance shares no stream with another replica."""
        with self._lock:
            return self._term is not None and not self._term.lost.is_set()

    def announce_connected(self) -> None:
        """Record the open connection and keep renewing the record until the term ends."""
        with self._lock:
            if self._term is None or self._term.lost.is_set():
                return
            self._state.write(CONNECTED, clean=False)
            if self._beat is None:
                self._beat_stop.clear()
                self._beat = threading.Thread(
                    target=self._heartbeat, name="election-state", daemon=True
                )
                self._beat.start()

    def _heartbeat(self) -> None:
        while not self._beat_stop.wait(HEARTBEAT_S):
            with self._lock:
                if self._beat_stop.is_set():
                    return
                self._state.write(CONNECTED, clean=False)

    def _stop_heartbeat(self) -> bool:
        """Stop renewing; True if this process had announced a connection since the last
        release (only then is there anything of ours to record)."""
        with self._lock:
            beat, self._beat = self._beat, None
            if beat is None:
                return False
            self._beat_stop.set()
        if beat is not threading.current_thread():
            beat.join()
        return True

    def release(self, *, clean: bool) -> None:
        if self._stop_heartbeat():
            with self._lock:
                self._state.write(RELEASED, clean=clean)
        with self._lock:
            self._end("released")

    def close(self) -> None:
        # Closing while a connection was announced and never released: the connection is
        # gone by now (the reader has ended), but whether it closed cleanly is unknown.
        if self._stop_heartbeat():
            with self._lock:
                self._state.write(RELEASED, clean=False)
        with self._lock:
            self._closed = True
            self._end("closed")

    def _end(self, reason: str) -> None:
        term = self._term
        if term is not None and term.lose(reason):
            self._roles.standby(None, term.number)
