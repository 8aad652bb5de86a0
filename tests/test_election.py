"""Election without a broker: Term.grace_s, the none backend, the factory, role reporting
and the Kafka backend's watchdog and record parsing."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.config import Settings
from bridge.election import make_election
from bridge.election.base import CONNECTED, RELEASED, Predecessor, Term
from bridge.election.kafka import KafkaElection
from bridge.election.kafkagroup import KafkaFencing, Watchdog, assigned_partitions
from bridge.election.none import NoneElection
from bridge.errors import ElectionError
from bridge.observability import Metrics, State
from tests.testutil import wait_until

GRACE = 60.0
NOW = 1_800_000_000.0


def make_settings(bootstrap: str = "127.0.0.1:1", **election: object) -> Settings:
    return Settings(
        _env_file=None,
        livestream={"url": "https://livestream.example.com/api/1/stream/x"},
        auth={"access_token": "token-for-tests"},
        kafka={"bootstrap_servers": bootstrap},
        election={"identity": "replica-a", **election},
    )


def term_after(kind: str | None, *, clean: bool = False, age_s: float = 0.0) -> Term:
    p = None if kind is None else Predecessor("replica-b", kind, NOW - age_s, clean)
    return Term(1, predecessor=p)


# -- Term.grace_s -------------------------------------------------------------------------


def test_grace_is_zero_without_predecessor() -> None:
    """A fresh deployment (no record at all) connects at once."""
    assert term_after(None).grace_s(GRACE, now=NOW) == 0.0


def test_grace_is_zero_after_clean_release() -> None:
    """A holder that closed its connection cleanly needs no grace, however recent."""
    assert term_after(RELEASED, clean=True, age_s=0.0).grace_s(GRACE, now=NOW) == 0.0


def test_grace_after_unclean_release_counts_from_the_record() -> None:
    """An unclean release leaves only what remains of the grace since its record."""
    assert term_after(RELEASED, age_s=15.0).grace_s(GRACE, now=NOW) == pytest.approx(45.0)


def test_grace_after_old_unclean_release_is_zero() -> None:
    """An unclean release older than the grace needs no more waiting."""
    assert term_after(RELEASED, age_s=GRACE + 1).grace_s(GRACE, now=NOW) == 0.0


def test_grace_after_unclean_release_from_the_future_is_full() -> None:
    """Clock skew (a record stamped after now) never yields more than the full grace."""
    assert term_after(RELEASED, age_s=-30.0).grace_s(GRACE, now=NOW) == GRACE


def test_grace_is_full_when_holder_died_connected() -> None:
    """A last record "connected" means the holder died holding its connection: full grace."""
    assert term_after(CONNECTED, age_s=3600.0).grace_s(GRACE, now=NOW) == GRACE


def test_grace_is_full_for_an_unknown_kind() -> None:
    """A record kind this build does not know is treated like "connected"."""
    assert term_after("something-new", age_s=5.0).grace_s(GRACE, now=NOW) == GRACE


def test_grace_uses_wall_clock_by_default() -> None:
    """Without ``now`` the unclean-release grace is measured against time.time()."""
    import time

    p = Predecessor("b", RELEASED, time.time() - 10.0, False)
    assert 49.0 <= Term(1, predecessor=p).grace_s(GRACE) <= 50.0


def test_term_lose_keeps_the_first_reason() -> None:
    """``lose`` sets ``lost`` once and remembers why."""
    term = Term(3)
    assert term.lose("revoked") and not term.lose("closed")
    assert term.lost.is_set() and term.lost_reason == "revoked"


def test_term_lose_runs_lost_subscribers_once_with_the_reason() -> None:
    """What subscribed to ``lost`` (the upstream, the pipeline) runs once, on ``lose``,
    and a backend's plain ``lost.set()`` ends the term the same way."""
    term = Term(4)
    seen: list[str] = []
    term.lost.subscribe(seen.append)
    term.lose("partition lost")
    term.lose("closed")
    assert seen == ["partition lost"]
    other = Term(5)
    other.lost.set()
    assert other.lost.is_set() and other.lost_reason == "stop"


# -- Predecessor records ------------------------------------------------------------------


def test_predecessor_from_record() -> None:
    """A decoded election record becomes a Predecessor; extra fields are ignored."""
    record = {"identity": "a", "kind": RELEASED, "at": 12, "clean": True, "term": 4}
    assert Predecessor.from_record(record) == Predecessor("a", RELEASED, 12.0, True)


@pytest.mark.parametrize(
    "record",
    [{}, {"identity": "a", "kind": "connected"}, {"identity": 1, "kind": "x", "at": 1.0}],
    ids=["empty", "no-at", "bad-identity"],
)
def test_predecessor_rejects_bad_records(record: dict[str, object]) -> None:
    """Something that is not an election record raises ValueError."""
    with pytest.raises(ValueError, match="election record"):
        Predecessor.from_record(record)


# -- backend none -------------------------------------------------------------------------


def test_none_leads_at_once_and_close_ends_the_term() -> None:
    """Backend none leads immediately (no predecessor, no fencing) until close."""
    metrics, state = Metrics(), State()
    election = NoneElection(make_settings(backend="none"), metrics, state)
    election.start()
    term = election.wait_for_leadership(threading.Event())
    assert term is not None and term.fencing is None and not term.lost.is_set()
    assert election.leader() == "replica-a" and state.role == "leader"
    assert metrics.leader._value.get() == 1
    election.announce_connected()
    election.close()
    election.close()
    assert term.lost.is_set() and term.lost_reason == "closed"
    assert election.wait_for_leadership(threading.Event()) is None
    assert state.role == "standby" and metrics.leader._value.get() == 0
    assert metrics.leadership_transitions._value.get() == 2


def test_none_release_ends_the_term_and_leads_again() -> None:
    """Backend none: release ends the term; waiting again yields a new term at once."""
    election = NoneElection(make_settings(backend="none"), Metrics(), State())
    election.start()
    first = election.wait_for_leadership(threading.Event())
    assert first is not None
    election.release(clean=True)
    assert first.lost.is_set() and election.leader() is None
    second = election.wait_for_leadership(threading.Event())
    assert second is not None and second.number == 2 and not second.lost.is_set()
    election.close()


def test_none_without_state_file_waits_the_full_grace() -> None:
    """Without a state file a new single instance cannot know whether its predecessor died
    holding the connection, so its first term waits the full grace; later terms do not."""
    election = NoneElection(make_settings(backend="none"), Metrics(), State())
    election.start()
    first = election.wait_for_leadership(threading.Event())
    assert first is not None and first.grace_s(GRACE) == GRACE
    election.release(clean=True)
    second = election.wait_for_leadership(threading.Event())
    assert second is not None and second.predecessor is None and second.grace_s(GRACE) == 0.0
    election.close()


def test_none_wait_returns_none_when_stopped() -> None:
    """wait_for_leadership returns None once stop is set."""
    election = NoneElection(make_settings(backend="none"), Metrics(), State())
    stop = threading.Event()
    stop.set()
    assert election.wait_for_leadership(stop) is None


# -- factory ------------------------------------------------------------------------------


def test_factory_picks_the_backend() -> None:
    """make_election builds the named backend without starting it."""
    none = make_election(make_settings(backend="none"), Metrics(), State())
    kafka = make_election(make_settings(backend="kafka"), Metrics(), State())
    assert isinstance(none, NoneElection) and isinstance(kafka, KafkaElection)
    assert kafka.identity == "replica-a"
    kafka.close()


def test_factory_without_kubernetes_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backend kubernetes is refused with ElectionError when its module is absent."""
    monkeypatch.setitem(sys.modules, "bridge.election.kubernetes", None)
    with pytest.raises(ElectionError, match="kubernetes is not available"):
        make_election(make_settings(backend="kubernetes"), Metrics(), State())


# -- Kafka backend pieces -----------------------------------------------------------------


def test_watchdog_broker_errors_demote_after_half_a_session() -> None:
    """Broker errors with no answer since demote once they last longer than the limit."""
    dog = Watchdog(5.0)
    dog.reset(100.0)
    dog.broker_error(101.0)
    dog.broker_error(104.0)  # repeats do not move the start
    assert dog.verdict(106.0) is None
    assert dog.verdict(106.5) == "brokers unreachable for 5.5s"


def test_watchdog_contact_clears_broker_errors() -> None:
    """A growing response counter (the coordinator answered) clears earlier errors."""
    dog = Watchdog(5.0)
    dog.reset(100.0)
    dog.stats(100.5, steady=True, coordinator_up=True, rx=10)
    dog.broker_error(101.0)
    dog.stats(102.0, steady=True, coordinator_up=False, rx=11)
    assert dog.down_since is None and dog.verdict(106.9) is None


def test_watchdog_silent_coordinator_demotes_only_when_steady() -> None:
    """No answer while heartbeating demotes; a long join (not steady) does not."""
    dog = Watchdog(5.0)
    dog.reset(100.0)
    dog.stats(100.5, steady=True, coordinator_up=True, rx=10)
    dog.stats(103.0, steady=True, coordinator_up=True, rx=10)
    assert dog.verdict(105.0) is None
    assert dog.verdict(105.5) == "group coordinator silent for 5.5s"
    dog.stats(105.6, steady=False, coordinator_up=True, rx=10)
    assert dog.verdict(109.0) is None


def test_watchdog_rebase_ignores_a_new_consumers_counter() -> None:
    """After rebase the first counter seen is a baseline, not an answer."""
    dog = Watchdog(5.0)
    dog.reset(100.0)
    dog.stats(100.1, steady=True, coordinator_up=True, rx=50)
    dog.rebase()
    dog.stats(106.0, steady=True, coordinator_up=True, rx=2)
    assert dog.verdict(106.0) == "group coordinator silent for 6.0s"


def test_fencing_wait_renewed() -> None:
    """wait_renewed is True once the metadata changed, False on timeout or a lost term."""
    lost = threading.Event()
    fencing = KafkaFencing("election", 7, b"gen-1", lost)
    assert [(tp.topic, tp.partition, tp.offset) for tp in fencing.offsets()] == [("election", 0, 7)]
    assert not fencing.wait_renewed(b"gen-1", 0.05)
    fencing.renew(b"gen-2")
    assert fencing.group_metadata() == b"gen-2" and fencing.wait_renewed(b"gen-1", 0.05)
    lost.set()
    assert not fencing.wait_renewed(b"gen-1", 1.0)


def test_consumer_config_follows_the_design() -> None:
    """Classic protocol, cooperative-sticky, session/5 heartbeats, no static membership."""
    settings = make_settings(session_timeout_ms=3000)
    settings = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"properties": {"group.instance.id": "x"}})
        }
    )
    conf = KafkaElection(settings, Metrics(), State())._consumer_config()
    assert conf["group.protocol"] == "classic"
    assert conf["partition.assignment.strategy"] == "cooperative-sticky"
    assert conf["session.timeout.ms"] == 3000 and conf["heartbeat.interval.ms"] == 600
    assert conf["enable.auto.commit"] is False and conf["isolation.level"] == "read_committed"
    assert "group.instance.id" not in conf and conf["client.id"] == "replica-a"


def test_assigned_partitions_parses_consumer_assignments() -> None:
    """The standby finds the leader from serialized consumer-protocol assignments."""
    raw = b"\x00\x00\x00\x00\x00\x01\x00\x0celx-4986558b\x00\x00\x00\x01\x00\x00\x00\x00"
    assert assigned_partitions(raw + b"\x00\x00\x00\x00") == [("elx-4986558b", 0)]
    two = b"\x00\x01\x00\x00\x00\x01\x00\x01t\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00\x05"
    assert assigned_partitions(two) == [("t", 3), ("t", 5)]
    assert assigned_partitions(b"") == [] and assigned_partitions(raw[:12]) == []


# -- backend none: the state file that carries the grace across restarts -------------------


def none_on(path: Path, identity: str = "replica-a") -> NoneElection:
    settings = make_settings(backend="none", state_file=str(path))
    settings = settings.model_copy(
        update={"election": settings.election.model_copy(update={"identity": identity})}
    )
    election = NoneElection(settings, Metrics(), State())
    election.start()
    return election


def first_term(election: NoneElection) -> Term:
    term = election.wait_for_leadership(threading.Event())
    assert term is not None
    return term


def read_state(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def test_state_connected_then_crash_leaves_the_rest_of_the_grace(tmp_path: Path) -> None:
    """A holder that announced its connection and vanished without release leaves "connected
    until T"; the next instance waits the grace counted from T, never more than the grace."""
    path = tmp_path / "state.json"
    old = none_on(path, "old")
    first_term(old)
    before = time.time()
    old.announce_connected()
    doc = read_state(path)
    assert doc["kind"] == CONNECTED and doc["identity"] == "old" and doc["clean"] is False
    assert doc["until"] > doc["at"] >= before
    old._stop_heartbeat()  # a kill -9: no release, no close, the file stays as it is

    term = first_term(none_on(path, "new"))
    assert term.predecessor == Predecessor("old", RELEASED, doc["until"], False)
    assert term.grace_s(GRACE, now=doc["until"] - 1.0) == GRACE
    assert term.grace_s(GRACE, now=doc["until"] + 15.0) == pytest.approx(GRACE - 15.0)
    assert term.grace_s(GRACE, now=doc["until"] + GRACE + 1) == 0.0


def test_state_heartbeat_moves_until_forward(tmp_path: Path) -> None:
    """While the term lasts after announce_connected, the leader keeps renewing "until"."""
    path = tmp_path / "state.json"
    election = none_on(path)
    first_term(election)
    election.announce_connected()
    first_until = read_state(path)["until"]
    wait_until(lambda: read_state(path)["until"] > first_until, 10, "a heartbeat write")
    election.close()


def test_state_clean_release_lets_the_next_instance_connect_at_once(tmp_path: Path) -> None:
    """A clean release (connection closed with FIN) is recorded; the successor waits 0 s."""
    path = tmp_path / "state.json"
    old = none_on(path, "old")
    first_term(old)
    old.announce_connected()
    old.release(clean=True)
    old.close()
    doc = read_state(path)
    assert (doc["kind"], doc["clean"]) == (RELEASED, True)
    assert first_term(none_on(path, "new")).grace_s(GRACE) == 0.0


def test_state_unclean_release_and_close_count_from_their_time(tmp_path: Path) -> None:
    """An unclean release, or a close while connected, leaves the grace counted from then."""
    for end in ("release", "close"):
        path = tmp_path / f"{end}.json"
        old = none_on(path, "old")
        first_term(old)
        old.announce_connected()
        before = time.time()
        if end == "release":
            old.release(clean=False)
        old.close()
        doc = read_state(path)
        assert (doc["kind"], doc["clean"]) == (RELEASED, False), end
        assert before <= doc["at"] <= time.time(), end
        grace = first_term(none_on(path, "new")).grace_s(GRACE, now=doc["at"] + 20.0)
        assert grace == pytest.approx(GRACE - 20.0), end


def test_state_untouched_when_this_instance_never_connected(tmp_path: Path) -> None:
    """An instance stopped while still waiting out the grace leaves its predecessor's record
    in place: it never held a connection, the predecessor's ghost may still hold one."""
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"identity": "old", "kind": CONNECTED, "at": NOW, "until": NOW}))
    waiting = none_on(path, "waiting")
    first_term(waiting)
    waiting.release(clean=True)
    waiting.close()
    assert read_state(path)["identity"] == "old"
    assert read_state(path)["kind"] == CONNECTED


@pytest.mark.parametrize("content", [None, "", "{not json", '{"kind": "connected"}', "[1]"])
def test_state_absent_or_unreadable_means_full_grace(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str | None
) -> None:
    """No file, or one that is not a state record: the full grace (the safe side), one line."""
    path = tmp_path / "state.json"
    if content is not None:
        path.write_text(content)
    with caplog.at_level(logging.INFO, logger="bridge.election.none"):
        term = first_term(none_on(path))
    assert term.grace_s(GRACE) == GRACE
    unknown = [r for r in caplog.records if r.getMessage() == "election.state_unknown"]
    assert len(unknown) == 1


def test_state_unwritable_is_logged_once_and_never_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A state path that cannot be written (its directory is missing) logs one warning, the
    instance goes on leading, and the next one waits the full grace."""
    path = tmp_path / "missing-dir" / "state.json"
    with caplog.at_level(logging.INFO, logger="bridge.election.none"):
        election = none_on(path)
        term = first_term(election)
        election.announce_connected()
        election.announce_connected()
        election.release(clean=True)
        election.close()
    assert term.lost_reason == "released"
    failed = [r for r in caplog.records if r.getMessage() == "election.state_unwritable"]
    assert len(failed) == 1 and failed[0].levelno == logging.WARNING
    assert not path.exists()
    assert first_term(none_on(path)).grace_s(GRACE) == GRACE
