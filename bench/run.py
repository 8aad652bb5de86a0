"""End-to-end benchmark: the bridge against a minimal ceiling and a naive peer, same run.

    python bench/run.py [--hits 500000] [--json] [--latency-seconds 20] [--latency-rate 10000]
                        [--warmup 100000] [--no-slots]

Needs the Kafka broker at $KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092). Every phase
gets a fresh Live Stream simulator in its own process (so it never shares a GIL with what it
feeds) and a fresh topic of ``--partitions`` partitions, deleted afterwards.

Phases
------
warm-up   ``--warmup`` hits through the ceiling pipeline, not measured (see main()).
bridge    ``livestream-bridge run`` as a subprocess (election off, transactions, acks=all,
          idempotence, dedupe with the default 6M window), fed ``--hits`` hits by a simulator
          serving a pre-generated corpus as fast as the bridge reads (rate=0). Time runs
          from the stream's start (the simulator's attempt log) to the first poll of
          /metrics (every 50 ms near the end, see next_poll_s) showing
          ``records_published_total`` = hits, i.e. every hit committed. CPU is utime+stime
          of the bridge process (all its threads, librdkafka's included) over that span,
          peak RSS its VmHWM. ``--threads`` also prints that CPU per thread name.
slots     maxConnections = 2 (issue 16): two ``livestream-bridge run`` subprocesses of one
          deployment (Kafka election, shared transactional id and election names, each its
          own port and identity), each holding one slot and one connection to the same kind
          of simulator, fed ``--hits`` hits in all. The simulator starts paused, so neither
          slot gets a head start while the election settles; time runs from its resume,
          once both slots stream, to the first poll of both /metrics (paced as in the
          bridge phase) whose
          ``records_published_total`` add up to the hits. Aggregate hits/s next to the
          bridge's N = 1 figure; CPU is both processes', peak RSS the larger one.
          ``--no-slots`` skips it. The simulator's one process then encodes for two
          connections with no pre-compressed batches (each gets every other visitor), so
          its CPU share is printed too: near one core, it and not the bridge is the limit.
ceiling   in a subprocess: httpx ``iter_raw`` -> zlib -> split on CRLF -> ``produce``
          (acks=all, idempotence, the bridge's compression and batching; no parsing, no
          dedupe, no transactions) -> ``flush``. The most this box moves through Python.
peer      in a subprocess: the usual shape of a Live Stream client: ``iter_lines`` over
          httpx's decoded stream, ``json.loads`` per record, ``produce`` per record keyed
          from the parsed dict, acks=all.
latency   the bridge again, the simulator producing ``--latency-rate`` hits/s, for
          ``--latency-seconds`` s after the first hit is seen. A read_committed consumer
          in this process takes (the time a record becomes visible to it) - (its
          ``received-at`` header: when the bridge read it) for every record: the delay a
          downstream reader sees, transaction commit included. p50/p99 over all records.

Prints a table and the ratios bridge/ceiling and bridge/peer; ``--json`` prints one line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import confluent_kafka  # noqa: E402
import httpx  # noqa: E402
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from bridge import publish  # noqa: E402
from bridge.config import KafkaSettings, PublishSettings  # noqa: E402
from bridge.kafkaclients import producer_config  # noqa: E402
from livestream_sim import Simulator, SimulatorConfig  # noqa: E402

MB = 1_000_000
MIB = 1 << 20
POLL_S = 0.05
POLL_SLOW_S = 0.5  # see next_poll_s
CLIENT_ID, CLIENT_SECRET = "sim-client", "sim-secret"  # the simulator's well-known test pair
_TICKS = os.sysconf("SC_CLK_TCK")


# -- helpers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    """utime + stime of process ``pid`` (every thread), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def thread_cpu_s(pid: int) -> dict[tuple[int, str], float]:
    """utime + stime of each live thread of ``pid``, keyed by (tid, name), in seconds."""
    out: dict[tuple[int, str], float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            text = (task / "stat").read_text()
            name = text[text.index("(") + 1 : text.rindex(")")]
            fields = text.rsplit(")", 1)[1].split()
            out[(int(task.name), name)] = (int(fields[11]) + int(fields[12])) / _TICKS
    return out


def thread_table(
    before: dict[tuple[int, str], float], after: dict[tuple[int, str], float], hits: int
) -> str:
    """CPU per thread name over the span, in us per hit; threads gone at the end are lost."""
    by_name: dict[str, list[float]] = {}
    for key, cpu in after.items():
        # a thread born during the span (a per-commit thread, a new broker thread) counts whole
        entry = by_name.setdefault(re.sub(r"\d+$", "#", key[1]), [0.0, 0.0])
        entry[0] += cpu - before.get(key, 0.0)
        entry[1] += 1
    rows = sorted(by_name.items(), key=lambda kv: -kv[1][0])
    lines = [f"{'thread':<20} {'n':>3} {'cpu s':>8} {'us/hit':>8}"]
    for name, (cpu, n) in rows:
        lines.append(f"{name:<20} {int(n):>3} {cpu:>8.2f} {cpu / hits * 1e6:>8.1f}")
    total = sum(v[0] for v in by_name.values())
    lines.append(f"{'(live threads)':<20} {'':>3} {total:>8.2f} {total / hits * 1e6:>8.1f}")
    return "\n".join(lines)


def peak_rss_mib(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    new = [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names]
    for future in admin.create_topics(new, operation_timeout=30, request_timeout=30).values():
        future.result(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        md = admin.list_topics(timeout=5)
        if all(
            n in md.topics
            and md.topics[n].error is None
            and len(md.topics[n].partitions) == partitions
            and all(p.leader >= 0 for p in md.topics[n].partitions.values())
            for n in names
        ):
            return
        time.sleep(0.1)
    raise RuntimeError(f"topics {names} have no leaders after 30 s")


def delete_topics(bootstrap: str, names: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    for future in admin.delete_topics(names, operation_timeout=30).values():
        with contextlib.suppress(Exception):
            future.result(timeout=30)


def ceiling_producer_config(bootstrap: str) -> dict[str, Any]:
    """The bridge's own producer settings (compression, batching), minus transactions."""
    conf = producer_config(
        KafkaSettings(bootstrap_servers=bootstrap), PublishSettings().compression, lambda e: None
    )
    conf.update(getattr(publish, "PRODUCER_TUNING", {}))
    for name in ("transactional.id", "logger", "error_cb"):
        conf.pop(name, None)
    conf |= {"acks": "all", "enable.idempotence": True, "log_level": 3}
    return conf


# -- the simulator, in its own process -----------------------------------------------------


class SimProcess:
    """``bench/run.py --role simulator``: prints its URLs, answers "attempts" and
    "mode <name>" on stdin. ``paused``: it produces no hit until ``resume()``."""

    def __init__(self, rate: float, total_hits: int, *, paused: bool = False) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--role", "simulator"]
        cmd += ["--rate", str(rate), "--hits", str(total_hits)]
        if paused:
            cmd.append("--paused")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the simulator did not start")
        info = json.loads(line)
        self.stream_url, self.token_url = info["stream_url"], info["token_url"]

    def attempts(self) -> list[dict[str, Any]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("attempts\n")
        self.proc.stdin.flush()
        data: list[dict[str, Any]] = json.loads(self.proc.stdout.readline())
        return data

    def resume(self) -> None:
        """Start producing hits (the answer comes once the simulator has switched)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("mode normal\n")
        self.proc.stdin.flush()
        if self.proc.stdout.readline().strip() != "ok":
            raise RuntimeError("the simulator did not resume")

    def stream_start(self) -> float:
        """Wall time the first 200 stream began (the first byte goes out right after)."""
        started = [a["t"] for a in self.attempts() if a.get("status") == 200]
        if not started:
            raise RuntimeError("the simulator never served a stream")
        return float(min(started))

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def role_simulator(args: argparse.Namespace) -> int:
    total = args.hits if args.hits > 0 else None
    sim = Simulator(SimulatorConfig(rate=args.rate, total_hits=total))
    # Build (and for rate=0 pre-compress) the whole corpus before anyone connects, so the
    # first seconds of a run measure the client, not the simulator warming up.
    sim.corpus.build_all(precompress=args.rate <= 0)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with sim:
        if args.paused:
            sim.set_mode("pause")
        urls = {"stream_url": sim.stream_url, "token_url": sim.token_url}
        sys.stdout.write(json.dumps(urls) + "\n")
        sys.stdout.flush()
        for line in sys.stdin:
            if line.strip() == "attempts":
                sys.stdout.write(json.dumps(sim.attempts()) + "\n")
                sys.stdout.flush()
            elif line.startswith("mode "):
                sim.set_mode(line.split()[1])
                sys.stdout.write("ok\n")
                sys.stdout.flush()
    return 0


# -- the bridge ----------------------------------------------------------------------------


_METRIC = re.compile(rb"^(livestream_bridge_[a-z_]+)(?:\{[^}]*\})? ([0-9.e+-]+)$", re.M)


@dataclass
class BridgeRun:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def metrics(self) -> dict[str, float]:
        """Unlabelled counters and gauges from /metrics (labelled ones are summed)."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as answer:
            body = answer.read()
        out: dict[str, float] = {}
        for name, value in _METRIC.findall(body):
            key = name.decode()
            out[key] = out.get(key, 0.0) + float(value)
        return out

    def try_metrics(self) -> dict[str, float] | None:
        try:
            return self.metrics()
        except (OSError, ValueError):
            return None

    def streaming_slot(self) -> int | None:
        """The slot /status says this replica streams, or None (standby, connecting, down)."""
        try:
            url = f"http://127.0.0.1:{self.port}/status"
            with urllib.request.urlopen(url, timeout=2) as answer:
                status = json.load(answer)
        except (OSError, ValueError):
            return None
        slot = status.get("slot")
        if status.get("upstream") != "streaming" or not isinstance(slot, int):
            return None
        return slot

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the bridge exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


BRIDGE_PROPERTIES: dict[str, str] = {"log_level": "3"}  # --bridge-property adds to these

# --threads: CPython 3.11 leaves every thread's OS name "python", so /proc cannot tell them
# apart; this launcher gives each one its threading name (truncated to 15 bytes, as the
# kernel does) before running the bridge's CLI unchanged.
NAMED_THREADS_BOOT = """
import ctypes, runpy, sys, threading
prctl = ctypes.CDLL(None).prctl
inner = threading.Thread._bootstrap_inner
def named(self):
    prctl(15, self.name.encode()[:15], 0, 0, 0)
    inner(self)
threading.Thread._bootstrap_inner = named
prctl(15, b"main", 0, 0, 0)
sys.argv[0] = "bridge.cli"
runpy.run_module("bridge.cli", run_name="__main__", alter_sys=True)
"""


def next_poll_s(done: float, total: float, elapsed_s: float) -> float:
    """How long to wait before the next /metrics poll of a bridge run.

    Each scrape costs the bridge ~3 ms of CPU under its GIL (prometheus_client renders ~400
    series): at 20 polls/s that was ~3 us/hit (a tenth of its CPU), which no production
    scrape interval charges and neither the ceiling nor the peer pays. So poll slowly while
    the end is far, extrapolated from the rate so far, and every ``POLL_S`` near it (and
    before the first record), which keeps the end's resolution at ``POLL_S``.
    """
    if done <= 0 or elapsed_s <= 0:
        return POLL_S
    eta_s = (total - done) / (done / elapsed_s)
    # eta / 4: only a bridge 4x faster than its average so far could finish unobserved
    return POLL_S if eta_s < 1.0 else min(POLL_SLOW_S, max(POLL_S, eta_s / 4))


def start_bridge(
    sim: SimProcess,
    bootstrap: str,
    topic: str,
    log_dir: Path,
    *,
    log_name: str | None = None,
    named_threads: bool = False,
    extra: dict[str, str] | None = None,
) -> BridgeRun:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env |= {
        "BRIDGE_LIVESTREAM__URL": sim.stream_url,
        "BRIDGE_LIVESTREAM__RECONNECT_GRACE_S": "0",
        "BRIDGE_AUTH__TOKEN_URL": sim.token_url,
        "BRIDGE_AUTH__CLIENT_ID": CLIENT_ID,
        "BRIDGE_AUTH__CLIENT_SECRET": CLIENT_SECRET,
        "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "BRIDGE_KAFKA__TOPIC": topic,
        "BRIDGE_KAFKA__DLQ_TOPIC": f"{topic}-dlq",
        "BRIDGE_KAFKA__TRANSACTIONAL_ID": f"bench-{uuid.uuid4().hex[:12]}",
        "BRIDGE_KAFKA__PROPERTIES": json.dumps(BRIDGE_PROPERTIES),
        "BRIDGE_ELECTION__BACKEND": "none",
        "BRIDGE_HTTP__HOST": "127.0.0.1",
        "BRIDGE_HTTP__PORT": str(port),
        "BRIDGE_LOG__FORMAT": "json",
        "BRIDGE_LOG__LEVEL": "WARNING",
        "BRIDGE_SECRETS_DIR": "/nonexistent",
        **(extra or {}),
    }
    log_path = log_dir / f"bridge-{log_name or topic}.log"
    launch = ["-c", NAMED_THREADS_BOOT] if named_threads else ["-m", "bridge.cli"]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *launch, "--env-file", "/nonexistent", "run"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    return BridgeRun(proc, port, log_path)


def phase_bridge(
    bootstrap: str, hits: int, partitions: int, log_dir: Path, threads: bool = False
) -> dict[str, float]:
    topic = f"bench-bridge-{uuid.uuid4().hex[:10]}"
    create_topics(bootstrap, [topic, f"{topic}-dlq"], partitions)
    sim = SimProcess(rate=0, total_hits=hits)
    bridge = start_bridge(sim, bootstrap, topic, log_dir, named_threads=threads)
    try:
        deadline = time.monotonic() + 120 + hits / 2000
        cpu_before: float | None = None
        threads_before: dict[tuple[int, str], float] = {}
        wait_s, first_read = POLL_S, 0.0
        while True:
            bridge.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the bridge did not publish {hits} hits in time")
            cpu = proc_cpu_s(bridge.proc.pid)
            m = bridge.try_metrics()
            now = time.time()
            if m is not None:
                if cpu_before is None or not m.get(
                    "livestream_bridge_upstream_compressed_bytes_total", 0
                ):
                    cpu_before = cpu  # nothing read yet: start-up is not counted
                    if threads:
                        threads_before = thread_cpu_s(bridge.proc.pid)
                else:
                    first_read = first_read or now
                published = m.get("livestream_bridge_records_published_total", 0)
                if published >= hits:
                    break
                wait_s = next_poll_s(published, hits, now - first_read) if first_read else POLL_S
            time.sleep(wait_s)
        end, cpu_end = now, proc_cpu_s(bridge.proc.pid)
        if threads:
            table = thread_table(threads_before, thread_cpu_s(bridge.proc.pid), hits)
            total = (cpu_end - cpu_before) / hits * 1e6
            print(f"bridge CPU by thread ({total:.1f} us/hit all threads):", file=sys.stderr)
            print(table, file=sys.stderr)
        rss = peak_rss_mib(bridge.proc.pid)
        start = sim.stream_start()
        assert cpu_before is not None
        extra = {
            k: m.get(f"livestream_bridge_{k}_total", 0.0)
            for k in ("records_deduplicated", "records_dead_lettered", "transactions")
        }
        if extra["records_deduplicated"] or extra["records_dead_lettered"]:
            print(f"warning: bridge run had {extra}", file=sys.stderr)
        return result(
            hits,
            m["livestream_bridge_upstream_decompressed_bytes_total"],
            end - start,
            cpu_end - cpu_before,
            rss,
        )
    finally:
        bridge.stop()
        sim.stop()
        delete_topics(bootstrap, [topic, f"{topic}-dlq"])


SLOTS = 2


def phase_slots(bootstrap: str, hits: int, partitions: int, log_dir: Path) -> dict[str, float]:
    """``SLOTS`` replicas of one deployment, one slot each; see the module docstring."""
    name = uuid.uuid4().hex[:10]
    topic, election = f"bench-slots-{name}", f"bench-election-{name}"
    create_topics(bootstrap, [topic, f"{topic}-dlq"], partitions)
    sim = SimProcess(rate=0, total_hits=hits, paused=True)
    # One deployment: every name shared, so slot i derives its own (``-i``) from the same.
    shared = {
        "BRIDGE_LIVESTREAM__MAX_CONNECTIONS": str(SLOTS),
        "BRIDGE_KAFKA__TRANSACTIONAL_ID": f"bench-{name}",
        "BRIDGE_ELECTION__BACKEND": "kafka",
        "BRIDGE_ELECTION__GROUP_ID": election,
        "BRIDGE_ELECTION__TOPIC": election,
        "BRIDGE_ELECTION__SESSION_TIMEOUT_MS": "6000",
    }
    bridges = [
        start_bridge(
            sim,
            bootstrap,
            topic,
            log_dir,
            log_name=f"{topic}-{i}",
            extra={"BRIDGE_ELECTION__IDENTITY": f"bench-{i}", **shared},
        )
        for i in range(SLOTS)
    ]
    try:
        deadline = time.monotonic() + 120
        while sorted(str(b.streaming_slot()) for b in bridges) != [str(i) for i in range(SLOTS)]:
            for b in bridges:
                b.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{SLOTS} replicas did not stream {SLOTS} slots within 120 s")
            time.sleep(POLL_S)
        cpu_before = [proc_cpu_s(b.proc.pid) for b in bridges]
        sim_cpu_before = proc_cpu_s(sim.proc.pid)
        start = time.time()
        sim.resume()
        deadline = time.monotonic() + 120 + hits / 2000
        while True:
            for b in bridges:
                b.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the {SLOTS} replicas did not publish {hits} hits in time (one slot "
                    "far behind the other skips what the simulator no longer retains)"
                )
            cpu = [proc_cpu_s(b.proc.pid) for b in bridges]
            polled = [b.try_metrics() for b in bridges]
            now = time.time()
            wait_s = POLL_S
            if all(m is not None for m in polled):
                ms = cast("list[dict[str, float]]", polled)
                published = sum(m.get("livestream_bridge_records_published_total", 0) for m in ms)
                if published >= hits:
                    break
                wait_s = next_poll_s(published, hits, now - start)
            time.sleep(wait_s)
        sim_cpu = proc_cpu_s(sim.proc.pid) - sim_cpu_before
        dup = sum(m.get("livestream_bridge_records_deduplicated_total", 0.0) for m in ms)
        if dup:
            print(f"warning: slots run deduplicated {dup:.0f} records", file=sys.stderr)
        out = result(
            hits,
            sum(m["livestream_bridge_upstream_decompressed_bytes_total"] for m in ms),
            now - start,
            sum(cpu) - sum(cpu_before),
            max(peak_rss_mib(b.proc.pid) for b in bridges),
        )
        out["simulator_cpu_share"] = sim_cpu / (now - start)
        return out
    finally:
        for b in bridges:
            b.stop()
        sim.stop()
        names = [topic, f"{topic}-dlq", election]
        delete_topics(bootstrap, names + [f"{election}-{i}" for i in range(1, SLOTS)])


def result(
    hits: float, nbytes: float, seconds: float, cpu_s: float, rss: float
) -> dict[str, float]:
    return {
        "hits": hits,
        "seconds": seconds,
        "hits_per_s": hits / seconds,
        "mb_per_s": nbytes / MB / seconds,
        "cpu_s_per_100k": cpu_s / hits * 100_000,
        "peak_rss_mib": rss,
    }


# -- ceiling and peer, each in its own process ---------------------------------------------


def _token(token_url: str) -> str:
    form = {"grant_type": "client_credentials", "client_id": CLIENT_ID}
    form["client_secret"] = CLIENT_SECRET
    answer = httpx.post(token_url, data=form, timeout=10)
    answer.raise_for_status()
    return str(answer.json()["access_token"])


def _produce(producer: Producer, topic: str, value: bytes, key: str | None = None) -> None:
    while True:
        try:
            producer.produce(topic, value, key)
            return
        except BufferError:
            producer.poll(0.05)


def role_ceiling(args: argparse.Namespace) -> int:
    producer = Producer(ceiling_producer_config(args.bootstrap))
    token, hits, nbytes = _token(args.token_url), args.hits, 0
    headers = {"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"}
    count, tail, topic = 0, b"", args.topic
    produce, poll = producer.produce, producer.poll
    cpu0 = self_cpu_s()
    with (
        httpx.Client(timeout=httpx.Timeout(30.0)) as client,
        client.stream(
            "GET", args.stream_url, params={"maxConnections": "1"}, headers=headers
        ) as response,
    ):
        response.raise_for_status()
        inflate = zlib.decompressobj(31)
        for raw in response.iter_raw():
            data = inflate.decompress(raw)
            nbytes += len(data)
            records = (tail + data).split(b"\r\n")
            tail = records.pop()
            for record in records:
                try:
                    produce(topic, record)
                except BufferError:
                    _produce(producer, topic, record)
            count += len(records)
            poll(0)
            if count >= hits:
                break
    producer.flush(120)
    end, cpu = time.time(), self_cpu_s() - cpu0
    report = {"end": end, "hits": count, "bytes": nbytes, "cpu_s": cpu, "rss": peak_rss_mib()}
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


def role_peer(args: argparse.Namespace) -> int:
    conf = {"bootstrap.servers": args.bootstrap, "acks": "all", "log_level": 3}
    conf["compression.type"] = "lz4"
    producer = Producer(conf)
    token, hits, nbytes, count = _token(args.token_url), args.hits, 0, 0
    headers = {"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"}
    cpu0 = self_cpu_s()
    with (
        httpx.Client(timeout=httpx.Timeout(30.0)) as client,
        client.stream(
            "GET", args.stream_url, params={"maxConnections": "1"}, headers=headers
        ) as response,
    ):
        response.raise_for_status()
        for line in response.iter_lines():
            if not line:
                continue
            hit = json.loads(line)
            if "visIdHigh" in hit:
                key = f"{hit['visIdHigh']}:{hit.get('visIdLow')}"
            else:
                key = f"{hit.get('mcVisIdHigh')}:{hit.get('mcVisIdLow')}"
            value = line.encode()
            nbytes += len(value) + 2
            _produce(producer, args.topic, value, key)
            producer.poll(0)
            count += 1
            if count >= hits:
                break
    producer.flush(120)
    end, cpu = time.time(), self_cpu_s() - cpu0
    report = {"end": end, "hits": count, "bytes": nbytes, "cpu_s": cpu, "rss": peak_rss_mib()}
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


def phase_client(role: str, bootstrap: str, hits: int, partitions: int) -> dict[str, float]:
    topic = f"bench-{role}-{uuid.uuid4().hex[:10]}"
    create_topics(bootstrap, [topic], partitions)
    sim = SimProcess(rate=0, total_hits=hits)
    try:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--role", role]
        cmd += ["--hits", str(hits), "--bootstrap", bootstrap, "--topic", topic]
        cmd += ["--stream-url", sim.stream_url, "--token-url", sim.token_url]
        done = subprocess.run(
            cmd, capture_output=True, text=True, cwd=ROOT, timeout=300 + hits / 500, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{role} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        start = sim.stream_start()
        return result(
            report["hits"], report["bytes"], report["end"] - start, report["cpu_s"], report["rss"]
        )
    finally:
        sim.stop()
        delete_topics(bootstrap, [topic])


# -- latency -------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def phase_latency(
    bootstrap: str, rate: float, seconds: float, partitions: int, log_dir: Path
) -> dict[str, float]:
    topic = f"bench-latency-{uuid.uuid4().hex[:10]}"
    create_topics(bootstrap, [topic, f"{topic}-dlq"], partitions)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            "log_level": 3,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    sim = SimProcess(rate=rate, total_hits=0)
    # reset=largest: start with the hits produced from now on, not a backlog burst.
    bridge = start_bridge(
        sim, bootstrap, topic, log_dir, extra={"BRIDGE_LIVESTREAM__RESET": "largest"}
    )
    latencies: list[float] = []
    try:
        deadline = time.monotonic() + 120
        first: float | None = None
        while True:
            if first is None:
                bridge.check_alive()
            msgs = consumer.consume(num_messages=5000, timeout=0.05)
            now_ms = time.time() * 1000
            for msg in msgs:
                if msg.error() is not None:
                    continue
                # consumed headers are (name, bytes) pairs, and the bridge sets received-at
                for name, value in cast("list[tuple[str, bytes]]", msg.headers() or []):
                    if name == "received-at":
                        latencies.append(now_ms - int(value))
                        break
            if latencies and first is None:
                first = time.monotonic()
                deadline = first + seconds
            if time.monotonic() > deadline:
                break
        if not latencies:
            raise RuntimeError("no record reached the consumer within 120 s")
        received = bridge.try_metrics() or {}
    finally:
        bridge.stop()
        sim.stop()
        consumer.close()
        delete_topics(bootstrap, [topic, f"{topic}-dlq"])
    latencies.sort()
    return {
        "records": len(latencies),
        "received": received.get("livestream_bridge_records_received_total", 0.0),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": latencies[-1],
    }


# -- main ----------------------------------------------------------------------------------


def environment() -> str:
    return (
        f"nproc={os.cpu_count()} python={platform.python_version()} "
        f"confluent-kafka={confluent_kafka.__version__} "
        f"librdkafka={confluent_kafka.libversion()[0]}"
    )


def table(res: dict[str, dict[str, float]], lat: dict[str, float]) -> str:
    lines = [
        f"{'pipeline':<9} {'hits/s':>10} {'MB/s':>8} {'CPU s/100k':>11} {'peak RSS MiB':>13}",
    ]
    for name in ("bridge", "slots2", "ceiling", "peer"):
        if name not in res:
            continue
        r = res[name]
        lines.append(
            f"{name:<9} {r['hits_per_s']:>10,.0f} {r['mb_per_s']:>8.1f} "
            f"{r['cpu_s_per_100k']:>11.2f} {r['peak_rss_mib']:>13.1f}"
        )
    b = res["bridge"]["hits_per_s"]
    lines.append(
        f"ratio bridge/ceiling {b / res['ceiling']['hits_per_s']:.2f}, "
        f"bridge/peer {b / res['peer']['hits_per_s']:.2f}"
    )
    if "slots2" in res:
        s = res["slots2"]
        lines.append(
            f"slots2: {SLOTS} replicas, {SLOTS} connections: {s['hits_per_s'] / b:.2f} x the "
            f"bridge's N = 1; the simulator used {s['simulator_cpu_share']:.0%} of a core"
        )
    lines.append(
        f"latency at {lat['rate']:,.0f} hits/s (read_committed consumer, received-at -> "
        f"visible): p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms, "
        f"max {lat['max_ms']:.0f} ms over {lat['records']:,.0f} records"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hits", type=int, default=500_000, help="hits per throughput phase")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--latency-rate", type=float, default=10_000.0)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument(
        "--warmup",
        type=int,
        default=100_000,
        help="hits sent through the ceiling pipeline first, not measured (0: none)",
    )
    parser.add_argument(
        "--bridge-property",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra librdkafka property for the bridge's clients (tuning experiments)",
    )
    parser.add_argument(
        "--no-slots", action="store_true", help="skip the maxConnections = 2 phase (slots)"
    )
    parser.add_argument(
        "--only", choices=("bridge", "slots", "ceiling", "peer", "latency"), action="append"
    )
    parser.add_argument(
        "--threads",
        action="store_true",
        help="print the bridge's CPU per thread name over the timed span (to stderr)",
    )
    parser.add_argument("--paused", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--role", default="main", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--stream-url", help=argparse.SUPPRESS)
    parser.add_argument("--token-url", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    roles = {"simulator": role_simulator, "ceiling": role_ceiling, "peer": role_peer}
    if args.role in roles:
        return roles[args.role](args)

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip() or "127.0.0.1:9092"
    for item in args.bridge_property:
        name, _, value = item.partition("=")
        BRIDGE_PROPERTIES[name] = value
    full = {"bridge", "ceiling", "peer", "latency"}
    only = set(args.only or (*full, "slots"))
    if args.no_slots:
        only.discard("slots")

    def log(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr)

    res: dict[str, dict[str, float]] = {}
    lat: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        log_dir = Path(tmp)
        if args.warmup > 0:
            # A broker started minutes ago is still compiling its hot paths (JIT): the first
            # phase would pay for it, and the bridge runs first. Seen here: 28,068 hits/s in
            # the first run after a broker start, 41,329 and 39,781 in the next two.
            log(f"warm-up: {args.warmup:,} hits through the ceiling pipeline ...")
            phase_client("ceiling", bootstrap, args.warmup, args.partitions)
        if "bridge" in only:
            log(f"bridge: {args.hits:,} hits ...")
            res["bridge"] = phase_bridge(
                bootstrap, args.hits, args.partitions, log_dir, args.threads
            )
            log(f"  {res['bridge']}")
        if "slots" in only:
            log(f"slots: maxConnections={SLOTS}, {SLOTS} replicas, {args.hits:,} hits in all ...")
            res["slots2"] = phase_slots(bootstrap, args.hits, args.partitions, log_dir)
            log(f"  {res['slots2']}")
        for role in ("ceiling", "peer"):
            if role in only:
                log(f"{role}: {args.hits:,} hits ...")
                res[role] = phase_client(role, bootstrap, args.hits, args.partitions)
                log(f"  {res[role]}")
        if "latency" in only:
            log(f"latency: {args.latency_rate:,.0f} hits/s for {args.latency_seconds:g} s ...")
            lat = phase_latency(
                bootstrap, args.latency_rate, args.latency_seconds, args.partitions, log_dir
            )
            lat["rate"] = args.latency_rate
            log(f"  {lat}")
    if only - {"slots"} != full:
        print(json.dumps({"results": res, "latency": lat}))
        return 0
    summary = summarize(res, lat)
    if args.json:
        print(json.dumps({k: round(v, 3) for k, v in summary.items()}))
    else:
        print(environment())
        print(table(res, lat))
    return 0


def summarize(res: dict[str, dict[str, float]], lat: dict[str, float]) -> dict[str, float]:
    """The ``--json`` figures of a full run."""
    bridge = res["bridge"]
    summary = {
        "hits_per_s": bridge["hits_per_s"],
        "ceiling_hits_per_s": res["ceiling"]["hits_per_s"],
        "ratio_ceiling": bridge["hits_per_s"] / res["ceiling"]["hits_per_s"],
        "peer_hits_per_s": res["peer"]["hits_per_s"],
        "ratio_peer": bridge["hits_per_s"] / res["peer"]["hits_per_s"],
        "peak_rss_mib": bridge["peak_rss_mib"],
        "p99_ms": lat["p99_ms"],
        "p50_ms": lat["p50_ms"],
        "cpu_s_per_100k": bridge["cpu_s_per_100k"],
        "mb_per_s": bridge["mb_per_s"],
    }
    if "slots2" in res:
        summary["hits_per_s_slots2"] = res["slots2"]["hits_per_s"]
        summary["ratio_slots2"] = res["slots2"]["hits_per_s"] / bridge["hits_per_s"]
    return summary


if __name__ == "__main__":
    sys.exit(main())
