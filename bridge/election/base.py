"""What the service sees of an election: a ``Term`` of leadership, its ``Predecessor``
(the last record in the election log before it), the ``Fencing`` a publisher sends with
every transaction, and the ``Election`` protocol every backend implements.

Role reporting (state, metrics, one log line per role change) is shared here as well, so
every backend reports the same way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from bridge.cancel import Cancel
from bridge.logs import EventLog
from bridge.observability import Metrics, State

if TYPE_CHECKING:
    from confluent_kafka import TopicPartition

CONNECTED = "connected"
CLAIMED = "claimed"  # the holder is about to connect (see bridge.election.agreement)
RELEASED = "released"
LEADER = "leader"
STANDBY = "standby"


@dataclass(frozen=True)
class Predecessor:
    """The last record in the election log before this term."""

    identity: str
    # CONNECTED (a holder opened its upstream connection) | CLAIMED (it was about to) |
    # RELEASED (graceful release)
    kind: str
    at: float  # unix time of the record
    clean: bool  # for RELEASED: the holder closed its upstream connection cleanly
    # The maxConnections the holder sends; records written before slots existed came from
    # deployments of one connection.
    max_connections: int = 1

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Predecessor:
        """Build from a decoded election record; ``ValueError`` when it is not one."""
        try:
            identity, kind, at = record["identity"], record["kind"], record["at"]
        except KeyError as exc:
            raise ValueError(f"election record without {exc.args[0]!r}") from None
        if not isinstance(identity, str) or not isinstance(kind, str):
            raise ValueError("election record: identity and kind must be strings")
        if isinstance(at, bool) or not isinstance(at, int | float):
            raise ValueError("election record: at must be a number")
        n = record.get("max_connections", 1)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 8:  # Adobe's range
            raise ValueError("election record: max_connections must be an integer from 1 to 8")
        return cls(identity, kind, float(at), bool(record.get("clean", False)), n)


@runtime_checkable
class Fencing(Protocol):
    """What a publisher sends with every transaction so a deposed leader cannot commit.

    ``send_offsets_to_transaction(fencing.offsets(), fencing.group_metadata())``: the
    group coordinator rejects the commit once this term's generation is gone.
    """

    def offsets(self) -> list[TopicPartition]: ...

    def group_metadata(self) -> object: ...

    def wait_renewed(self, stale: object, timeout_s: float) -> bool:
        """After ILLEGAL_GENERATION with ``stale`` metadata: True once the election renewed
        the metadata (the leader kept its partition through a rebalance; retry the
        transaction), False when the term was lost or ``timeout_s`` passed (fenced)."""
        ...


@dataclass(eq=False)
class Term:
    """One period of leadership of this replica; ``lost`` fires when it ends."""

    number: int
    lost: Cancel = field(default_factory=Cancel)
    predecessor: Predecessor | None = None
    fencing: Fencing | None = None
    slot: int = 0  # which of the maxConnections slots this term holds

    @property
    def lost_reason(self) -> str | None:
        """Why the term ended (the first reason given), None while it lasts."""
        return self.lost.reason

    def lose(self, reason: str) -> bool:
        """End the term (first reason wins); True if this call ended it."""
        return self.lost.fire(reason)

    def grace_s(self, reconnect_grace_s: float, *, now: float | None = None) -> float:
        """How long to wait before connecting upstream.

        0 without a predecessor record (fresh deployment) or after a clean release; the
        rest of the grace after an unclean release; the full grace when the last record
        says the holder was connected (it died holding its connection) or is unknown.
        """
        grace = max(0.0, reconnect_grace_s)
        p = self.predecessor
        if p is None:
            return 0.0
        if p.kind == RELEASED:
            if p.clean:
                return 0.0
            elapsed = max(0.0, (time.time() if now is None else now) - p.at)
            return max(0.0, grace - elapsed)
        return grace


@runtime_checkable
class Election(Protocol):
    """Which replica holds the upstream connection."""

    identity: str

    def start(self) -> None: ...

    def wait_for_leadership(self, stop: threading.Event) -> Term | None:
        """Block until this replica leads (the Term) or ``stop`` is set (None)."""
        ...

    def leader(self) -> str | None:
        """Identity of the current leader, if known."""
        ...

    def announce_connected(self) -> None:
        """Leader only: record that the upstream connection is open."""
        ...

    def claim(self) -> bool:
        """Leader only, before its term's first connection: record (and wait until the
        record is stored) that this holder is about to connect with its maxConnections.
        True once stored; False when it could not be (the caller tries again)."""
        ...

    def release(self, *, clean: bool) -> None:
        """Record a graceful release (if still leader) and give up leadership at once."""
        ...

    def close(self) -> None:
        """Leave and stop every thread; idempotent."""
        ...


class RoleReporter:
    """Keeps ``State``, the leader metrics and the log in step with this replica's role."""

    def __init__(self, identity: str, metrics: Metrics, state: State, log: EventLog) -> None:
        self._identity, self._metrics, self._state, self._log = identity, metrics, state, log
        self._lock = threading.Lock()
        self._role: str | None = None
        self._leader: str | None = None
        metrics.leader.set(0)

    @property
    def role(self) -> str | None:
        return self._role

    def leader(self, term: int) -> None:
        self._report(LEADER, self._identity, term)

    def standby(self, leader: str | None, term: int | None = None) -> None:
        self._report(STANDBY, leader, term)

    def seen_leader(self, leader: str | None) -> None:
        """A standby learnt who leads; never overrides this replica's own leadership."""
        with self._lock:
            if self._role == STANDBY and leader not in (self._leader, self._identity):
                self._leader = leader
                self._state.set_role(STANDBY, leader)

    def _report(self, role: str, leader: str | None, term: int | None) -> None:
        with self._lock:
            # Before the no-change return: a leader can begin a new term without a standby
            # report in between.
            self._metrics.election_term.set(term if role == LEADER and term is not None else 0)
            if role == self._role and leader == self._leader:
                return
            changed = role != self._role
            if changed and LEADER in (role, self._role):
                self._metrics.leadership_transitions.inc()
            self._role, self._leader = role, leader
            self._metrics.leader.set(1 if role == LEADER else 0)
            self._state.set_role(role, leader)
            if changed:
                self._log.info("election.role", role=role, leader=leader, term=term)
