"""The command line: the ``run`` command's wiring (one Secrets for the log redactor and
the bridge) and ``status`` against real endpoints and a real bridge process."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bridge import cli, service
from bridge.cli import status_table
from bridge.config import Settings
from bridge.logs import EventLog
from bridge.observability import HttpEndpoint, Metrics, State
from bridge.secrets import Secrets
from livestream_sim import Simulator, SimulatorConfig
from tests.harness import (
    BridgeProc,
    bridge_env,
    log_events,
    metric_value,
    scrape,
)
from tests.testutil import free_port, wait_until

OAUTH_CONFIG = "clientId=app clientSecret=oauth-config-distinct"
PEM = "-----BEGIN PRIVATE KEY-----\nMIIpem-distinct\n-----END PRIVATE KEY-----"
LATE_TOKEN = "token-fetched-at-run-time"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Valid settings with secret-named client properties; logging and signals restored after."""
    for name in list(os.environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BRIDGE_LIVESTREAM__URL", "http://stream.internal:8081/api/1/stream/x")
    monkeypatch.setenv("BRIDGE_LIVESTREAM__ALLOW_INSECURE_HTTP", "true")
    monkeypatch.setenv("BRIDGE_AUTH__ACCESS_TOKEN", "static-token-distinct")
    monkeypatch.setenv("BRIDGE_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    props = {"sasl.oauthbearer.config": OAUTH_CONFIG, "ssl.key.pem": PEM}
    monkeypatch.setenv("BRIDGE_KAFKA__PROPERTIES", json.dumps(props))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    signals = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield monkeypatch
    root.handlers[:] = handlers
    root.setLevel(level)
    for number, handler in signals.items():
        signal.signal(number, handler)


def test_run_shares_one_secrets_with_logging_and_the_bridge(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every configured secret and a token registered by the bridge at run time are scrubbed
    from the log, and the cleartext URL allowed by opt-out is named in a warning."""
    made: list[Secrets] = []

    class RecordingBridge:
        """Stands in for the service (a unit test of the CLI's wiring): it registers a
        token the way the real one does, then logs every secret it knows."""

        def __init__(self, settings: Settings, *, secrets: Secrets | None = None) -> None:
            self.secrets = secrets if secrets is not None else Secrets()
            made.append(self.secrets)

        def run(self, stop: threading.Event) -> None:
            self.secrets.add(LATE_TOKEN)
            EventLog("bridge.test").info(
                f"leak {LATE_TOKEN}", oauth=OAUTH_CONFIG, pem=PEM, token="static-token-distinct"
            )

    env.setattr(service, "Bridge", RecordingBridge)
    code = cli.main(["--env-file", "/nonexistent", "run"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert len(made) == 1
    secrets = made[0]
    assert all(v in secrets for v in (OAUTH_CONFIG, PEM, "static-token-distinct", LATE_TOKEN))
    for value in (LATE_TOKEN, "oauth-config-distinct", "MIIpem-distinct", "static-token"):
        assert value not in out
    lines = [json.loads(line) for line in out.splitlines()]
    leak = next(line for line in lines if line["event"].startswith("leak"))
    assert (leak["event"], leak["oauth"], leak["pem"]) == ("leak ***", "***", "***")
    warned = [line for line in lines if line["event"] == "config.insecure_url"]
    assert [w["variable"] for w in warned] == ["BRIDGE_LIVESTREAM__URL"], warned


# -- livestream-bridge status -----------------------------------------------------------


def run_cli(*args: str, port: int | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m bridge.cli ARGS`` as an operator would run it next to the replica."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    if port is not None:
        env["BRIDGE_HTTP__PORT"] = str(port)
    command = [sys.executable, "-m", "bridge.cli", "--env-file", "/nonexistent", *args]
    return subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=30)


_IMPORTS_PROBE = """
import importlib, json, pkgutil, sys
import bridge
from bridge import cli

def sim_modules():
    return sorted(m for m in sys.modules if m.partition(".")[0] == "livestream_sim")

for info in pkgutil.walk_packages(bridge.__path__, "bridge."):
    importlib.import_module(info.name)
parser = cli._parser()
for argv in (["run"], ["check-config"], ["tail"], ["health"], ["status"]):
    parser.parse_args(argv)
code = cli.main(["--env-file", "/nonexistent", "check-config"])
before = sim_modules()
parser.parse_args(["simulate", "--rate", "0"])
print(json.dumps({"check_config": code, "before": before, "after": sim_modules()}))
"""


def test_only_the_simulate_command_imports_the_simulator() -> None:
    """Importing every bridge module, building the CLI's parser, parsing every other command
    and running check-config leave livestream_sim unimported (``run`` must not load the
    simulator); parsing ``simulate`` is what imports it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env |= {"BRIDGE_LIVESTREAM__URL": "https://stream.example/api/1/stream/x"}
    env |= {"BRIDGE_AUTH__ACCESS_TOKEN": "static-token-distinct"}
    env |= {"BRIDGE_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9092"}
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTS_PROBE],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["check_config"] == 0, done.stderr
    assert seen["before"] == []
    assert "livestream_sim.server" in seen["after"]


def table(out: str) -> dict[str, str]:
    """The ``label  value`` rows of the status table (two spaces or more between)."""
    rows = {}
    for line in out.splitlines():
        if not line.startswith(" ") and "  " in line:
            label, value = line.split("  ", 1)
            rows[label] = value.strip()
    return rows


def test_status_table_from_a_real_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    """`status --url` reads a real HttpEndpoint serving a real State and prints role,
    upstream state, the last record's age, counters and any key it does not know."""
    state = State(identity="bridge-a-1", role="leader", leader_identity="bridge-a-1")
    state.upstream = "streaming"
    state.last_record_at = time.time() - 3.0
    state.counters = lambda: {"records_received": 12.0, "records_published": 10.0}
    endpoint = HttpEndpoint("127.0.0.1", 0, Metrics(), state, lambda: True)
    endpoint.start()
    try:
        code = cli.main(["status", "--url", f"http://127.0.0.1:{endpoint.port}/status"])
    finally:
        endpoint.stop()
    out = capsys.readouterr().out
    assert code == 0, out
    rows = table(out)
    assert rows["replica"] == "bridge-a-1"
    assert rows["role"].startswith("leader (for ")
    assert rows["upstream"] == "streaming"
    assert rows["last record"].endswith(" s ago")
    assert 2.5 <= float(rows["last record"].split()[0]) < 60
    assert rows["freshness"] == "-"  # this /status does not report it
    assert rows["stale loops"] == "none"
    assert "counters:" in out and "records_published  10" in out


def test_status_table_shows_slot_freshness_and_new_keys() -> None:
    """Slot, term and the newest committed hit's age are shown when /status has them, in
    either form; keys this CLI does not know are printed as they come."""
    now = 1_800_000_000.0
    doc = {"role": "leader", "slot": 1, "term": 7, "newest_committed_hit_at": now - 42.0}
    doc |= {"reader_queue_bytes": 2048, "counters": {"a": 1.5}, "dedupe": {"ids": 3}}
    rows = table(status_table(doc, now))
    assert (rows["slot"], rows["term"]) == ("1", "7")
    assert rows["freshness"] == "newest committed hit 42.0 s old"
    assert rows["reader queue bytes"] == "2048"
    assert rows["last record"] == "never"
    out = status_table(doc, now)
    assert out.index("counters:") < out.index("dedupe:")
    assert table(status_table({"newest_committed_hit_age_s": 600.0}, now))["freshness"] == (
        "newest committed hit 10.0 min old"
    )


def test_status_exits_1_when_nothing_answers() -> None:
    """With nobody on BRIDGE_HTTP__PORT, `status` says so on stderr and exits 1."""
    done = run_cli("status", port=free_port())
    assert done.returncode == 1
    assert done.stdout == "" and "status: http://127.0.0.1:" in done.stderr


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_status_of_a_running_bridge_stuck_on_424_then_streaming(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A real `livestream-bridge run` whose stream is not enabled keeps running (no exit 3),
    logs the fix once and exports upstream_fatal_status{status="424"} 1 and state refused;
    `livestream-bridge status` answers (exit 0) with the replica's table. Once the named
    enable URL is called the same process streams and `status` shows the last record's
    age; after it stops, `status` exits 1."""
    with Simulator(SimulatorConfig(rate=100.0)) as sim:
        sim.set_mode("not_enabled")
        env = bridge_env(sim, kafka_bootstrap, BRIDGE_ELECTION__BACKEND="none")
        env |= {"BRIDGE_LIVESTREAM__RECONNECT_GRACE_S": "0.5"}
        env |= {"BRIDGE_LIVESTREAM__BACKOFF_CAP_S": "1"}
        bridge = BridgeProc("status", env, tmp_path).start()
        try:

            def metric(name: str, **labels: str) -> float:
                # scrape: an empty answer (0) while the process is still starting
                return metric_value(scrape(bridge)["/metrics"].decode(), name, **labels)

            refusals = "livestream_bridge_upstream_refusals_total"
            wait_until(lambda: metric(refusals, status="424") >= 3, 90, "three 424s")
            assert bridge.proc is not None and bridge.proc.poll() is None
            assert metric("livestream_bridge_upstream_fatal_status", status="424") == 1
            assert metric("livestream_bridge_upstream_state", state="refused") == 1
            told = log_events(bridge, "upstream.stream_not_enabled")
            assert len(told) == 1 and told[0]["level"] == "error"
            assert f"{sim.base_url}/api/2/enable/demo" in told[0]["hint"]
            stuck = run_cli("status", port=bridge.port)
            assert stuck.returncode == 0, stuck.stderr
            assert table(stuck.stdout)["role"].startswith("leader")
            assert table(stuck.stdout)["last record"] == "never"

            form = {"grant_type": "client_credentials", "client_id": "sim-client"}
            form |= {"client_secret": "sim-secret"}
            token = httpx.post(sim.token_url, data=form).json()["access_token"]
            headers = {"Authorization": f"Bearer {token}", "x-api-key": "sim-client"}
            httpx.get(f"{sim.base_url}/api/2/enable/demo", headers=headers).raise_for_status()
            wait_until(bridge.streaming, 60, "the same process to stream")
            wait_until(lambda: (bridge.status() or {}).get("last_record_at"), 30, "a record")
            assert metric("livestream_bridge_upstream_fatal_status", status="424") == 0
            assert metric("livestream_bridge_upstream_state", state="streaming") == 1
            streaming = run_cli("status", port=bridge.port)
            assert streaming.returncode == 0, streaming.stderr
            rows = table(streaming.stdout)
            assert rows["upstream"] == "streaming" and rows["last record"].endswith(" ago")
            assert "counters:" in streaming.stdout
        finally:
            stopped = bridge.stop()
        assert stopped == 0
        assert run_cli("status", port=bridge.port).returncode == 1
