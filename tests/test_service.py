"""End to end, one replica: the simulator upstream, the real broker downstream, a real process."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.configload import load_settings
from bridge.errors import KafkaSetupError, PublishError
from bridge.service import Bridge
from livestream_sim import Simulator, SimulatorConfig
from tests.harness import (
    BridgeProc,
    bridge_env,
    flowing,
    hit_ids,
    verdict,
    wait_for_all,
)
from tests.kafkautil import read_all
from tests.testutil import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SECRET = "CLIENT-SECRET-e2e-7f3a9c"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """A simulator emitting a fixed number of hits quickly, with a distinctive secret.

    Its replay on resume covers everything it emits, standing for a Live Stream whose replay
    covers what a killed bridge held in flight (an open transaction and the reader queue,
    which a loaded machine can let grow to seconds of data); a loss here is the bridge's.
    """
    cfg = SimulatorConfig(
        rate=3000.0,
        total_hits=6000,
        client_secret=SECRET,
        malformed_every=500,
        empty_every=50,
        ghost_s=2.0,
        replay_on_resume=6000,
    )
    with Simulator(cfg) as s:
        yield s


def single(sim: Simulator, kafka_bootstrap: str, tmp_path: Path, **extra: str) -> BridgeProc:
    env = bridge_env(
        sim,
        kafka_bootstrap,
        client_secret=SECRET,
        BRIDGE_ELECTION__BACKEND="none",
        **extra,
    )
    return BridgeProc("solo", env, tmp_path)


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name} {labels}")


def test_every_hit_lands_once_and_metrics_agree(
    sim: Simulator, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """All emitted hits are committed exactly once, malformed lines go to the DLQ, and
    /metrics counts what the simulator sent; SIGTERM then exits 0."""
    bridge = single(sim, kafka_bootstrap, tmp_path).start()
    try:
        topic = bridge.env["BRIDGE_KAFKA__TOPIC"]
        v = wait_for_all(kafka_bootstrap, topic, sim.emitted_hit_ids, timeout=120)
        assert (v.lost, v.duplicated, v.unexpected) == ([], [], []), v.line()
        dlq = read_all(kafka_bootstrap, f"{topic}-dlq", timeout=30)
        assert dlq, "malformed lines must reach the dead-letter topic"
        assert all(dict(r.headers or [])["reason"] for r in dlq)

        def counted() -> bool:
            text = bridge.get("/metrics")[1].decode()
            return metric(text, "livestream_bridge_records_published_total") == v.emitted

        wait_until(counted, 30, "records_published_total to equal the emitted count")
        text = bridge.get("/metrics")[1].decode()
        dead = sum(
            metric(text, "livestream_bridge_records_dead_lettered_total", reason=r)
            for r in ("not_json", "not_object", "oversized", "missing_hit_id")
        )
        assert dead == len(dlq)
        assert metric(text, "livestream_bridge_upstream_connected") == 1
        assert bridge.status() is not None
    finally:
        code = bridge.stop()
    assert code == 0, bridge.logs()[-3000:]
    assert SECRET not in bridge.logs()


def test_values_are_byte_identical_and_keyed_by_visitor(
    sim: Simulator, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Each value is the simulator's record byte for byte; keys and headers follow the rules."""
    bridge = single(sim, kafka_bootstrap, tmp_path).start()
    try:
        topic = bridge.env["BRIDGE_KAFKA__TOPIC"]
        wait_for_all(kafka_bootstrap, topic, sim.emitted_hit_ids, timeout=120)
        records = read_all(kafka_bootstrap, topic, timeout=30)
    finally:
        bridge.stop()
    sent = sim.emitted_records()
    import orjson

    for rec in records:
        headers = {name: value or b"" for name, value in rec.headers}
        hit = headers["hit-id"].decode()
        assert rec.value == sent[hit], hit
        doc = orjson.loads(rec.value)
        if "visIdHigh" in doc and "visIdLow" in doc:
            assert rec.key == f"{doc['visIdHigh']}:{doc['visIdLow']}".encode()
        assert int(headers["received-at"]) > 1_600_000_000_000
    assert len(hit_ids(records)) == len(set(hit_ids(records)))


def test_restart_mid_stream_loses_and_duplicates_nothing(
    sim: Simulator, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """SIGTERM mid-stream, then a new process: the seeded window drops the replays, nothing lost."""
    bridge = single(sim, kafka_bootstrap, tmp_path).start()
    topic = bridge.env["BRIDGE_KAFKA__TOPIC"]
    flowing(sim, 1500)
    assert bridge.stop() == 0
    bridge.start()
    try:
        v = wait_for_all(kafka_bootstrap, topic, sim.emitted_hit_ids, timeout=120)
    finally:
        bridge.stop()
    assert (v.lost, v.duplicated, v.unexpected) == ([], [], []), v.line()


def test_kill_9_restart_loses_and_duplicates_nothing(
    sim: Simulator, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """kill -9 mid-stream and restart: the open transaction is aborted, Live Stream's replay
    fills the gap, the seeded window drops what was already committed."""
    bridge = single(sim, kafka_bootstrap, tmp_path).start()
    topic = bridge.env["BRIDGE_KAFKA__TOPIC"]
    flowing(sim, 1500)
    bridge.signal(signal.SIGKILL)
    bridge.wait(30)
    bridge.start()
    try:
        v = wait_for_all(kafka_bootstrap, topic, sim.emitted_hit_ids, timeout=150)
    finally:
        bridge.stop()
    assert (v.lost, v.duplicated, v.unexpected) == ([], [], []), v.line()


# -- in-process: one Bridge with faults injected at the seams of its own logic ----------


def in_process(
    sim: Simulator, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, **extra: str
) -> tuple[Bridge, threading.Event, threading.Thread, list[BaseException]]:
    """A Bridge (backend none) built from the same environment a process gets, run on a
    thread; what ``run`` raises lands in the returned list."""
    env = bridge_env(
        sim,
        kafka_bootstrap,
        client_secret=SECRET,
        BRIDGE_ELECTION__BACKEND="none",
        BRIDGE_HTTP__PORT="0",
        BRIDGE_HTTP__HOST="127.0.0.1",
        **extra,
    )
    for name, value in env.items():
        if name.startswith("BRIDGE_"):
            monkeypatch.setenv(name, value)
    bridge = Bridge(load_settings(env_file=None))
    stop = threading.Event()
    raised: list[BaseException] = []

    def run() -> None:
        try:
            bridge.run(stop)
        except BaseException as exc:  # handed to the test
            raised.append(exc)

    return bridge, stop, threading.Thread(target=run, daemon=True), raised


def test_failed_commit_is_an_outage_not_a_crash(
    sim: Simulator, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PublishError from maybe_commit (no producer could be made, say) is handled like a
    refused publish: the leader keeps running and every hit still lands exactly once."""
    bridge, stop, thread, raised = in_process(sim, kafka_bootstrap, monkeypatch)
    real = bridge.publisher.maybe_commit
    calls = {"n": 0}

    def flaky() -> None:
        calls["n"] += 1
        if 20 <= calls["n"] < 40:
            raise PublishError("injected: cannot create a producer")
        real()

    monkeypatch.setattr(bridge.publisher, "maybe_commit", flaky)
    with running_until_all_landed(bridge, stop, thread, raised, sim=sim, bootstrap=kafka_bootstrap):
        assert calls["n"] >= 40, "the injected failures must have happened"


@contextlib.contextmanager
def running_until_all_landed(
    bridge: Bridge,
    stop: threading.Event,
    thread: threading.Thread,
    raised: list[BaseException],
    *,
    sim: Simulator,
    bootstrap: str,
) -> Iterator[None]:
    """Run ``bridge`` until every emitted hit is committed exactly once, with nothing
    raised; then the body's checks; then stop it cleanly."""
    thread.start()
    try:
        topic = bridge.settings.kafka.topic
        v = wait_for_all(
            bootstrap,
            topic,
            sim.emitted_hit_ids,
            timeout=120,
            gone=lambda: repr(raised) if raised or not thread.is_alive() else None,
        )
        assert raised == []
        assert (v.lost, v.duplicated, v.unexpected) == ([], [], []), v.line()
        yield
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
    assert raised == []


def test_a_leader_deposed_during_a_kafka_outage_stands_by_and_leads_again(
    sim: Simulator, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deposed while Kafka refuses the records in hand (the retry gives up once halted): the
    term ends with its uncommitted records, the process does not; it leads again and every
    hit still lands exactly once (the simulator resends what was in flight)."""
    bridge, stop, thread, raised = in_process(sim, kafka_bootstrap, monkeypatch)
    real = bridge.publisher.publish_many
    calls = {"n": 0, "deposed": 0}

    def refusing(records: list[bytes], received_at: float, start: int = 0) -> None:
        calls["n"] += 1
        if calls["n"] >= 3 and not calls["deposed"]:
            term = bridge._term
            if calls["n"] >= 6 and term is not None:
                calls["deposed"] = term.number
                term.lose("injected: deposed during the outage")
            exc = PublishError("injected: Kafka refuses")
            exc.resume_at = start
            raise exc
        real(records, received_at, start)

    monkeypatch.setattr(bridge.publisher, "publish_many", refusing)
    with running_until_all_landed(bridge, stop, thread, raised, sim=sim, bootstrap=kafka_bootstrap):
        assert calls["deposed"] == 1, "the injected deposition must have happened"
        assert bridge.metrics.election_term._value.get() == 2


def test_kafka_setup_error_at_begin_ends_the_run_and_releases(
    sim: Simulator, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KafkaSetupError (missing ACLs) from begin is not retried forever: run() raises it
    promptly (the CLI's exit 2) after giving the leadership up, and never connects upstream."""
    bridge, stop, thread, raised = in_process(sim, kafka_bootstrap, monkeypatch)
    released: list[bool] = []
    real_release = bridge.election.release

    def begin(fencing: object) -> None:
        raise KafkaSetupError("Write on TransactionalId 'x' denied (injected)")

    def release(*, clean: bool) -> None:
        released.append(clean)
        real_release(clean=clean)

    monkeypatch.setattr(bridge.publisher, "begin", begin)
    monkeypatch.setattr(bridge.election, "release", release)
    thread.start()
    thread.join(15)
    stop.set()
    assert not thread.is_alive(), "a setup error must end run(), not be retried"
    assert len(raised) == 1 and isinstance(raised[0], KafkaSetupError)
    assert released, "leadership must be given up"


def _black_hole() -> tuple[socket.socket, list[socket.socket]]:
    """A listener that accepts connections and never answers (a request left pending)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                accepted.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    return server, accepted


def test_sigterm_ends_a_request_waiting_for_headers(
    sim: Simulator, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """SIGTERM while the stream request waits for response headers (no socket to close yet
    in the old code) ends the process within seconds, not at the 300 s stall timeout."""
    server, accepted = _black_hole()
    port = server.getsockname()[1]
    try:
        bridge = single(
            sim,
            kafka_bootstrap,
            tmp_path,
            BRIDGE_LIVESTREAM__URL=f"http://127.0.0.1:{port}/api/1/stream/demo",
            BRIDGE_LIVESTREAM__RECONNECT_GRACE_S="0",
            BRIDGE_LIVESTREAM__STALL_TIMEOUT_S="300",
        ).start()
        wait_until(lambda: accepted, 60, "the bridge to send its stream request")
        started = time.monotonic()
        bridge.signal(signal.SIGTERM)
        try:
            code = bridge.wait(30)
        except subprocess.TimeoutExpired:
            bridge.kill()
            raise AssertionError("SIGTERM did not end a pending request in 30 s") from None
        took = time.monotonic() - started
    finally:
        server.close()
        for conn in accepted:
            conn.close()
    assert code == 0, bridge.logs()[-3000:]
    assert took < 10, f"SIGTERM took {took:.1f}s with a request pending"


_HIT = b'{"hitIdHigh":"7","hitIdLow":"%d","visIdHigh":"1","visIdLow":"%d"}\r\n'


class _TalksPastOurFin:
    """A Live Stream stand-in that keeps writing records for ``after_fin_s`` after the
    client's FIN before it sends its own, as real load balancers do; it counts every
    record it wrote."""

    def __init__(self, after_fin_s: float = 1.0) -> None:
        self.after_fin_s = after_fin_s
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sent: list[str] = []
        self.fin_seen = threading.Event()
        self.finished = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self.server.accept()
            with conn:
                self._stream(conn)
        self.finished.set()

    def _stream(self, conn: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        gz = zlib.compressobj(6, zlib.DEFLATED, 31)
        conn.setblocking(False)
        seq, fin_at = 0, None
        while fin_at is None or time.monotonic() - fin_at < self.after_fin_s:
            records = b""
            for _ in range(20):
                seq += 1
                records += _HIT % (seq, seq % 13)
                self.sent.append(f"7:{seq}")
            data = gz.compress(records) + gz.flush(zlib.Z_SYNC_FLUSH)
            conn.setblocking(True)
            conn.sendall(b"%x\r\n%s\r\n" % (len(data), data))
            conn.setblocking(False)
            if fin_at is None:
                with contextlib.suppress(BlockingIOError):
                    if conn.recv(1) == b"":
                        fin_at = time.monotonic()
                        self.fin_seen.set()
            time.sleep(0.01)  # a steady stream, not a flood
        conn.setblocking(True)
        tail = gz.flush()
        conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(tail), tail))
        conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.server.close()


def test_records_written_after_our_fin_are_published(
    sim: Simulator, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """On SIGTERM the bridge half-closes; every record the server still writes until its own
    FIN is published (Live Stream counts them as delivered), and the process exits 0."""
    upstream = _TalksPastOurFin(after_fin_s=1.0)
    try:
        bridge = single(
            sim,
            kafka_bootstrap,
            tmp_path,
            BRIDGE_LIVESTREAM__URL=f"http://127.0.0.1:{upstream.port}/api/1/stream/demo",
            BRIDGE_LIVESTREAM__RECONNECT_GRACE_S="0",
        ).start()
        topic = bridge.env["BRIDGE_KAFKA__TOPIC"]
        wait_until(lambda: len(upstream.sent) > 500, 60, "records to flow")
        bridge.signal(signal.SIGTERM)
        assert upstream.fin_seen.wait(30), "the bridge must half-close on SIGTERM"
        assert upstream.finished.wait(30)
        code = bridge.wait(60)
    finally:
        upstream.close()
    assert code == 0, bridge.logs()[-3000:]
    v = verdict(upstream.sent, read_all(kafka_bootstrap, topic, timeout=60))
    assert v.emitted > 500
    assert (v.lost, v.duplicated, v.unexpected) == ([], [], []), v.line()


def test_reader_queue_bytes_rise_while_the_pump_is_held_then_drain(
    sim: Simulator, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reader_queue_bytes (and /status) show compressed bytes waiting while the pump cannot
    publish, and fall back to 0 once every hit is published."""
    bridge, stop, thread, raised = in_process(sim, kafka_bootstrap, monkeypatch)
    gate = threading.Event()
    real = bridge.publisher.publish_many

    def held(records: list[bytes], received_at: float, start: int = 0) -> None:
        gate.wait(20)  # the pump is stuck until the test has seen the queue grow
        real(records, received_at, start)

    def queued() -> float:
        return bridge.metrics.registry.get_sample_value("livestream_bridge_reader_queue_bytes") or 0

    monkeypatch.setattr(bridge.publisher, "publish_many", held)
    thread.start()
    try:
        try:  # a bridge that ended early, or never streamed, says why in the failure
            wait_until(lambda: queued() > 0 or raised or not thread.is_alive(), 120)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; /status: {bridge.state.snapshot()}") from None
        assert raised == [] and thread.is_alive(), raised
        assert bridge.state.snapshot()["reader_queue_bytes"] > 0
        gate.set()
        topic = bridge.settings.kafka.topic
        v = wait_for_all(kafka_bootstrap, topic, sim.emitted_hit_ids, timeout=120)
        assert (v.lost, v.duplicated, v.unexpected) == ([], [], []), v.line()
        wait_until(lambda: queued() == 0, 30, "the reader queue to drain")
    finally:
        gate.set()
        stop.set()
        thread.join(60)
    assert raised == []
