"""Run real bridge processes against the simulator and the real broker, and judge the topic.

Used by the end-to-end, failover and fault tests: each starts ``livestream-bridge run`` as a
subprocess (so kill -9, SIGSTOP and SIGTERM are real), talks to it only over its HTTP
endpoint, and holds the topic's committed contents against what the simulator emitted.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.kafkautil import Record, read_all


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(step)


def bridge_env(
    *,
    stream_url: str,
    token_url: str,
    bootstrap: str,
    topic: str,
    deployment: str,
    client_id: str = "sim-client",
    client_secret: str = "sim-secret",
    **extra: str,
) -> dict[str, str]:
    """Environment for one replica of deployment ``deployment`` (shared election, txn id)."""
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

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.{self.runs}.log"

    def start(self) -> BridgeProc:
        self.runs += 1
        env = {
            **self.env,
            "BRIDGE_HTTP__PORT": str(self.port),
            "BRIDGE_HTTP__HOST": "127.0.0.1",
            "BRIDGE_ELECTION__IDENTITY": f"{self.name}-{self.runs}",
        }
        out = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "--env-file", "/nonexistent", "run"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        return self

    def status(self) -> dict[str, Any] | None:
        try:
            url = f"http://127.0.0.1:{self.port}/status"
            with urllib.request.urlopen(url, timeout=2) as answer:
                data: dict[str, Any] = json.loads(answer.read())
                return data
        except (OSError, ValueError):
            return None

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=3) as a:
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
        """SIGTERM and wait; kill if it does not exit in time (then the test fails)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"{self.name} did not stop within {timeout}s") from None

    def logs(self) -> str:
        return "".join(
            (self.log_dir / f"{self.name}.{n}.log").read_text(errors="replace")
            for n in range(1, self.runs + 1)
        )


def hit_ids(records: Iterable[Record]) -> list[str]:
    out = []
    for rec in records:
        headers = dict(rec.headers or [])
        out.append(headers["hit-id"].decode())
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
    bootstrap: str, topic: str, emitted: Callable[[], list[str]], timeout: float
) -> Verdict:
    """Poll the committed topic until it holds every emitted hit (or time out), then judge."""
    last: list[Verdict] = []

    def complete() -> bool:
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
        raise AssertionError(f"topic incomplete: {last[0].line() if last else '?'}") from None
    return last[0]


def deployment_name() -> str:
    return uuid.uuid4().hex[:10]
