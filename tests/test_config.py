"""Settings: every bad value is one line naming its variable, exit 2, and no secret echoed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.configload import (
    env_table,
    known_env_names,
    load_settings,
    masked,
    secret_env_names,
)
from bridge.errors import ConfigError
from bridge.secrets import secret_values

ROOT = Path(__file__).resolve().parents[1]
BASE = {
    "BRIDGE_LIVESTREAM__URL": "https://livestream.example/api/1/stream/demo",
    "BRIDGE_AUTH__CLIENT_ID": "client-abc",
    "BRIDGE_AUTH__CLIENT_SECRET": "s3cr3t-VALUE-never-shown",
    "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9092",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """A clean BRIDGE_* environment holding the minimal valid settings."""
    for name in list(os.environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)
    for name, value in BASE.items():
        monkeypatch.setenv(name, value)
    yield monkeypatch


def problems(env: pytest.MonkeyPatch, **overrides: str | None) -> list[str]:
    for name, value in overrides.items():
        if value is None:
            env.delenv(name, raising=False)
        else:
            env.setenv(name, value)
    try:
        load_settings(env_file=None)
    except ConfigError as exc:
        return exc.problems
    return []


def test_minimal_settings_load_with_defaults(env: pytest.MonkeyPatch) -> None:
    """The four required values are enough; defaults follow Adobe's rules."""
    settings = load_settings(env_file=None)
    assert settings.livestream.max_connections == 1
    assert settings.livestream.reconnect_grace_s == 60
    assert settings.election.backend == "kafka"
    assert settings.publish.dedupe_window >= 6_000_000


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BRIDGE_LIVESTREAM__MAX_CONNECTIONS", "9"),
        ("BRIDGE_LIVESTREAM__MAX_CONNECTIONS", "0"),
        ("BRIDGE_LIVESTREAM__MAX_CONNECTIONS", "many"),
        ("BRIDGE_LIVESTREAM__RESET", "oldest"),
        ("BRIDGE_LIVESTREAM__SMOOTHING_BUCKET_SIZE", "7201"),
        ("BRIDGE_LIVESTREAM__URL", "ftp://example/stream"),
        ("BRIDGE_LIVESTREAM__RECONNECT_GRACE_S", "-1"),
        ("BRIDGE_KAFKA__PROPERTIES", "{not json"),
        ("BRIDGE_ELECTION__BACKEND", "zookeeper"),
        ("BRIDGE_ELECTION__RENEW_DEADLINE_S", "30"),
        ("BRIDGE_HTTP__PORT", "70000"),
        ("BRIDGE_LOG__FORMAT", "xml"),
        ("BRIDGE_LIVESTREAM__MAXCONNECTIONS", "2"),
    ],
)
def test_each_bad_value_is_one_line_naming_the_variable(
    env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """A wrong or unknown variable yields exactly one problem line, and it names that variable."""
    lines = problems(env, **{name: value})
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{name}: "), lines


@pytest.mark.parametrize("name", sorted(set(BASE) - {"BRIDGE_AUTH__CLIENT_ID"}))
def test_missing_required_value_is_named(env: pytest.MonkeyPatch, name: str) -> None:
    """Removing a required variable names it as required."""
    lines = problems(env, **{name: None})
    assert len(lines) == 1, lines
    assert lines[0].split(":")[0] == name


def test_secret_input_is_never_echoed(env: pytest.MonkeyPatch) -> None:
    """Even a wrong secret-adjacent value does not appear in the error text."""
    lines = problems(env, BRIDGE_KAFKA__PROPERTIES="{sasl.password: hunter2-distinct")
    assert lines and "hunter2-distinct" not in " ".join(lines)


def test_masked_output_hides_every_secret(env: pytest.MonkeyPatch) -> None:
    """check-config's view replaces secrets, including password-like client properties."""
    env.setenv("BRIDGE_KAFKA__SASL_PASSWORD", "kafka-pass-distinct")
    env.setenv("BRIDGE_KAFKA__PROPERTIES", '{"ssl.key.password": "keypass-distinct"}')
    text = str(masked(load_settings(env_file=None)))
    for secret in ("s3cr3t-VALUE-never-shown", "kafka-pass-distinct", "keypass-distinct"):
        assert secret not in text
    assert "***" in text


def test_secrets_come_from_files(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A file named like the variable in BRIDGE_SECRETS_DIR supplies a secret (Secret mounts)."""
    env.delenv("BRIDGE_AUTH__CLIENT_SECRET")
    (tmp_path / "BRIDGE_AUTH__CLIENT_SECRET").write_text("from-file-secret\n")
    env.setenv("BRIDGE_SECRETS_DIR", str(tmp_path))
    settings = load_settings(env_file=None)
    assert settings.auth.client_secret is not None
    assert settings.auth.client_secret.get_secret_value() == "from-file-secret"


def test_dotenv_file_is_read_and_checked(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A .env file sets values, and a misspelt name in it is reported too."""
    dotenv = tmp_path / ".env"
    dotenv.write_text("BRIDGE_KAFKA__TOPIC=from-dotenv\n")
    assert load_settings(env_file=dotenv).kafka.topic == "from-dotenv"
    dotenv.write_text("BRIDGE_KAFKA__TOPICS=typo\n")
    with pytest.raises(ConfigError) as err:
        load_settings(env_file=dotenv)
    assert err.value.problems == ["BRIDGE_KAFKA__TOPICS: unknown setting (misspelt?)"]


def test_secret_names_are_the_secretstr_fields() -> None:
    """Every secret is typed SecretStr, so it cannot print by accident."""
    assert secret_env_names() == {
        "BRIDGE_AUTH__CLIENT_SECRET",
        "BRIDGE_AUTH__ACCESS_TOKEN",
        "BRIDGE_KAFKA__SASL_PASSWORD",
    }


def test_fixed_names_exist() -> None:
    """The variable names users and docs rely on are all understood."""
    fixed = """BRIDGE_LIVESTREAM__URL BRIDGE_LIVESTREAM__MAX_CONNECTIONS BRIDGE_LIVESTREAM__RESET
    BRIDGE_LIVESTREAM__RECONNECT_GRACE_S BRIDGE_AUTH__TOKEN_URL BRIDGE_AUTH__CLIENT_ID
    BRIDGE_AUTH__CLIENT_SECRET BRIDGE_AUTH__SCOPE BRIDGE_AUTH__ACCESS_TOKEN
    BRIDGE_KAFKA__BOOTSTRAP_SERVERS BRIDGE_KAFKA__TOPIC BRIDGE_KAFKA__DLQ_TOPIC
    BRIDGE_ELECTION__BACKEND BRIDGE_ELECTION__GROUP_ID BRIDGE_HTTP__PORT BRIDGE_LOG__FORMAT
    BRIDGE_LOG__LEVEL"""
    fixed_names = set(fixed.split())
    assert fixed_names <= known_env_names()


def test_readme_table_matches_the_model() -> None:
    """The README's configuration table lists exactly the settings, defaults included."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(BRIDGE_[A-Z_]+)` \| `?([^|`]*)`? \|", readme, flags=re.M)
    documented = {name: default.strip() for name, default in rows}
    expected = {name: default for name, default, _ in env_table()}
    assert documented == expected


def check_config() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", "--env-file", "/nonexistent", "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_exits_2_with_one_line_and_no_traceback(env: pytest.MonkeyPatch) -> None:
    """The CLI turns a bad value into exit 2, one stderr line naming it, no traceback."""
    env.setenv("BRIDGE_LIVESTREAM__MAX_CONNECTIONS", "12")
    proc = check_config()
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "BRIDGE_LIVESTREAM__MAX_CONNECTIONS" in lines[0]
    assert "Traceback" not in proc.stderr


def test_check_config_prints_masked_settings(env: pytest.MonkeyPatch) -> None:
    """A good configuration prints as JSON with exit 0 and secrets masked."""
    proc = check_config()
    assert proc.returncode == 0, proc.stderr
    assert '"client_secret": "***"' in proc.stdout
    assert "s3cr3t-VALUE-never-shown" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BRIDGE_LIVESTREAM__URL", "http://livestream.example/api/1/stream/demo"),
        ("BRIDGE_AUTH__TOKEN_URL", "http://ims.example/ims/token/v3"),
        ("BRIDGE_AUTH__TOKEN_URL", "not a url"),
        ("BRIDGE_AUTH__TOKEN_URL", "ftp://ims.example/token"),
        ("BRIDGE_LIVESTREAM__URL", "http://127.0.0.1.example/stream"),
    ],
)
def test_cleartext_or_bad_url_is_refused(env: pytest.MonkeyPatch, name: str, value: str) -> None:
    """A URL that would carry credentials in cleartext (or is no URL) is one line naming it."""
    lines = problems(env, **{name: value})
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{name}: "), lines
    assert value not in lines[0]


@pytest.mark.parametrize(
    "base", ["http://127.0.0.1:8081", "http://127.9.8.7", "http://[::1]:9", "http://localhost:1"]
)
def test_loopback_http_is_accepted(env: pytest.MonkeyPatch, base: str) -> None:
    """Plain http to a loopback host (tests, the local demo) needs no opt-out."""
    lines = problems(
        env,
        BRIDGE_LIVESTREAM__URL=f"{base}/api/1/stream/demo",
        BRIDGE_AUTH__TOKEN_URL=f"{base}/ims/token/v3",
    )
    assert lines == []


def test_insecure_opt_out_accepts_http_for_both_urls(env: pytest.MonkeyPatch) -> None:
    """BRIDGE_LIVESTREAM__ALLOW_INSECURE_HTTP lets a non-loopback http URL through, both of them."""
    env.setenv("BRIDGE_LIVESTREAM__URL", "http://simulator:8081/api/1/stream/demo")
    env.setenv("BRIDGE_AUTH__TOKEN_URL", "http://simulator:8081/ims/token/v3")
    assert len(problems(env)) == 2
    assert problems(env, BRIDGE_LIVESTREAM__ALLOW_INSECURE_HTTP="true") == []


def test_check_config_names_the_insecure_urls(env: pytest.MonkeyPatch) -> None:
    """check-config says which URL is cleartext by opt-out and which by loopback, exit 0."""
    env.setenv("BRIDGE_LIVESTREAM__URL", "http://simulator:8081/api/1/stream/demo")
    env.setenv("BRIDGE_AUTH__TOKEN_URL", "http://127.0.0.1:8081/ims/token/v3")
    env.setenv("BRIDGE_LIVESTREAM__ALLOW_INSECURE_HTTP", "true")
    proc = check_config()
    assert proc.returncode == 0, proc.stderr
    notes = proc.stderr.strip().splitlines()
    assert len(notes) == 2, notes
    opted = next(line for line in notes if "BRIDGE_LIVESTREAM__URL" in line)
    assert "BRIDGE_LIVESTREAM__ALLOW_INSECURE_HTTP" in opted
    assert any("BRIDGE_AUTH__TOKEN_URL" in line and "loopback" in line for line in notes)


def test_check_config_refuses_cleartext_url_with_exit_2(env: pytest.MonkeyPatch) -> None:
    """An http URL to a remote host is exit 2, one stderr line naming it, no traceback."""
    env.setenv("BRIDGE_AUTH__TOKEN_URL", "http://ims.example/ims/token/v3")
    proc = check_config()
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "BRIDGE_AUTH__TOKEN_URL" in lines[0], lines
    assert "Traceback" not in proc.stderr


SECRET_PROPERTIES = {
    "sasl.oauthbearer.config": "clientId=app clientSecret=oauth-secret-distinct",
    "ssl.key.pem": "-----BEGIN PRIVATE KEY-----\nMIIpem-distinct\n-----END PRIVATE KEY-----",
    "ssl.key.password": "keypass-distinct",
    "sasl.oauthbearer.client.secret": "client-secret-distinct",
}


def test_masked_output_hides_every_secret_property(env: pytest.MonkeyPatch) -> None:
    """Every client property the secrets rule names is masked, the others are shown."""
    props = {**SECRET_PROPERTIES, "ssl.endpoint.identification.algorithm": "https"}
    env.setenv("BRIDGE_KAFKA__PROPERTIES", json.dumps(props))
    shown = masked(load_settings(env_file=None))["kafka"]["properties"]
    assert shown == {**dict.fromkeys(SECRET_PROPERTIES, "***"), **{
        "ssl.endpoint.identification.algorithm": "https"}}  # fmt: skip


def test_secret_values_are_what_the_rule_names(env: pytest.MonkeyPatch) -> None:
    """secret_values holds every SecretStr value and every secret-named property's value."""
    env.setenv("BRIDGE_KAFKA__SASL_PASSWORD", "kafka-pass-distinct")
    env.setenv("BRIDGE_AUTH__ACCESS_TOKEN", "static-token-distinct")
    env.setenv("BRIDGE_KAFKA__SSL_CA_LOCATION", "/etc/ca-distinct.pem")
    env.setenv("BRIDGE_KAFKA__PROPERTIES", json.dumps({**SECRET_PROPERTIES, "acks": "all"}))
    values = set(secret_values(load_settings(env_file=None)))
    assert values == {
        "s3cr3t-VALUE-never-shown",
        "kafka-pass-distinct",
        "static-token-distinct",
        *SECRET_PROPERTIES.values(),
    }


def test_slots_need_an_election_backend(env: pytest.MonkeyPatch) -> None:
    """maxConnections > 1 with backend none is exit 2 and one line naming the variable
    (a single instance can hold one slot only)."""
    env.setenv("BRIDGE_LIVESTREAM__MAX_CONNECTIONS", "2")
    env.setenv("BRIDGE_ELECTION__BACKEND", "none")
    proc = check_config()
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("configuration error: ")
    assert (
        "BRIDGE_LIVESTREAM__MAX_CONNECTIONS" in lines[0] and "BRIDGE_ELECTION__BACKEND" in lines[0]
    )


def test_slot_names_keep_slot_0_and_suffix_the_others(env: pytest.MonkeyPatch) -> None:
    """Slot 0 is the settings as configured; slot i >= 1 suffixes -i to the transactional
    id, the election topic and group and the Lease, and nothing else."""
    settings = load_settings(env_file=None)
    assert settings.for_slot(0) is settings
    two = settings.for_slot(2)
    assert two.kafka.transactional_id == settings.kafka.transactional_id + "-2"
    assert two.election.topic == settings.election.topic + "-2"
    assert two.election.group_id == settings.election.group_id + "-2"
    assert two.election.lease_name == settings.election.lease_name + "-2"
    assert two.kafka.topic == settings.kafka.topic
    assert two.election.identity == settings.election.identity
