"""No secret leaves the bridge: not in its output, not in any HTTP answer, not in an error.

Distinctive values are used for the OAuth client secret and a static access token, and
every access token the simulator issued is searched for as well (the bridge only ever
held them in memory). Each scenario drives the code paths that log or raise with
credentials in reach: token fetch and re-fetch after a 401, the token endpoint failing,
refused and corrupt streams, a static token refused, refused client credentials, and
``check-config``. The SASL password is held to the same rule in ``tests/test_secure.py``.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from livestream_sim import Simulator, SimulatorConfig
from tests.harness import (
    BridgeProc,
    bridge_env,
    log_events,
    scrape,
    wait_for_all,
)
from tests.testutil import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CLIENT_SECRET = f"CS-{secrets.token_hex(16)}"


def leaks(haystacks: list[bytes], needles: list[str]) -> list[str]:
    """Which of ``needles`` occur in any of ``haystacks`` (named by a short prefix)."""
    found = []
    for needle in needles:
        raw = needle.encode()
        if any(raw in hay for hay in haystacks):
            found.append(needle[:6] + "...")
    return found


def env_for(sim: Simulator, bootstrap: str, **extra: str) -> dict[str, str]:
    return bridge_env(
        sim,
        bootstrap,
        client_secret=CLIENT_SECRET,
        **extra,
    )


def test_oauth_scenario_prints_no_secret_and_no_token(kafka_bootstrap: str, tmp_path: Path) -> None:
    """OAuth at DEBUG through 401s, an IMS outage, 409s and a corrupt stream: neither the
    client secret nor any issued token appears in the output or an endpoint answer."""
    cfg = SimulatorConfig(
        rate=800.0, client_secret=CLIENT_SECRET, ghost_s=2.0, replay_on_resume=20000
    )
    answers: list[bytes] = []
    with Simulator(cfg) as sim:
        env = env_for(
            sim,
            kafka_bootstrap,
            BRIDGE_LOG__LEVEL="DEBUG",
            BRIDGE_LIVESTREAM__BACKOFF_CAP_S="3",
        )
        bridge = BridgeProc("oauth", env, tmp_path).start()
        try:
            wait_until(bridge.streaming, 90, "the bridge to stream")
            answers += scrape(bridge).values()
            # A 401 and a fresh token.
            sim.expire_tokens()
            sim.drop_connections()
            wait_until(lambda: any(a["status"] == 401 for a in sim.attempts()), 30, "a 401")
            wait_until(bridge.streaming, 30, "streaming again")
            answers += scrape(bridge).values()
            # The token endpoint down while a new token is needed.
            sim.set_mode("token_down")
            sim.expire_tokens()
            asked = sim.state()["token_requests"]
            sim.drop_connections()
            wait_until(lambda: sim.state()["token_requests"] >= asked + 2, 30, "token errors")
            answers += scrape(bridge).values()
            # Refusals, then a corrupt stream.
            sim.set_mode("status", code=409)
            wait_until(lambda: any(a["status"] == 409 for a in sim.attempts()), 30, "a 409")
            sim.set_mode("normal")
            wait_until(bridge.streaming, 30, "streaming after the refusals")
            sim.set_mode("garbage")
            wait_until(lambda: log_events(bridge, "bridge.corrupt_stream"), 30, "the garbage")
            wait_until(bridge.streaming, 30, "streaming after the garbage")
            sim.set_mode("pause")
            topic = bridge.env["BRIDGE_KAFKA__TOPIC"]
            v = wait_for_all(kafka_bootstrap, topic, sim.emitted_hit_ids, timeout=120)
            assert (v.lost, v.duplicated) == ([], []), v.line()
            answers += scrape(bridge).values()
        finally:
            code = bridge.stop()
        tokens = sim.issued_tokens()
    assert code == 0
    assert len(tokens) >= 2, "the scenario must have fetched more than one token"
    printed = bridge.logs().encode()
    # The paths that handle credentials really ran (and printed their lines).
    assert len(log_events(bridge, "auth.token_fetched")) >= 2
    attempts = log_events(bridge, "upstream.attempt")
    assert {401, 409} <= {a.get("status") for a in attempts}
    assert any(a.get("outcome") == "error" for a in attempts), "token endpoint errors"
    print(f"\nsearched {len(printed)} bytes of output and {len(answers)} answers for "
          f"the client secret and {len(tokens)} tokens")  # fmt: skip
    assert leaks([printed, *answers], [CLIENT_SECRET, *tokens]) == []


def test_static_token_refused_prints_no_token(kafka_bootstrap: str, tmp_path: Path) -> None:
    """A static access token (text logs), used, then refused with 401 until the process
    gives up (exit 3): the token never appears in the output or an endpoint answer."""
    cfg = SimulatorConfig(rate=500.0, client_secret=CLIENT_SECRET, ghost_s=2.0)
    answers: list[bytes] = []
    with Simulator(cfg) as sim:
        form = {
            "grant_type": "client_credentials",
            "client_id": "sim-client",
            "client_secret": CLIENT_SECRET,
        }
        token = httpx.post(sim.token_url, data=form, timeout=10).json()["access_token"]
        env = env_for(
            sim,
            kafka_bootstrap,
            BRIDGE_AUTH__ACCESS_TOKEN=token,
            BRIDGE_LOG__FORMAT="text",
            BRIDGE_LOG__LEVEL="DEBUG",
            BRIDGE_ELECTION__BACKEND="none",
        )
        for name in ("BRIDGE_AUTH__CLIENT_ID", "BRIDGE_AUTH__CLIENT_SECRET"):
            env.pop(name)
        bridge = BridgeProc("static", env, tmp_path).start()
        try:
            wait_until(bridge.streaming, 60, "the bridge to stream with the static token")
            answers += scrape(bridge).values()
            sim.expire_tokens()
            sim.drop_connections()
            wait_until(
                lambda: sum(a["status"] == 401 for a in sim.attempts()) >= 3, 40, "three 401s"
            )
            answers += scrape(bridge).values()
            code = bridge.wait(30)  # a refused static token is a configuration error
        finally:
            bridge.stop()
        tokens = sim.issued_tokens()
    assert code == 3, bridge.logs()[-2000:]
    printed = bridge.logs()
    assert "static_token_refused" in printed
    assert leaks([printed.encode(), *answers], [token, *tokens, CLIENT_SECRET]) == []


def test_refused_client_secret_exits_3_without_printing_it(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """IMS refuses the client secret: exit 3, and the wrong secret is printed nowhere."""
    wrong = f"WRONG-{secrets.token_hex(16)}"
    with Simulator(SimulatorConfig(rate=100.0, client_secret=CLIENT_SECRET)) as sim:
        env = env_for(sim, kafka_bootstrap, BRIDGE_ELECTION__BACKEND="none")
        env["BRIDGE_AUTH__CLIENT_SECRET"] = wrong
        bridge = BridgeProc("refused", env, tmp_path).start()
        started = time.monotonic()
        try:
            code = bridge.wait(60)
        except subprocess.TimeoutExpired:
            bridge.stop()
            raise AssertionError(bridge.logs()[-3000:]) from None
    print(f"\nrefused client secret: exit {code} after {time.monotonic() - started:.1f}s")
    assert code == 3, bridge.logs()[-3000:]
    assert log_events(bridge, "bridge.upstream_fatal")
    assert wrong not in bridge.logs()


def test_check_config_masks_every_secret(kafka_bootstrap: str, tmp_path: Path) -> None:
    """``check-config`` prints the effective settings without any secret value, including
    those in client properties such as ``sasl.oauthbearer.config`` and ``ssl.key.pem``."""
    token, password = f"TOK-{secrets.token_hex(16)}", f"PW-{secrets.token_hex(16)}"
    oauth, pem = f"OB-{secrets.token_hex(16)}", f"PEM{secrets.token_hex(16)}"
    with Simulator(SimulatorConfig(rate=1.0)) as sim:
        env = env_for(
            sim,
            kafka_bootstrap,
            BRIDGE_AUTH__ACCESS_TOKEN=token,
            BRIDGE_KAFKA__SASL_PASSWORD=password,
            BRIDGE_KAFKA__PROPERTIES=json.dumps(
                {
                    "ssl.key.password": password,
                    "sasl.oauthbearer.config": f"clientId=app clientSecret={oauth}",
                    "ssl.key.pem": f"-----BEGIN PRIVATE KEY-----\n{pem}\n-----END",
                }
            ),
        )
    done = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "--env-file", "/nonexistent", "check-config"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert b"sasl_password" in done.stdout
    assert leaks([done.stdout, done.stderr], [CLIENT_SECRET, token, password, oauth, pem]) == []
