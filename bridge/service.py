"""The bridge as one running service: election drives the pipeline.

    standby -> elected -> init_transactions (fences the old writer) -> seed dedupe
            -> wait what is left of the reconnect grace -> connect -> pump
            -> lost leadership / fenced: stop reading, close upstream, abort -> standby
            -> SIGTERM: stop reading, publish what was read, commit, release -> exit 0

This module is the lifecycle only; the data path of a term (reader thread, queue,
decoding, publishing) is ``bridge.pipeline``. Cancellation flows through ``Cancel``
scopes: the process's stop fires each term's ``halt``, and so does the end of the term;
the upstream and the pipeline subscribe to it, so nothing polls to relay the news.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from bridge.auth import make_token_provider
from bridge.cancel import Cancel
from bridge.config import Settings
from bridge.election import Agreement, make_election, make_peek
from bridge.election.base import Election, Term
from bridge.errors import FencedError, KafkaSetupError, PublishError
from bridge.httpclient import token_client
from bridge.livestream import Upstream
from bridge.logs import EventLog, SlotField
from bridge.observability import HttpEndpoint, Metrics, State
from bridge.pipeline import Pipeline
from bridge.publish import Publisher
from bridge.secrets import Secrets


class Bridge:
    """One replica: HTTP endpoint, election, and the pipeline while leading."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        secrets: Secrets | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics(settings.livestream.max_connections)
        # The CLI hands in the process's one Secrets (the log redactor holds it too), so a
        # token fetched here is scrubbed from every log line from then on.
        self.secrets = Secrets() if secrets is None else secrets
        self.state = State(
            identity=settings.election.identity,
            max_connections=settings.livestream.max_connections,
        )
        self.log = EventLog("bridge.service")
        # The token endpoint's client; Live Stream's is the Upstream's own (a fresh
        # connection per attempt, never shared).
        self.http: httpx.Client = token_client()
        self.tokens = make_token_provider(
            settings.auth, self.http, self.metrics, secrets=self.secrets
        )
        self.upstream = Upstream(
            settings.livestream, settings.auth, self.tokens, self.metrics, secrets=self.secrets
        )
        self.publisher = Publisher(settings.kafka, settings.publish, self.metrics)
        self._publisher_slot = 0
        self.election: Election = make_election(settings, self.metrics, self.state)
        self._peek = make_peek(settings)
        self.state.counters = lambda: self.publisher.counters
        self.endpoint = HttpEndpoint(
            settings.http.host,
            settings.http.port,
            self.metrics,
            self.state,
            self._ready,
            secrets=self.secrets,
        )
        self._ready_cache: tuple[float, bool] = (0.0, False)
        self._log_slot = SlotField()
        self._pipeline: Pipeline | None = None
        self._term: Term | None = None
        self.metrics.reader_queue_bytes.set_function(self._queued_bytes)
        self.state.details = self._details

    def _queued_bytes(self) -> float:
        pipeline = self._pipeline
        return float(pipeline.queued_bytes) if pipeline is not None else 0.0

    def _details(self) -> dict[str, Any]:
        """What /status adds to State's own keys (read from the HTTP thread)."""
        term, newest = self._term, self.metrics.committed_hits.newest
        out: dict[str, Any] = {"reader_queue_bytes": int(self._queued_bytes())}
        # The metric's finer state (waiting_grace, backing_off, waiting_slots, ...).
        out["upstream_state"] = self.upstream.reported_state
        if term is not None:
            out["term"] = term.number
        if newest is not None:
            out["newest_committed_hit_at"] = newest
        return out

    def _ready(self) -> bool:
        # Ready means "can do its job if elected": settings loaded and Kafka answering. Tying
        # readiness to leadership would keep a rolling update from ever finding a ready pod.
        checked_at, ok = self._ready_cache
        if time.monotonic() - checked_at > 2.0:
            ok = self.publisher.reachable(timeout=2.0)
            self._ready_cache = (time.monotonic(), ok)
        return ok

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; raises what the CLI turns into exit codes.

        ``stop`` is a plain ``threading.Event`` because a signal handler sets it, and
        a handler must not run ``Cancel`` callbacks (see ``bridge.cancel``). One thread
        waits on it (blocked, not polling) and fires the process's scope; a daemon, so a
        ``run`` that raised before any stop leaves nothing that outlives the process.
        """
        stopping = Cancel()
        threading.Thread(
            target=_fire_on, args=(stop, stopping), name="stop-waiter", daemon=True
        ).start()
        self.endpoint.start()
        if self.settings.livestream.max_connections > 1:
            self._log_slot.install()
        self.log.info(
            "bridge.start",
            identity=self.state.identity,
            port=self.endpoint.port,
            slots=self.settings.livestream.max_connections,
        )
        try:
            self.publisher.ensure_topics()
            self.state.ready = True
            self.election.start()
            while not stop.is_set():
                self._standby()
                term = self.election.wait_for_leadership(stop)
                if term is None:
                    break
                self._lead(term, stop, stopping)
        finally:
            self.election.close()
            self._peek.close()
            self.endpoint.stop()
            self.upstream.close()
            self.http.close()
            self.log.info("bridge.stop", identity=self.state.identity)
            self._log_slot.remove()

    def _lead(self, term: Term, stop: threading.Event, stopping: Cancel) -> None:
        # ``halt``: stop reading. Fired by the process's stop, by the end of the term, by a
        # reader that failed, and by this method once the pump is done.
        halt = stopping.child()
        leave = term.lost.subscribe(lambda _reason: halt.set("leadership ended"))
        try:
            self._term = term
            self._hold_slot(term.slot)
            self._lead_term(term, stop, halt)
        finally:
            halt.set("leadership ended")  # already fired on every path but a bug's
            leave()
            self._pipeline = self._term = None  # what a deposed term left queued is dropped
            self._hold_slot(None)

    def _hold_slot(self, slot: int | None) -> None:
        """Report ``slot`` (None: none) and, for a slot other than the last one held,
        write with that slot's transactional id: each slot fences its own writers."""
        self.state.slot, self._log_slot.slot = slot, slot
        self.metrics.slot.set(-1 if slot is None else slot)
        if slot is None:
            return
        self.metrics.bind_slot(slot)
        if slot != self._publisher_slot:
            kafka = self.settings.for_slot(slot).kafka
            self.publisher = Publisher(kafka, self.settings.publish, self.metrics)
            self._publisher_slot = slot

    def _lead_term(self, term: Term, stop: threading.Event, halt: Cancel) -> None:
        elected_at = time.monotonic()
        try:
            begun = self._begin(term, halt)
        except KafkaSetupError:
            # Missing ACLs or the like: retrying cannot fix it. Let a standby (configured
            # right, perhaps) have the slot, and let the CLI exit 2.
            halt.set("kafka setup failed")
            self.election.release(clean=self.upstream.last_close_clean)
            raise
        if not begun:
            halt.set("fenced at start")
            self.publisher.abort()  # nothing to abandon; this replica stops writing
            return
        grace = term.grace_s(self.settings.livestream.reconnect_grace_s)
        first_delay = max(0.0, grace - (time.monotonic() - elected_at))
        self.log.info("bridge.leading", term=term.number, first_connect_in_s=round(first_delay, 3))
        pipeline = self._pipeline = Pipeline(
            self.settings,
            self.upstream,
            self.publisher,
            halt=halt,
            deposed=term.lost,
            metrics=self.metrics,
            state=self.state,
            log=self.log,
            announce=self.election.announce_connected,
            agree=Agreement(
                slot=term.slot,
                max_connections=self.settings.livestream.max_connections,
                grace_s=self.settings.livestream.reconnect_grace_s,
                claim=self.election.claim,
                peek=self._peek,
            ).ready,
        )
        pipeline.start(first_delay)
        fenced, pumped = False, False
        try:
            pipeline.pump()
            pumped = True
        except FencedError as exc:
            fenced = pumped = True
            self.log.warning("bridge.fenced", term=term.number, error=str(exc))
        except PublishError as exc:
            # Deposed while Kafka refused the records in hand: they were never committed and
            # go with the term (as a dead leader's would); a replica that is no longer
            # leader stands by. Any other PublishError ends the process.
            if not term.lost.is_set():
                raise
            pumped = True
            self.log.warning("bridge.deposed_in_outage", term=term.number, error=str(exc))
        finally:
            reason = "shutdown" if stop.is_set() else "leadership ended"
            halt.set(reason)
            pipeline.cut(reason)
            if not pumped or term.lost.is_set() or fenced:
                pipeline.join_reader()
                self.publisher.abort()
            if not pumped:  # KafkaSetupError (missing ACLs) or a bug: the process ends
                self.election.release(clean=self.upstream.last_close_clean)
        # Shutdown, or an upstream error that ends the process: either way we still lead, so
        # finish the work in hand. Only a deposed writer must not write another byte.
        if not term.lost.is_set() and not fenced:
            # Everything already read is published before we let go, including what the
            # server sends until it answers our FIN: Live Stream counts it as delivered, so
            # dropping it here would lose it.
            pipeline.drain()
            self.publisher.close(self.settings.publish.shutdown_timeout_s)
            self.election.release(clean=self.upstream.last_close_clean)
        elif fenced and not term.lost.is_set():
            self._yield_term(term)
        self._standby()
        if pipeline.failure is not None:
            raise pipeline.failure

    def _standby(self) -> None:
        self.state.upstream = "standby"
        self.metrics.set_upstream_state("standby")

    def _yield_term(self, term: Term) -> None:
        """Kafka says another writer owns the topic while our election still says we lead
        (a woken zombie whose election thread has not caught up yet). Leading again on this
        term would run init_transactions and fence the rightful leader back, so give the
        election time to notice, and if it does not, give the leadership up."""
        e = self.settings.election
        settle_s = (
            0.0 if e.backend == "none" else max(e.session_timeout_ms / 1000, e.lease_duration_s)
        )
        if not term.lost.wait(settle_s):
            self.log.warning("bridge.yield_leadership", term=term.number, reason="fenced")
            self.election.release(clean=self.upstream.last_close_clean)

    def _begin(self, term: Term, halt: Cancel) -> bool:
        """init_transactions (fencing the old writer) and seed; retried while Kafka is down."""
        while not halt.is_set():
            try:
                self.publisher.begin(term.fencing)
                return True
            except FencedError as exc:
                self.log.warning("bridge.fenced_at_start", term=term.number, error=str(exc))
                return False
            except KafkaSetupError:
                raise
            except PublishError as exc:
                self.log.warning("bridge.kafka_unavailable", term=term.number, error=str(exc))
                halt.wait(1.0)
        return False


def _fire_on(stop: threading.Event, stopping: Cancel) -> None:
    """The stop waiter: fires ``stopping`` from an ordinary thread once ``stop`` is set."""
    stop.wait()
    stopping.set("shutdown")
