"""scripts/demo in its no-Docker mode: real broker, simulator, two replicas and tail."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.testutil import free_ports, wait_until

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scripts" / "demo"
KAFKA_LOCAL = ROOT / "scripts" / "kafka-local"

HIT_LINE = re.compile(r"^\[tail\] p\d+@\d+ hit=\S+")
ONE_LEADER = re.compile(r"^\[demo\] status: .* -> leader: (bridge-[ab])$")
STARTUP_S = 300  # the first broker start may download its jars


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as answer:
        body: dict[str, Any] = json.load(answer)
    return body


def _tagged(tag: str) -> list[int]:
    """Live pids whose environment carries ``DEMO_TEST_TAG=<tag>``: everything a demo run
    started, however deep, whether or not it wrote a pid file for it."""
    needle = f"DEMO_TEST_TAG={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


class Demo:
    """One run of scripts/demo with its own directory and ports; output read by a thread.

    It runs in a session of its own, so a signal can reach its whole process group the
    way `timeout` or a terminal sends one. With ``relay`` its output passes through a
    ``cat`` process first, which a test can kill to leave the demo without a reader (a
    closed terminal)."""

    def __init__(
        self, tmp: Path, seconds: int, *, relay: bool = False, args: tuple[str, ...] = ()
    ) -> None:
        self.dir = tmp / f"demo-{uuid.uuid4().hex[:6]}"
        self.tag = uuid.uuid4().hex
        kafka, controller, sim, port_a, port_b, port_c = free_ports(6)
        self.kafka_port, self.port_a, self.port_b = kafka, port_a, port_b
        self.ports = {"bridge-a": port_a, "bridge-b": port_b, "bridge-c": port_c}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "KAFKA_"))}
        env.pop("POD_NAME", None)
        env.update(
            DEMO_NO_DOCKER="1",
            DEMO_SECONDS=str(seconds),
            DEMO_DIR=str(self.dir),
            DEMO_VENV=sys.prefix,
            DEMO_KAFKA_PORT=str(kafka),
            DEMO_KAFKA_CONTROLLER_PORT=str(controller),
            DEMO_SIM_PORT=str(sim),
            DEMO_HTTP_PORT_A=str(port_a),
            DEMO_HTTP_PORT_B=str(port_b),
            DEMO_HTTP_PORT_C=str(port_c),
            DEMO_STATUS_INTERVAL="2",
        )
        self.env = {**env, "DEMO_TEST_TAG": self.tag}
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.relay: subprocess.Popen[str] | None = None
        if relay:
            self.relay = subprocess.Popen(
                ["cat"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
        self.proc = subprocess.Popen(
            [str(DEMO), *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if self.relay is None else self.relay.stdin,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        if self.relay is not None:
            assert self.relay.stdin is not None
            self.relay.stdin.close()  # the demo holds the only write end
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        source = self.proc.stdout if self.relay is None else self.relay.stdout
        assert source is not None
        for line in source:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def signal(self, sig: int, *, group: bool) -> None:
        """``sig`` to the demo, or to its whole process group as timeout and terminals do."""
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    def left_running(self, timeout: float) -> list[str]:
        """What the run started that still runs ``timeout`` seconds from now (polled)."""
        deadline = time.monotonic() + timeout
        while (left := self.running()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left

    def running(self) -> list[str]:
        out = []
        for pid in _tagged(self.tag):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            out.append(f"{pid}: {cmd[:160]}")
        return out

    def expect(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """Block until an output line matches ``pattern``; fail with the output if not."""
        deadline = time.monotonic() + timeout
        for seen in self.lines:
            if match := pattern.search(seen):
                return match
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                pytest.fail(f"demo ended before {pattern.pattern!r}:\n{self.tail()}")
            self.lines.append(line)
            if match := pattern.search(line):
                return match
        pytest.fail(f"no {pattern.pattern!r} within {timeout}s:\n{self.tail()}")

    def finish(self, timeout: float) -> int:
        """Wait for the demo to exit and for its output to end; its exit code."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return code

    def tail(self, count: int = 80) -> str:
        return "\n".join(self.lines[-count:])

    def pids(self) -> dict[str, int]:
        """Every pid the demo recorded in DEMO_DIR."""
        out = {}
        for path in self.dir.glob("*.pid"):
            text = path.read_text().strip()
            if text.isdigit():
                out[path.stem] = int(text)
        return out

    def force_cleanup(self) -> None:
        """Last resort after a failed test: kill what the demo may have left running."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for pid in {*self.pids().values(), *_tagged(self.tag)}:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.relay is not None and self.relay.poll() is None:
            self.relay.kill()
            self.relay.wait(timeout=30)
        env = dict(
            self.env,
            KAFKA_LOCAL_PORT=self.env["DEMO_KAFKA_PORT"],
            KAFKA_LOCAL_CONTROLLER_PORT=self.env["DEMO_KAFKA_CONTROLLER_PORT"],
            KAFKA_LOCAL_DIR=str(self.dir / "kafka"),
        )
        subprocess.run(
            [str(KAFKA_LOCAL), "stop"], env=env, capture_output=True, timeout=120, check=False
        )

    def close(self) -> None:
        """Close the pipes the test holds once nothing writes to them any more, so no file
        object is left for the garbage collector to close (a ResourceWarning)."""
        self._reader.join(timeout=30)
        if self._reader.is_alive():  # a writer survived: closing would block on the reader
            return
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.relay is not None and self.relay.stdout is not None:
            self.relay.stdout.close()


@pytest.fixture
def demo_factory(tmp_path: Path) -> Iterator[Any]:
    """``start(seconds)`` -> a running Demo; anything left behind is killed afterwards."""
    runs: list[Demo] = []

    def start(seconds: int, **options: Any) -> Demo:
        run = Demo(tmp_path, seconds, **options)
        runs.append(run)
        return run

    yield start
    for run in runs:
        try:
            run.force_cleanup()
        finally:
            run.close()


def _assert_nothing_left(demo: Demo) -> None:
    pids = demo.pids()
    assert {"simulator", "bridge-a", "bridge-b", "tail"} <= set(pids), pids
    alive = {name: pid for name, pid in pids.items() if _alive(pid)}
    assert not alive, f"still running after the demo stopped: {alive}"
    kafka_dir = str(demo.dir / "kafka")
    assert not _processes_mentioning(kafka_dir), f"a broker of {kafka_dir} is still running"


def _assert_one_leader(demo: Demo) -> str:
    """Both replicas answer /status, exactly one leads, and both name it (the standby learns
    the name by observing the election, so this is waited for, briefly)."""

    def one_leader() -> str | None:
        statuses = {
            name: _status(port)
            for name, port in (("bridge-a", demo.port_a), ("bridge-b", demo.port_b))
        }
        leaders = [name for name, status in statuses.items() if status["role"] == "leader"]
        if len(leaders) == 1 and {s["leader"] for s in statuses.values()} == {leaders[0]}:
            return leaders[0]
        return None

    return wait_until(one_leader, 15, "exactly one leader, named by both replicas")


def test_demo_script_parses() -> None:
    """scripts/demo is valid bash and executable."""
    assert os.access(DEMO, os.X_OK)
    result = subprocess.run(["bash", "-n", str(DEMO)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_runs_pipeline_and_stops_by_itself(demo_factory: Any) -> None:
    """With DEMO_SECONDS the demo shows hits and one leader, then stops everything it started."""
    demo = demo_factory(40)
    demo.expect(HIT_LINE, STARTUP_S)
    demo.expect(ONE_LEADER, 60)
    leader = _assert_one_leader(demo)
    demo.expect(re.compile(re.escape(f"kill -9 $(cat {demo.dir}/{leader}.pid)")), 30)

    code = demo.finish(timeout=240)

    assert code == 0, demo.tail()
    assert "[demo] DEMO_SECONDS=40 reached" in demo.lines
    assert any(line.startswith("[demo] stopped") for line in demo.lines), demo.tail()
    assert sum(1 for line in demo.lines if HIT_LINE.search(line)) >= 1
    _assert_nothing_left(demo)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_stops_everything_on_sigterm(demo_factory: Any) -> None:
    """SIGTERM to the demo stops the replicas, tail, simulator and broker, and exits 0."""
    demo = demo_factory(0)
    demo.expect(re.compile(r"^\[demo\] up: "), STARTUP_S)
    demo.expect(ONE_LEADER, 120)

    demo.proc.send_signal(signal.SIGTERM)
    code = demo.finish(timeout=240)

    assert code == 0, demo.tail()
    assert any(line.startswith("[demo] stopped") for line in demo.lines), demo.tail()
    _assert_nothing_left(demo)


STARTED_BROKER = re.compile(r"^\[kafka-start\] ")
REPLICA_OUTPUT = re.compile(r"^\[bridge-[ab]\] ")
UP = re.compile(r"^\[demo\] up: ")


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("moment", "sig", "group", "relay"),
    [
        (STARTED_BROKER, signal.SIGTERM, False, False),
        (REPLICA_OUTPUT, signal.SIGTERM, True, False),
        (UP, signal.SIGTERM, True, False),
        (UP, signal.SIGINT, True, False),
        (UP, signal.SIGHUP, True, True),
    ],
    ids=[
        "term-while-broker-starts",
        "timeout-while-replicas-start",
        "timeout-while-running",
        "ctrl-c",
        "hangup",
    ],
)
def test_demo_leaves_nothing_running_whatever_stops_it(
    demo_factory: Any, moment: re.Pattern[str], sig: int, group: bool, relay: bool
) -> None:
    """TERM, INT or HUP, to the demo alone or to its whole process group, during start-up or
    while running, with or without anyone left reading its output: once the demo has exited,
    no process it started (broker, simulator, replicas, tail, helpers) is still running."""
    demo = demo_factory(0, relay=relay)
    demo.expect(moment, STARTUP_S)
    if moment is UP:
        demo.expect(ONE_LEADER, 120)
    if demo.relay is not None:  # the terminal went away: nobody reads the demo's output now
        demo.relay.kill()
        demo.relay.wait(timeout=30)
    demo.signal(sig, group=group)
    code = demo.proc.wait(timeout=240)
    left = demo.left_running(30)
    demo.finish(timeout=30)
    assert not left, f"exit {code}; still running:\n" + "\n".join(left) + "\n" + demo.tail(30)
    assert not _processes_mentioning(str(demo.dir / "kafka")), "a broker is still running"
    assert code == 0, demo.tail()


REPLICA_LINE = re.compile(r"^\[demo\] replica (bridge-[abc]): (slot (\d) streaming|standby)$")
SLOTS_LINE = re.compile(
    r"^\[demo\] slots: slot 0 (bridge-[abc]), slot 1 (bridge-[abc]), standby (bridge-[abc])$"
)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_slots_option_shows_two_slot_holders_and_a_standby(demo_factory: Any) -> None:
    """``--slots 2`` runs three replicas with maxConnections = 2 and prints, per replica, the
    slot it streams or that it stands by: two distinct replicas hold slots 0 and 1, the
    third stands by, and their /status agrees."""
    demo = demo_factory(0, args=("--slots", "2"))
    summary = demo.expect(SLOTS_LINE, STARTUP_S)
    holder0, holder1, standby = summary.groups()
    assert len({holder0, holder1, standby}) == 3, summary.group(0)
    # The demo's three replica lines just before that summary (the children's output
    # interleaves) say the same, one per replica.
    at = demo.lines.index(summary.group(0))
    own = [line for line in demo.lines[:at] if line.startswith("[demo] replica ")][-3:]
    said = {}
    for line in own:
        match = REPLICA_LINE.match(line)
        assert match, demo.tail()
        said[match.group(1)] = match.group(3)
    assert said == {holder0: "0", holder1: "1", standby: None}, demo.tail()
    for name, slot in ((holder0, 0), (holder1, 1)):
        status = _status(demo.ports[name])
        assert (status["slot"], status["role"], status["max_connections"]) == (slot, "leader", 2)
    status = _status(demo.ports[standby])
    assert (status["slot"], status["role"]) == (None, "standby"), status

    demo.proc.send_signal(signal.SIGTERM)  # stopped here, not by a timer racing the checks
    code = demo.finish(timeout=240)

    assert code == 0, demo.tail()
    pids = demo.pids()
    assert {"bridge-a", "bridge-b", "bridge-c"} <= set(pids), pids
    assert not [name for name, pid in pids.items() if _alive(pid)], demo.tail()
