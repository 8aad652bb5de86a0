"""The container build and the compose demo, checked by parsing the files (no Docker needed)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
DEMO_ENV_EXAMPLE = ROOT / "deploy" / "demo.env.example"

BRIDGES = ("bridge-a", "bridge-b")
COMPILERS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cmake)\b")


class Instruction(NamedTuple):
    """One Dockerfile instruction: keyword (upper case) and its argument text."""

    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[list[Instruction]]:
    """Split a Dockerfile into stages (lists of instructions), joining continuation lines.

    Global ARGs before the first FROM belong to no stage and are left out.
    """
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continuation are skipped by Docker too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending.strip():
        logical.append(pending)
    stages: list[list[Instruction]] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip())
        if instruction.keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


@pytest.fixture(scope="module")
def stages() -> list[list[Instruction]]:
    """The Dockerfile's stages."""
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(stages: list[list[Instruction]]) -> list[Instruction]:
    """The instructions of the last (runtime) stage."""
    return stages[-1]


def _one(stage: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"expected exactly one {keyword} in the final stage, got {found}"
    return found[0]


def _default(value: str) -> str:
    """What Compose substitutes for ``${VAR:-default}`` when VAR is unset; else ``value``."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match.group(1) if match else value


def _exec_form(instruction: Instruction) -> list[str]:
    value = json.loads(instruction.args)
    assert isinstance(value, list), f"{instruction.keyword} must be exec form (a JSON array)"
    assert all(isinstance(part, str) for part in value)
    return value


def test_dockerfile_is_multi_stage_on_slim_bookworm(stages: list[list[Instruction]]) -> None:
    """The build has a builder stage and a runtime stage, both on the pinned slim base."""
    assert len(stages) >= 2
    text = DOCKERFILE.read_text()
    assert "python:3.11-slim-bookworm" in text
    builder_from = stages[0][0].args.split()
    assert builder_from[-2].upper() == "AS"
    builder = builder_from[-1]
    copies = [i.args for i in stages[-1] if i.keyword == "COPY"]
    assert any(f"--from={builder}" in c and "/opt/venv" in c for c in copies), copies


def test_dependencies_install_before_the_source_is_copied(
    stages: list[list[Instruction]],
) -> None:
    """pyproject.toml is copied and the dependencies installed before bridge/ arrives."""
    builder = stages[0]
    order = [(i.keyword, i.args) for i in builder]
    first_pyproject = next(n for n, (k, a) in enumerate(order) if k == "COPY" and "pyproject" in a)
    deps = next(n for n, (k, a) in enumerate(order) if k == "RUN" and "requirements" in a)
    source = next(n for n, (k, a) in enumerate(order) if k == "COPY" and "bridge/" in a)
    package = next(n for n, (k, a) in enumerate(order) if k == "RUN" and "--no-deps" in a)
    assert first_pyproject < deps < source < package


def test_final_stage_has_no_compilers(final: list[Instruction]) -> None:
    """Nothing in the runtime stage installs a compiler or build tools."""
    for instruction in final:
        if instruction.keyword == "RUN":
            assert not COMPILERS.search(instruction.args), instruction
    assert not any(i.keyword == "RUN" and "apt-get install" in i.args for i in final)


def test_runs_as_numeric_non_root_user(final: list[Instruction]) -> None:
    """USER is numeric uid:gid 10001, so runAsNonRoot can verify it."""
    user = _one(final, "USER").args
    assert re.fullmatch(r"\d+(:\d+)?", user), user
    assert user == "10001:10001"


def test_entrypoint_and_cmd_are_exec_form(final: list[Instruction]) -> None:
    """ENTRYPOINT and CMD are JSON arrays so SIGTERM reaches the Python process."""
    assert _exec_form(_one(final, "ENTRYPOINT")) == ["livestream-bridge"]
    assert _exec_form(_one(final, "CMD")) == ["run"]


def test_healthcheck_uses_the_health_subcommand(final: list[Instruction]) -> None:
    """HEALTHCHECK runs `livestream-bridge health` in exec form."""
    args = _one(final, "HEALTHCHECK").args
    cmd = args[args.index("CMD") + len("CMD") :].strip()
    assert json.loads(cmd) == ["livestream-bridge", "health"]


def test_labels_env_and_port(final: list[Instruction]) -> None:
    """OCI labels, unbuffered output and the HTTP port are declared."""
    labels = " ".join(i.args for i in final if i.keyword == "LABEL")
    for key in ("title", "description", "source", "licenses", "version"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    env = " ".join(i.args for i in final if i.keyword == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    assert _one(final, "EXPOSE").args == "8080"


def test_dockerignore_excludes_local_clutter() -> None:
    """The build context leaves out git, venvs, caches, tests, the chart and secrets."""
    entries = {
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (".git", ".venv", "**/__pycache__", "*.egg-info", ".pytest_cache", "helm"):
        assert needed in entries, needed
    assert "deploy/demo.env" in entries
    assert not {"bridge", "bridge/", "pyproject.toml"} & entries


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml as data (anchors and merge keys resolved by pyyaml)."""
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_compose_has_every_service(compose: dict[str, Any]) -> None:
    """Kafka, the simulator, two bridges and tail are defined."""
    assert set(compose["services"]) >= {"kafka", "simulator", *BRIDGES, "tail"}


def test_kafka_is_single_node_kraft_with_healthcheck(compose: dict[str, Any]) -> None:
    """The broker is apache/kafka in KRaft mode with replication 1 and a CLI healthcheck."""
    kafka = compose["services"]["kafka"]
    assert kafka["image"] == "apache/kafka:4.1.1"
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert str(env["KAFKA_NODE_ID"]) == "1"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith("1@")
    assert "CONTROLLER://" in env["KAFKA_LISTENERS"]
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert str(env[key]) == "1", key
    assert str(env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"]) == "0"
    test = kafka["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert test[1] == "/opt/kafka/bin/kafka-broker-api-versions.sh"
    assert "--bootstrap-server" in test


def test_simulator_listens_on_all_interfaces(compose: dict[str, Any]) -> None:
    """The simulator is built from the Dockerfile and reachable from the other containers."""
    sim = compose["services"]["simulator"]
    assert sim["build"]["dockerfile"] == "Dockerfile"
    command = sim["command"]
    assert command[0] == "simulate"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == "8081"


def test_bridges_depend_on_healthy_kafka(compose: dict[str, Any]) -> None:
    """Each replica waits for a healthy broker and a started simulator."""
    for name in BRIDGES:
        service = compose["services"][name]
        assert service["command"] == ["run"]
        depends = service["depends_on"]
        assert depends["kafka"]["condition"] == "service_healthy"
        assert depends["simulator"]["condition"] == "service_started"
        assert service["build"]["dockerfile"] == "Dockerfile"


def test_bridges_form_one_election_group(compose: dict[str, Any]) -> None:
    """Both replicas use the kafka backend, one group id and distinct identities."""
    envs = [compose["services"][name]["environment"] for name in BRIDGES]
    assert {env["BRIDGE_ELECTION__BACKEND"] for env in envs} == {"kafka"}
    assert len({env["BRIDGE_ELECTION__GROUP_ID"] for env in envs}) == 1
    assert len({env["BRIDGE_ELECTION__IDENTITY"] for env in envs}) == len(BRIDGES)
    for env in envs:
        assert _default(env["BRIDGE_LIVESTREAM__URL"]) == "http://simulator:8081/api/1/stream/demo"
        assert _default(env["BRIDGE_AUTH__TOKEN_URL"]) == "http://simulator:8081/ims/token/v3"
        assert _default(env["BRIDGE_AUTH__CLIENT_ID"]) == "sim-client"
        assert _default(env["BRIDGE_AUTH__CLIENT_SECRET"]) == "sim-secret"
        assert env["BRIDGE_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["BRIDGE_LOG__FORMAT"] == "text"
        assert float(_default(env["BRIDGE_LIVESTREAM__RECONNECT_GRACE_S"])) <= 10


def test_every_bridge_setting_is_a_known_variable(compose: dict[str, Any]) -> None:
    """No BRIDGE_* name in the compose file is one the bridge would reject as unknown."""
    from bridge.configload import known_env_names

    for name in (*BRIDGES, "tail"):
        for key in compose["services"][name]["environment"]:
            assert key in known_env_names(), f"{name}: {key}"


def test_tail_prints_hits_with_the_same_settings(compose: dict[str, Any]) -> None:
    """tail runs the tail subcommand with the bridges' settings after the broker is up."""
    tail = compose["services"]["tail"]
    assert tail["command"][0] == "tail"
    assert tail["depends_on"]["kafka"]["condition"] == "service_healthy"
    bridge_env = compose["services"]["bridge-a"]["environment"]
    for key in (
        "BRIDGE_LIVESTREAM__URL",
        "BRIDGE_AUTH__CLIENT_ID",
        "BRIDGE_KAFKA__BOOTSTRAP_SERVERS",
    ):
        assert tail["environment"][key] == bridge_env[key]


def test_real_stream_overrides_are_optional(compose: dict[str, Any]) -> None:
    """Bridges and tail read deploy/demo.env only if it exists (env_file required: false)."""
    for name in (*BRIDGES, "tail"):
        entries = compose["services"][name]["env_file"]
        assert {"path": "deploy/demo.env", "required": False} in entries
    header = COMPOSE.read_text().split("\nname:", 1)[0]
    assert "deploy/demo.env" in header
    assert "--env-file deploy/demo.env" in header


def test_demo_env_example_names_only_known_settings() -> None:
    """Every variable in deploy/demo.env.example, commented out or not, exists."""
    from bridge.configload import known_env_names

    names = re.findall(r"^#?\s*(BRIDGE_[A-Z_]+)=", DEMO_ENV_EXAMPLE.read_text(), re.MULTILINE)
    assert "BRIDGE_LIVESTREAM__URL" in names
    assert "BRIDGE_AUTH__CLIENT_SECRET" in names
    assert set(names) <= known_env_names()


def test_compose_settings_are_accepted_by_the_bridge(
    compose: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each bridge process of the compose demo, with the file's defaults, has settings the
    bridge accepts: the simulator's plain-http URLs on another container need the explicit
    cleartext opt-out, and the example for a real stream turns that opt-out off."""
    from bridge.configload import load_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POD_NAME", raising=False)
    for name in (*BRIDGES, "tail"):
        for key in [k for k in os.environ if k.startswith("BRIDGE_")]:
            monkeypatch.delenv(key)
        for key, value in compose["services"][name]["environment"].items():
            monkeypatch.setenv(key, _default(str(value)))
        monkeypatch.setenv("BRIDGE_SECRETS_DIR", str(tmp_path / "no-secrets"))
        settings = load_settings(env_file=None)
        assert settings.livestream.url.startswith("http://simulator:"), name
    example = dict(
        re.findall(r"^(BRIDGE_[A-Z_]+)=(.*)$", DEMO_ENV_EXAMPLE.read_text(), re.MULTILINE)
    )
    assert example["BRIDGE_LIVESTREAM__ALLOW_INSECURE_HTTP"] == "false"
    assert example["BRIDGE_LIVESTREAM__URL"].startswith("https://")
