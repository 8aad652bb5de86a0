"""Backend ``kubernetes``: one ``coordination.k8s.io/v1`` Lease, client-go's leaderelection
rules, over a thin synchronous httpx client.

* Acquire when ``holderIdentity`` is empty, or when the record has not changed for its
  ``leaseDurationSeconds`` by OUR monotonic clock since we saw it change (never our wall
  clock against another pod's timestamps). Writes carry ``metadata.resourceVersion``; a 409
  means someone wrote first, so one candidate wins. ``leaseTransitions`` +1 per term = number.
* Renew every ``retry_period_s``; with no good renewal for ``renew_deadline_s`` (monotonic,
  from the start of the last good write) the term is lost at once, before any standby can
  see the Lease expire. ``release`` empties the holder with ``leaseDurationSeconds=1`` (the
  standby takes over on its next poll; we sit out one lease duration); ``close`` writes
  nothing, like a crash.
* The last "connected"/"released" event, with its term, is the annotation
  ``livestream-bridge/last-event``; the next leader reads it into ``Term.predecessor``. A
  holder that expired without an event of its own term counts as connected (unknown).
* Fencing: ``Term.fencing`` is None. Kafka fences through the shared transactional.id: the
  new leader's ``init_transactions`` fences the old producer.

Where the server and credentials come from, and the Lease calls themselves (401/403 named
as what to grant), are ``bridge.election.kubeapi``.
"""

from __future__ import annotations

import copy
import json
import math
import random
import threading
import time

import httpx

from bridge.config import Settings
from bridge.election.base import CLAIMED, CONNECTED, RELEASED, Predecessor, RoleReporter, Term
from bridge.election.kubeapi import SA_DIR, Json, LeaseApi, micro_time
from bridge.errors import ElectionError
from bridge.logs import EventLog
from bridge.observability import Metrics, State

LOG = EventLog("bridge.election.kubernetes")
LAST_EVENT = "livestream-bridge/last-event"
_LOST = "lost"  # a write found the Lease held by someone else, or gone


def last_event(lease: Json) -> tuple[Json | None, Predecessor | None]:
    """The Lease's last-event annotation: the record as written and the event it names
    (both None when absent or unreadable: a hand-edited annotation must not stop the
    election)."""
    raw = ((lease.get("metadata") or {}).get("annotations") or {}).get(LAST_EVENT)
    try:
        record = json.loads(raw) if raw else None
        if isinstance(record, dict):
            return record, Predecessor.from_record(record)
    except ValueError:
        pass
    return None, None


class KubernetesElection:
    """Leader election through a Kubernetes Lease (see the module docstring)."""

    sa_dir = SA_DIR  # the service-account mount; tests point it elsewhere

    def __init__(self, settings: Settings, metrics: Metrics, state: State) -> None:
        self._cfg = cfg = settings.election
        self.identity = cfg.identity
        self._max_connections = settings.livestream.max_connections
        self.namespace = cfg.lease_namespace or ""
        self._roles = RoleReporter(self.identity, metrics, state, LOG)
        self._state = state
        self._duration = math.ceil(cfg.lease_duration_s)
        # one request must end well inside the renew deadline
        self._timeout = min(cfg.renew_deadline_s / 2, max(2 * cfg.retry_period_s, 1.0))
        self._api: LeaseApi | None = None
        self._lock = threading.Lock()  # guards the five fields below
        self._record: Json | None = None  # the Lease as last read or written
        self._observed: tuple[str, float] = ("", 0.0)  # (resourceVersion, monotonic seen)
        self._term: Term | None = None
        self._pending: Json | None = None  # an event for the renewer to write
        self._stored = threading.Event()  # the last pending event was written
        self._holdoff_until = 0.0
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._renewer: threading.Thread | None = None

    # --- Election ----------------------------------------------------------------

    def start(self) -> None:
        self._api = api = LeaseApi(self._cfg, self.identity, self._timeout, self.sa_dir)
        self.namespace, server = api.namespace, api.server
        try:
            api.check_access()
            resp = api.get()
        except httpx.HTTPError as exc:
            raise ElectionError(f"Kubernetes API {server} unreachable: {exc!r}") from exc
        if resp.status_code == 200:
            self._observe(resp.json())
        elif resp.status_code != 404:
            raise ElectionError(f"reading Lease {self._where()}: HTTP {resp.status_code}")
        LOG.info("election.kubernetes.start", lease=self._where(), server=server)
        self._roles.standby(self.leader())

    def wait_for_leadership(self, stop: threading.Event) -> Term | None:
        with self._lock:
            if self._term is not None and not self._term.lost.is_set():
                return self._term
        while not stop.is_set() and not self._closed.is_set():
            if time.monotonic() >= self._holdoff_until:
                try:
                    term = self._try_acquire()
                except httpx.HTTPError as exc:
                    LOG.warning("election.kubernetes.api_error", error=repr(exc))
                    term = None
                if term is not None:
                    return term
            # jitter keeps candidates from polling in lockstep
            until = time.monotonic() + self._cfg.retry_period_s * random.uniform(1.0, 1.2)  # noqa: S311
            while (left := until - time.monotonic()) > 0 and not self._closed.is_set():
                if stop.wait(min(left, 0.05)):
                    break
        return None

    def leader(self) -> str | None:
        with self._lock:
            if self._term is not None and not self._term.lost.is_set():
                return self.identity
            holder = ((self._record or {}).get("spec") or {}).get("holderIdentity")
        # our own name in a record we no longer renew is stale, not an answer
        return holder if holder and holder != self.identity else None

    def announce_connected(self) -> None:
        with self._lock:
            if self._term is None or self._term.lost.is_set():
                return
            self._pending = self._event(CONNECTED, False, self._term.number)
        self._wake.set()  # the renewer writes it at once; the caller never blocks on the API

    def claim(self) -> bool:
        with self._lock:
            if self._term is None or self._term.lost.is_set():
                return False
            term, self._pending = self._term, self._event(CLAIMED, False, self._term.number)
            self._stored.clear()
        self._wake.set()  # the renewer writes it at once; this caller waits for the write
        return self._stored.wait(self._cfg.renew_deadline_s) and not term.lost.is_set()

    def release(self, *, clean: bool) -> None:
        term = self._stop_renewer()
        if term is None or term.lost.is_set():
            return
        self._holdoff_until = time.monotonic() + self._cfg.lease_duration_s
        event = self._event(RELEASED, clean, term.number)
        for _ in range(3):  # a 409 from our own late renewal is worth another try
            if self._write("", 1, event) in (True, _LOST):
                break
        self._end(term, "released")

    def close(self) -> None:
        """Stop renewing without writing (a crash, as far as the Lease can tell); idempotent."""
        self._closed.set()
        term = self._stop_renewer()
        if term is not None:
            self._end(term, "closed")
        if self._api is not None:
            self._api.close()

    # --- acquiring ---------------------------------------------------------------

    def _try_acquire(self) -> Term | None:
        began = time.monotonic()  # our deadline counts from before the winning write
        api = self._lease_api()
        resp = api.get()
        if resp.status_code == 404:
            made = api.create(self._spec(1))
            if made.status_code == 201:
                return self._won(made.json(), None, began)
            if made.status_code != 409:  # 409: another candidate created it first
                LOG.warning("election.kubernetes.status", verb="create", status=made.status_code)
            return None
        if resp.status_code != 200:
            LOG.warning("election.kubernetes.status", verb="get", status=resp.status_code)
            return None
        lease = resp.json()
        seen_at = self._observe(lease)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or self._duration)
        if holder and holder != self.identity and time.monotonic() < seen_at + duration:
            return None
        number = int(spec.get("leaseTransitions") or 0)
        predecessor = self._predecessor(lease, holder, number)
        lease["spec"] = self._spec(number + 1)
        put = api.update(lease)
        if put.status_code == 200:
            return self._won(put.json(), predecessor, began)
        if put.status_code != 409:  # 409: someone wrote first; read again next round
            LOG.warning("election.kubernetes.status", verb="update", status=put.status_code)
        return None

    def _won(self, lease: Json, predecessor: Predecessor | None, began: float) -> Term:
        term = Term(int(lease["spec"]["leaseTransitions"]), predecessor=predecessor)
        with self._lock:
            self._term, self._pending = term, None
        self._observe(lease)
        self._wake.clear()
        self._renewer = threading.Thread(
            target=self._renew_loop, args=(term, began), name="lease-renew", daemon=True
        )
        self._renewer.start()
        self._roles.leader(term.number)
        LOG.info(
            "election.kubernetes.elected",
            term=term.number,
            lease=self._where(),
            predecessor=predecessor and f"{predecessor.identity}:{predecessor.kind}",
        )
        return term

    @staticmethod
    def _predecessor(lease: Json, holder: str, number: int) -> Predecessor | None:
        record, event = last_event(lease)
        if not holder:  # released: the release wrote its event in the same update
            return event
        if event and record and record.get("term") == number and event.identity == holder:
            return event
        # the holder expired without a word of its own term: it may have connected
        return Predecessor(holder, CONNECTED, time.time(), False)

    # --- leading -----------------------------------------------------------------

    def _renew_loop(self, term: Term, last_ok: float) -> None:
        retry, deadline = self._cfg.retry_period_s, self._cfg.renew_deadline_s
        last_try = last_ok
        while not self._closed.is_set():
            self._state.beat("lease-renew", deadline + 5 * retry)
            with self._lock:
                pending = self._pending is not None
            if not pending:
                self._wake.wait(max(0.0, last_try + retry - time.monotonic()))
                self._wake.clear()
            with self._lock:
                if self._term is not term:
                    return
            last_try = time.monotonic()
            left = deadline - (last_try - last_ok)
            result = self._write(self.identity, self._duration, timeout=left) if left > 0 else False
            if result is True:
                last_ok = last_try
            elif result == _LOST or time.monotonic() - last_ok >= deadline:
                self._state.forget("lease-renew")  # before the term ends: a new one may beat
                self._end(term, "lease taken" if result == _LOST else "renew deadline passed")
                return

    def _write(
        self, holder: str, duration: int, event: Json | None = None, timeout: float | None = None
    ) -> bool | str:
        """Renew (or release) with our last known resourceVersion: True when written, _LOST
        when the Lease is no longer ours, False when it could not be written this time."""
        with self._lock:
            lease, pending = copy.deepcopy(self._record), self._pending
        spec = (lease or {}).get("spec") or {}
        if lease is None or spec.get("holderIdentity") != self.identity:
            return _LOST
        spec.update(holderIdentity=holder or None, leaseDurationSeconds=duration)
        spec["renewTime"] = micro_time(time.time())
        if event or pending:
            notes = lease.setdefault("metadata", {}).setdefault("annotations", {})
            notes[LAST_EVENT] = json.dumps(event or pending, separators=(",", ":"))
        try:
            api = self._lease_api()
            resp = api.update(lease, timeout=timeout)
            if resp.status_code == 409:  # someone else wrote: whose is it now?
                fresh = api.get(timeout=timeout)
                if fresh.status_code == 200:
                    self._observe(fresh.json())
                    mine = (fresh.json().get("spec") or {}).get("holderIdentity") == self.identity
                    return False if mine else _LOST
                return _LOST if fresh.status_code == 404 else False
        except (httpx.HTTPError, ElectionError) as exc:  # ElectionError: 403, RBAC revoked
            LOG.warning("election.kubernetes.renew_failed", error=str(exc) or repr(exc))
            return False
        if resp.status_code != 200:
            LOG.warning("election.kubernetes.renew_failed", status=resp.status_code)
            return _LOST if resp.status_code == 404 else False
        self._observe(resp.json())
        with self._lock:
            if self._pending is pending:
                self._pending = None
                self._stored.set()
        return True

    def _end(self, term: Term, reason: str) -> None:
        with self._lock:
            if self._term is term:
                self._term = None
        if term.lose(reason):
            LOG.info("election.kubernetes.term_ended", term=term.number, reason=reason)
            self._roles.standby(self.leader(), term.number)

    def _stop_renewer(self) -> Term | None:
        with self._lock:
            term, self._term = self._term, None
        self._wake.set()
        renewer, self._renewer = self._renewer, None
        if renewer is not None and renewer is not threading.current_thread():
            renewer.join()
        self._state.forget("lease-renew")
        return term

    # --- helpers -----------------------------------------------------------------

    def _lease_api(self) -> LeaseApi:
        if self._api is None:
            raise ElectionError("election not started")
        return self._api

    def _observe(self, lease: Json) -> float:
        """Remember the Lease; returns when (monotonic) we first saw this version of it."""
        rv = (lease.get("metadata") or {}).get("resourceVersion", "")
        with self._lock:
            if rv != self._observed[0]:  # the record changed: its holder was alive just now
                self._observed = (rv, time.monotonic())
            self._record, seen_at, leading = lease, self._observed[1], self._term is not None
        if not leading:
            self._roles.seen_leader(self.leader())
        return seen_at

    def _spec(self, transitions: int) -> Json:
        now = micro_time(time.time())
        spec = dict(holderIdentity=self.identity, acquireTime=now, renewTime=now)
        return {**spec, "leaseDurationSeconds": self._duration, "leaseTransitions": transitions}

    def _event(self, kind: str, clean: bool, term: int) -> Json:
        event = dict(identity=self.identity, kind=kind, at=time.time(), clean=clean, term=term)
        return {**event, "max_connections": self._max_connections}

    def _where(self) -> str:
        return f"{self.namespace}/{self._cfg.lease_name}"
