"""Run real bridge processes against the simulator and the real broker, and judge the topic.

Used by the end-to-end, failover and fault tests: each starts ``livestream-bridge run`` as a
subprocess (so kill -9, SIGSTOP and SIGTERM are real), talks to it only over its HTTP
endpoint, and holds the topic's committed contents against what the simulator emitted.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livestream_sim import Simulator, SimulatorConfig
from tests.kafkautil import Record, read_all
from tests.testutil import free_port, wait_until


def bridge_env(
    sim: Simulator,
    bootstrap: str,
    *,
    client_id: str = "sim-client",
    client_secret: str = "sim-secret",
    **extra: str,
) -> dict[str, str]:
    """Environment for a replica of a new deployment fed by ``sim``: its own name, hence its
    own topic ``hits-<name>``, election and transactional id. Replicas of one deployment
    share one such environment."""
    deployment = deployment_name()
    topic, stream_url, token_url = f"hits-{deployment}", sim.stream_url, sim.token_url
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        {
            "BRIDGE_LIVESTREAM__URL": stream_url,
            "BRIDGE_LIVESTREAM__RECONNECT_GRACE_S": "1",
            "BRIDGE_LIVESTREAM__BACKOFF_CAP_S": "4",
            "BRIDGE_AUTH__TOKEN_URL": token_url,
            "BRIDGE_AUTH__CLIENT_ID": client_id,
            "BRIDGE_AUTH__CLIENT_SECRET": client_secret,
            "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "BRIDGE_KAFKA__TOPIC": topic,
            "BRIDGE_KAFKA__DLQ_TOPIC": f"{topic}-dlq",
            "BRIDGE_KAFKA__PARTITIONS": "3",
            "BRIDGE_KAFKA__TRANSACTIONAL_ID": f"txn-{deployment}",
            "BRIDGE_ELECTION__GROUP_ID": f"election-{deployment}",
            "BRIDGE_ELECTION__TOPIC": f"election-{deployment}",
            "BRIDGE_ELECTION__SESSION_TIMEOUT_MS": "6000",
            "BRIDGE_LOG__FORMAT": "json",
            "BRIDGE_LOG__LEVEL": "INFO",
            "BRIDGE_SECRETS_DIR": "/nonexistent",
        }
    )
    env.update(extra)
    return env


@dataclass
class BridgeProc:
    """One ``livestream-bridge run`` subprocess."""

    name: str
    env: dict[str, str]
    log_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0
    host: str = "127.0.0.1"  # where its HTTP endpoint listens (a namespace's address)
    wrap: list[str] = field(default_factory=list)  # e.g. ip netns exec NS

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.{self.runs}.log"

    def start(self) -> BridgeProc:
        self.runs += 1
        env = {
            **self.env,
            "BRIDGE_HTTP__PORT": str(self.port),
            "BRIDGE_HTTP__HOST": self.host,
            "BRIDGE_ELECTION__IDENTITY": f"{self.name}-{self.runs}",
            # A replica that does not stop in time dumps every thread's stack into its log
            # (stop() sends SIGABRT before SIGKILL): where it hung is the evidence.
            "PYTHONFAULTHANDLER": "1",
        }
        out = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*self.wrap, sys.executable, "-m", "bridge.cli", "--env-file", "/nonexistent", "run"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        return self

    def status(self) -> dict[str, Any] | None:
        try:
            url = f"http://{self.host}:{self.port}/status"
            with urllib.request.urlopen(url, timeout=2) as answer:
                data: dict[str, Any] = json.loads(answer.read())
                return data
        except (OSError, ValueError):
            return None

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.port}{path}", timeout=3) as a:
                return a.status, a.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def role(self) -> str | None:
        st = self.status()
        return None if st is None else str(st["role"])

    def streaming(self) -> bool:
        st = self.status()
        return bool(st and st["role"] == "leader" and st["upstream"] == "streaming")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(30)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 40) -> int | None:
        """SIGTERM and wait; if it does not exit in time, SIGABRT (its faulthandler writes
        every thread's stack to its log), then SIGKILL, and the test fails."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            self.proc.kill()
            self.proc.wait(10)
        raise AssertionError(
            f"{self.name} did not stop within {timeout}s (thread stacks in {self.log_path})"
        )

    def logs(self) -> str:
        return "".join(
            (self.log_dir / f"{self.name}.{n}.log").read_text(errors="replace")
            for n in range(1, self.runs + 1)
        )


def hit_ids(records: Iterable[Record]) -> list[str]:
    out = []
    for rec in records:
        hit_id = dict(rec.headers or [])["hit-id"]
        assert hit_id is not None, rec
        out.append(hit_id.decode())
    return out


@dataclass
class Verdict:
    """The topic held against the simulator: what a fault scenario reports."""

    emitted: int
    committed: int
    lost: list[str]
    duplicated: list[str]
    unexpected: list[str]

    def line(self) -> str:
        return (
            f"emitted={self.emitted} committed={self.committed} lost={len(self.lost)} "
            f"duplicated={len(self.duplicated)} unexpected={len(self.unexpected)}"
        )


def verdict(emitted: list[str], records: list[Record]) -> Verdict:
    counts = Counter(hit_ids(records))
    emitted_set = set(emitted)
    return Verdict(
        emitted=len(emitted),
        committed=sum(counts.values()),
        lost=[h for h in emitted if h not in counts],
        duplicated=[h for h, n in counts.items() if n > 1],
        unexpected=[h for h in counts if h not in emitted_set],
    )


def wait_for_all(
    bootstrap: str,
    topic: str,
    emitted: Callable[[], list[str]],
    timeout: float,
    gone: Callable[[], str | None] = lambda: None,
) -> Verdict:
    """Poll the committed topic until it holds every emitted hit (or time out), then judge.
    ``gone``: why the bridge can no longer get there (it stopped), or None; checked first."""
    last: list[Verdict] = []
    stopped: list[str] = []

    def complete() -> bool:
        why = gone()
        if why is not None:
            stopped.append(why)
            raise AssertionError(why)
        try:
            records = read_all(bootstrap, topic, timeout=60)
        except AssertionError:  # the bridge has not created the topic yet
            return False
        v = verdict(emitted(), records)
        last[:] = [v]
        return not v.lost and v.emitted > 0

    try:
        wait_until(complete, timeout, "every emitted hit to be committed", step=1.0)
    except AssertionError:
        seen = last[0].line() if last else "?"
        if stopped:
            raise AssertionError(f"the bridge stopped ({stopped[0]}); topic: {seen}") from None
        raise AssertionError(f"topic incomplete: {seen}") from None
    return last[0]


def flowing(sim: Simulator, more_than: int) -> None:
    """Wait (up to 60 s) until ``sim`` has fully written more than ``more_than`` hits."""
    wait_until(lambda: len(sim.emitted_hit_ids()) > more_than, 60, f"{more_than} hits to flow")


def deployment_name() -> str:
    return uuid.uuid4().hex[:10]


# -- additions for the fault, secure and secrets tests ------------------------------------


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of sample ``name`` with ``labels`` in Prometheus text ``text`` (0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


ENDPOINTS = ("/metrics", "/status", "/healthz", "/readyz")


def scrape(proc: BridgeProc) -> dict[str, bytes]:
    """Every HTTP endpoint's answer body (empty when the process does not answer)."""
    out: dict[str, bytes] = {}
    for path in ENDPOINTS:
        try:
            out[path] = proc.get(path)[1]
        except OSError:
            out[path] = b""
    return out


def wait_streaming(
    procs: Iterable[BridgeProc], timeout: float, since: float
) -> tuple[BridgeProc, float]:
    """The replica streaming first and the seconds from ``since`` (monotonic) until then."""
    group = list(procs)
    lead: BridgeProc = wait_until(
        lambda: next((p for p in group if p.streaming()), None), timeout, "a replica to stream"
    )
    return lead, time.monotonic() - since


def log_events(proc: BridgeProc, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of every run of ``proc`` whose event is ``event``."""
    out = []
    for line in proc.logs().splitlines():
        if f'"{event}"' not in line:
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("event") == event:
            out.append(doc)
    return out


def takeovers(procs: Iterable[BridgeProc]) -> list[tuple[float, str]]:
    """(unix time, identity) of every ``election.role`` -> leader line, in time order."""
    found = [
        (float(doc["ts"]), str(doc.get("leader")))
        for proc in procs
        for doc in log_events(proc, "election.role")
        if doc.get("role") == "leader"
    ]
    return sorted(found)


# -- zombie-visible: who committed what, read from the broker's own log segments -----------
#
# A *writer* is one producer epoch of the deployment's transactional.id: every term starts
# with a new producer, whose init_transactions bumps the epoch (and a fenced or rebuilt
# producer never writes again under its old epoch). A writer is *deposed* at the earlier of
#   (a) the first batch or transaction marker of the same producer id with a higher epoch,
#       in any partition of the topics examined (Kafka's own fencing point: the successor's
#       init_transactions writes the abort markers of the old transaction with it), and
#   (b) the first leadership takeover logged by the replicas (election.role -> leader)
#       after the writer's first write (the election's fencing point: from then on the old
#       leader's offsets commit must fail), when the caller passes takeovers.
# A record is *zombie-visible* when it is in a committed transaction whose COMMIT marker
# was written after its writer was deposed: a read_committed consumer sees data a deposed
# leader wrote. Epoch and producer id are not exposed by the consumer API, so the batch
# headers are read from the segment files, which requires the broker to share this
# machine's file system (scripts/kafka-local); elsewhere the measure is None.

_BATCH = struct.Struct(">qiibIhiqqqhii")  # record batch v2 header, 61 bytes
_ATTR_TXN, _ATTR_CONTROL = 0x10, 0x20


@dataclass(frozen=True)
class Batch:
    topic: str
    partition: int
    first: int
    last: int
    timestamp: int  # max timestamp, ms
    producer_id: int
    epoch: int
    count: int
    transactional: bool
    control: int | None  # 0 ABORT, 1 COMMIT for a control batch, else None


@dataclass
class Zombies:
    """The zombie-visible measure of some topics (see above)."""

    records: int
    committed_transactions: int
    epochs: list[int]
    detail: list[str]

    def line(self) -> str:
        return (
            f"zombie_visible={self.records} (committed transactions "
            f"{self.committed_transactions}, producer epochs {self.epochs})"
        )


def broker_log_dir(bootstrap: str) -> Path | None:
    """The broker's log.dirs if it is a local directory (a single-node broker), else None."""
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    try:
        md = admin.list_topics(timeout=10)
        if len(md.brokers) != 1:
            return None
        res = ConfigResource(ResourceType.BROKER, str(next(iter(md.brokers))))
        entries = admin.describe_configs([res], request_timeout=10)[res].result(timeout=10)
    except Exception:
        return None
    entry = entries.get("log.dirs") or entries.get("log.dir")
    value = getattr(entry, "value", None)
    if not value or "," in value:
        return None
    path = Path(value)
    return path if path.is_dir() else None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def _control_type(data: bytes, start: int) -> int | None:
    """The type (0 ABORT, 1 COMMIT) of the control record starting at ``start``."""
    try:
        pos = _varint(data, start)[1]  # record length
        pos += 1  # attributes
        pos = _varint(data, pos)[1]  # timestamp delta
        pos = _varint(data, pos)[1]  # offset delta
        key_len, pos = _varint(data, pos)
        if key_len < 4:
            return None
        return int(struct.unpack_from(">h", data, pos + 2)[0])
    except (IndexError, struct.error):
        return None


def segment_batches(log_dir: Path, topic: str) -> list[Batch]:
    """Every complete record batch of ``topic`` in the broker's segment files."""
    out: list[Batch] = []
    prefix = f"{topic}-"
    for part_dir in sorted(log_dir.glob(f"{topic}-*")):
        suffix = part_dir.name[len(prefix) :]
        if not suffix.isdigit():
            continue  # another topic that shares the prefix
        partition = int(suffix)
        for segment in sorted(part_dir.glob("*.log")):
            data = segment.read_bytes()
            pos = 0
            while pos + _BATCH.size <= len(data):
                (
                    first,
                    length,
                    _ple,
                    magic,
                    _crc,
                    attrs,
                    delta,
                    _bts,
                    max_ts,
                    pid,
                    epoch,
                    _seq,
                    count,
                ) = _BATCH.unpack_from(data, pos)
                end = pos + 12 + length
                if length <= 0 or end > len(data) or magic != 2:
                    break  # the tail still being written
                control = _control_type(data, pos + _BATCH.size) if attrs & _ATTR_CONTROL else None
                out.append(
                    Batch(
                        topic,
                        partition,
                        first,
                        first + delta,
                        max_ts,
                        pid,
                        epoch,
                        count,
                        bool(attrs & _ATTR_TXN),
                        control,
                    )
                )
                pos = end
    return out


def zombie_visible(
    bootstrap: str,
    topics: Iterable[str],
    takeovers_at: Iterable[tuple[float, str]] = (),
    *,
    log_dir: Path | None = None,
) -> Zombies | None:
    """Records committed after their writer was deposed (see above); None if unmeasurable.

    ``log_dir``: the log directory of one in-sync replica of a cluster (a follower's
    batches are the leader's, byte for byte); by default a single broker's own."""
    log_dir = log_dir or broker_log_dir(bootstrap)
    if log_dir is None:
        return None
    batches = [b for t in topics for b in segment_batches(log_dir, t)]
    first_seen: dict[tuple[int, int], int] = {}  # (pid, epoch) -> first timestamp ms
    for b in batches:
        key = (b.producer_id, b.epoch)
        first_seen[key] = min(first_seen.get(key, b.timestamp), b.timestamp)
    takeover_ms = sorted(int(t * 1000) for t, _ in takeovers_at)

    def deposed_at(pid: int, epoch: int) -> float:
        later = [ts for (p, e), ts in first_seen.items() if p == pid and e > epoch]
        born = first_seen[(pid, epoch)]
        after = [t for t in takeover_ms if t > born]
        return float(min([*later, *after[:1]], default=float("inf")))

    zombies, committed, detail = 0, 0, []
    by_part: dict[tuple[str, int], list[Batch]] = {}
    for b in batches:
        if b.transactional:
            by_part.setdefault((b.topic, b.partition), []).append(b)
    for part_batches in by_part.values():
        open_txn: dict[int, list[Batch]] = {}
        for b in sorted(part_batches, key=lambda x: x.first):
            if b.control is None:
                open_txn.setdefault(b.producer_id, []).append(b)
                continue
            data = open_txn.pop(b.producer_id, [])
            if b.control != 1 or not data:
                continue
            committed += 1
            for d in data:
                deposed = deposed_at(d.producer_id, d.epoch)
                if b.timestamp > deposed:
                    zombies += d.count
                    detail.append(
                        f"{d.topic}-{d.partition}@{d.first}-{d.last} epoch {d.epoch} committed at "
                        f"{b.timestamp} > deposed at {deposed:.0f}"
                    )
    epochs = sorted({b.epoch for b in batches if b.transactional})
    return Zombies(zombies, committed, epochs, detail)


# -- a broker of the test's own (never the session broker) ---------------------------------


@dataclass
class OwnBroker:
    """A second single-node broker through scripts/kafka-local on its own ports and dir."""

    dir: Path
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    sasl_ssl_port: int | None = None
    scram_user: str = "bridge"
    scram_password: str = ""

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        assert self.sasl_ssl_port is not None
        return f"127.0.0.1:{self.sasl_ssl_port}"

    @property
    def ca_file(self) -> Path:
        return self.dir / "tls" / "ca.pem"

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "KAFKA_LOCAL_PORT": str(self.port),
            "KAFKA_LOCAL_CONTROLLER_PORT": str(self.controller_port),
            "KAFKA_LOCAL_DIR": str(self.dir),
            "KAFKA_LOCAL_HEAP": "-Xmx384m -Xms128m",
        }
        if self.sasl_ssl_port is not None:
            env["KAFKA_LOCAL_SASL_SSL_PORT"] = str(self.sasl_ssl_port)
            env["KAFKA_LOCAL_SCRAM_USER"] = self.scram_user
            env["KAFKA_LOCAL_SCRAM_PASSWORD"] = self.scram_password
        return env

    def _run(self, command: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        from tests.kafkautil import kafka_local

        done = kafka_local(command, env=self.env(), timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"kafka-local {command} failed ({done.returncode}): {done.stderr}")
        return done

    def start(self) -> float:
        """Start (or restart) it; returns the seconds it took to answer."""
        began = time.monotonic()
        self._run("start")
        return time.monotonic() - began

    def stop(self) -> None:
        self._run("stop")

    def kill(self) -> None:
        self._run("kill")

    def running(self) -> bool:
        from tests.kafkautil import kafka_local

        return kafka_local("status", env=self.env(), timeout=30).returncode == 0


def wait_for_committed(
    bootstrap: str,
    topic: str,
    emitted: Callable[[], list[str]],
    timeout: float,
    *,
    missing: Callable[[], set[str]] = set,
) -> Verdict:
    """Like ``wait_for_all``, but the hits in ``missing()`` are expected to stay absent (for
    example a record dead-lettered as oversized): waits until exactly those are lost."""
    last: list[Verdict] = []

    def settled() -> bool:
        try:
            records = read_all(bootstrap, topic, timeout=60)
        except AssertionError:
            return False
        v = verdict(emitted(), records)
        last[:] = [v]
        return v.emitted > 0 and set(v.lost) <= missing()

    try:
        wait_until(settled, timeout, "every expected hit to be committed", step=1.0)
    except AssertionError:
        raise AssertionError(f"topic incomplete: {last[0].line() if last else '?'}") from None
    return last[0]


def reconnect_gaps(attempts: list[dict[str, Any]]) -> list[float]:
    """Seconds between the end of each attempt and the start of the next (simulator view)."""
    gaps = []
    for prev, nxt in itertools.pairwise(attempts):
        ended = prev["t"] + (prev["duration_s"] or 0.0)
        gaps.append(nxt["t"] - ended)
    return gaps


def first_stream_after(sim_attempts: Callable[[], list[dict[str, Any]]], t0: float) -> float:
    """Unix time of the first 200 stream the simulator admitted after ``t0`` (or 0)."""
    return next((a["t"] for a in sim_attempts() if a["status"] == 200 and a["t"] > t0), 0.0)


def leader_of(pair: tuple[BridgeProc, BridgeProc]) -> tuple[BridgeProc, BridgeProc]:
    """(the streaming leader, the other) once exactly one replica streams and the other
    stands by."""

    def one() -> tuple[BridgeProc, BridgeProc] | None:
        a, b = pair
        streaming = [p for p in (a, b) if p.streaming()]
        if len(streaming) != 1:
            return None
        lead = streaming[0]
        return (lead, b if lead is a else a)

    result: tuple[BridgeProc, BridgeProc] = wait_until(one, 90, "exactly one streaming leader")
    wait_until(lambda: result[1].role() == "standby", 60, "the other replica to stand by")
    return result


def finish(
    sim: Simulator,
    bootstrap: str,
    topic: str,
    procs: Iterable[BridgeProc] = (),
    *,
    log_dir: Path | None = None,
) -> None:
    """Stop emitting, then hold the committed topic against everything emitted; with the
    replicas given, also count zombie-visible records (where the broker's log is local, or
    in ``log_dir``: see ``zombie_visible``)."""
    sim.set_mode("pause")
    v = wait_for_all(bootstrap, topic, sim.emitted_hit_ids, timeout=120)
    print(f"verdict: {v.line()}")
    assert (v.lost, v.duplicated, v.unexpected) == ([], [], []), v.line()
    procs = list(procs)
    if procs:
        zombies = zombie_visible(
            bootstrap, [topic, f"{topic}-dlq"], takeovers(procs), log_dir=log_dir
        )
        if zombies is not None:
            print(zombies.line())
            assert zombies.records == 0, zombies.detail


def failover_simulator_config() -> SimulatorConfig:
    """An endless simulator at a modest rate whose resume replays cover in-flight records.

    Records Live Stream pushed into a dead or frozen leader's socket buffers are gone with
    it; only Live Stream's replay on resume brings them back. The replay here (20,000
    records, under a minute at this rate) covers a leader frozen for the whole test, so a
    loss would be the bridge's fault. The README's Guarantees section says the same.
    """
    return SimulatorConfig(rate=400.0, ghost_s=3.0, replay_on_resume=20000, resume_window_s=300)


@contextlib.contextmanager
def running_pair(env: dict[str, str], log_dir: Path) -> Iterator[tuple[BridgeProc, BridgeProc]]:
    """Two replicas of one deployment, started together and stopped however the test ends."""
    a, b = BridgeProc("a", env, log_dir), BridgeProc("b", dict(env), log_dir)
    a.start()
    b.start()
    try:
        yield a, b
    except BaseException as exc:
        # The body's own failure is the one to see; a replica that then fails to stop is
        # noted on it, never put in its place.
        for problem in stop_all((a, b)):
            exc.add_note(f"and then: {problem}")
        raise
    problems = stop_all((a, b))
    if problems:
        raise AssertionError("; ".join(str(p) for p in problems))


def stop_all(procs: Iterable[BridgeProc]) -> list[AssertionError]:
    """Stop every one of ``procs`` (one that hangs does not keep the others running)."""
    problems = []
    for proc in procs:
        try:
            proc.stop()
        except AssertionError as exc:
            problems.append(exc)
    return problems
