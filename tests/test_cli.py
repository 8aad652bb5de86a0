"""The ``run`` command's wiring: one Secrets for the log redactor and the bridge."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Iterator

import pytest

from bridge import cli, service
from bridge.config import Settings
from bridge.observability import EventLog
from bridge.secrets import Secrets

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
