"""SASL_SSL end to end: a broker of its own with a SCRAM-SHA-512 listener over TLS.

``scripts/kafka-local`` opens the SASL_SSL listener (KAFKA_LOCAL_SASL_SSL_PORT), makes a
test CA and a broker certificate for 127.0.0.1 and creates the SCRAM user; the broker's
inter-broker and controller listeners stay PLAINTEXT, and the test reads the topics back
through the PLAINTEXT listener.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from livestream_sim import Simulator, SimulatorConfig
from tests.harness import (
    BridgeProc,
    OwnBroker,
    bridge_env,
    log_events,
    scrape,
    wait_for_all,
)
from tests.testutil import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

SCRAM_PASSWORD = f"scram-{secrets.token_hex(12)}"


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnBroker]:
    """A broker with a SASL_SSL (SCRAM-SHA-512) listener next to its PLAINTEXT one."""
    broker = OwnBroker(
        tmp_path_factory.mktemp("secure") / "kafka",
        sasl_ssl_port=free_port(),
        scram_user="bridge",
        scram_password=SCRAM_PASSWORD,
    )
    took = broker.start()
    print(f"\nSASL_SSL broker {broker.sasl_bootstrap} ready in {took:.1f}s")
    try:
        yield broker
    finally:
        broker.kill()


def secure_bridge(
    broker: OwnBroker, sim: Simulator, tmp_path: Path, *, password: str, ca: Path, **extra: str
) -> BridgeProc:
    env = bridge_env(
        sim,
        broker.sasl_bootstrap,
        BRIDGE_KAFKA__SECURITY_PROTOCOL="SASL_SSL",
        BRIDGE_KAFKA__SASL_MECHANISM="SCRAM-SHA-512",
        BRIDGE_KAFKA__SASL_USERNAME=broker.scram_user,
        BRIDGE_KAFKA__SASL_PASSWORD=password,
        BRIDGE_KAFKA__SSL_CA_LOCATION=str(ca),
        **extra,
    )
    return BridgeProc("secure", env, tmp_path)


def test_bridge_streams_over_sasl_ssl(secure_broker: OwnBroker, tmp_path: Path) -> None:
    """Hits and the election run over SCRAM-SHA-512 + TLS; every hit lands once, and the
    SASL password appears in no log line and no endpoint answer."""
    cfg = SimulatorConfig(rate=2000.0, total_hits=4000, ghost_s=5.0, replay_on_resume=5000)
    with Simulator(cfg) as sim:
        bridge = secure_bridge(
            secure_broker, sim, tmp_path, password=SCRAM_PASSWORD, ca=secure_broker.ca_file
        ).start()
        answers: list[bytes] = []
        try:
            wait_until(bridge.streaming, 90, "the bridge to stream over SASL_SSL")
            answers += scrape(bridge).values()
            topic = bridge.env["BRIDGE_KAFKA__TOPIC"]
            v = wait_for_all(secure_broker.bootstrap, topic, sim.emitted_hit_ids, timeout=120)
            print(f"\nSCENARIO SASL_SSL: {v.line()}")
            assert (v.lost, v.duplicated, v.unexpected) == ([], [], []), v.line()
            answers += scrape(bridge).values()
        finally:
            code = bridge.stop()
        assert code == 0, bridge.logs()[-3000:]
    assert log_events(bridge, "election.role"), "the Kafka election ran over SASL_SSL too"
    printed = bridge.logs()
    assert SCRAM_PASSWORD not in printed
    assert not [a for a in answers if SCRAM_PASSWORD.encode() in a]


def _refused(bridge: BridgeProc, sim: Simulator) -> tuple[int, float, list[str]]:
    started = time.monotonic()
    bridge.start()
    try:
        code = bridge.wait(45)
    except subprocess.TimeoutExpired:
        bridge.stop()
        raise AssertionError(
            "the bridge retried instead of exiting:\n" + bridge.logs()[-3000:]
        ) from None
    took = time.monotonic() - started
    lines = bridge.logs().splitlines()
    assert sim.attempts() == [], "no upstream connection before Kafka accepted us"
    return code, took, lines


def test_wrong_password_is_one_clear_error_and_exit_2(
    secure_broker: OwnBroker, tmp_path: Path
) -> None:
    """A wrong SCRAM password: exit 2 within seconds with one bridge.config_error line naming
    the SASL settings, a handful of lines in all, and the password printed nowhere."""
    wrong = f"wrong-{secrets.token_hex(8)}"
    with Simulator(SimulatorConfig(rate=100.0)) as sim:
        bridge = secure_bridge(
            secure_broker, sim, tmp_path, password=wrong, ca=secure_broker.ca_file
        )
        code, took, lines = _refused(bridge, sim)
    print(f"\nwrong password: exit {code} after {took:.1f}s, {len(lines)} log lines")
    assert code == 2, lines
    errors = log_events(bridge, "bridge.config_error")
    assert len(errors) == 1, lines
    assert "SASL authentication failed" in errors[0]["error"]
    assert "BRIDGE_KAFKA__SASL_PASSWORD" in errors[0]["error"]
    assert took < 20, f"took {took:.1f}s"
    assert len(lines) <= 8, "\n".join(lines)
    assert wrong not in bridge.logs()


def test_untrusted_certificate_is_one_clear_error_and_exit_2(
    secure_broker: OwnBroker, tmp_path: Path
) -> None:
    """A CA file that did not sign the broker's certificate: exit 2 with one line naming
    BRIDGE_KAFKA__SSL_CA_LOCATION, not a retry loop."""
    other_ca = tmp_path / "other-ca.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=not the broker's CA",
            "-keyout",
            str(tmp_path / "other.key"),
            "-out",
            str(other_ca),
        ],
        check=True,
        capture_output=True,
    )
    with Simulator(SimulatorConfig(rate=100.0)) as sim:
        bridge = secure_bridge(secure_broker, sim, tmp_path, password=SCRAM_PASSWORD, ca=other_ca)
        code, took, lines = _refused(bridge, sim)
    print(f"\nuntrusted CA: exit {code} after {took:.1f}s, {len(lines)} log lines")
    assert code == 2, lines
    errors = log_events(bridge, "bridge.config_error")
    assert len(errors) == 1, lines
    assert "BRIDGE_KAFKA__SSL_CA_LOCATION" in errors[0]["error"]
    assert took < 20, f"took {took:.1f}s"
    assert len(lines) <= 8, "\n".join(lines)
