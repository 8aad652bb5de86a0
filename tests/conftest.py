"""Shared fixtures: a real Kafka broker for the session and unique topics per test, and a
real kube-apiserver for the session (with its admin client and a namespace per test).

Helpers live in ``tests/kafkautil.py`` and ``tests/kubeutil.py``; import them as
``from tests.kafkautil import ...``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # makes ``tests.kafkautil`` importable however pytest is started
    sys.path.insert(0, _ROOT)

from tests.kafkautil import (  # noqa: E402
    create_topic,
    delete_topics,
    kafka_local,
    unique_topic_name,
)
from tests.kubeutil import (  # noqa: E402
    KubeAdmin,
    KubeServer,
    kube_local,
    kube_server_from_env,
    parse_env,
    unique,
)

KAFKA_IMAGE = os.environ.get("KAFKA_TEST_IMAGE", "confluentinc/cp-kafka:7.9.0")


def _docker_answers() -> bool:
    """True when a Docker engine answers a ping (cheap; any failure means no)."""
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if host.startswith("unix://"):
        # docker-py does not close its socket when the connect fails; the garbage collector
        # does, later, in whichever test runs then (a ResourceWarning, an error there). So
        # knock on the socket ourselves first, with a socket we close.
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(3)
                probe.connect(host.removeprefix("unix://"))
        except OSError:
            return False
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a real broker: $KAFKA_BOOTSTRAP_SERVERS, else a testcontainers
    Kafka when Docker answers, else ``scripts/kafka-local start`` (stopped at session end
    only if this fixture started it; set KAFKA_LOCAL_KEEP=1 to leave it running)."""
    env_bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if env_bootstrap:
        yield env_bootstrap
        return

    problems: list[str] = ["KAFKA_BOOTSTRAP_SERVERS is not set"]
    if _docker_answers():
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # older testcontainers layout
            from testcontainers.kafka import KafkaContainer
        container = (
            KafkaContainer(KAFKA_IMAGE)
            .with_kraft()
            .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
            .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
            .with_env("KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS", "1000")
        )
        try:
            container.start()
        except Exception as exc:
            problems.append(f"testcontainers KafkaContainer({KAFKA_IMAGE}) failed: {exc!r}")
        else:
            try:
                yield container.get_bootstrap_server()
            finally:
                container.stop()
            return
    else:
        problems.append("no Docker engine answered (testcontainers unavailable)")

    before = kafka_local("status")
    started = kafka_local("start")
    if started.returncode == 0 and started.stdout.strip():
        address = started.stdout.strip().splitlines()[-1]
        we_started = before.returncode != 0 and "already running" not in started.stderr
        try:
            yield address
        finally:
            if we_started and os.environ.get("KAFKA_LOCAL_KEEP") != "1":
                kafka_local("stop", timeout=120)
        return
    problems.append(
        f"scripts/kafka-local start failed (exit {started.returncode}): "
        f"{started.stderr.strip()[-3000:]}"
    )
    pytest.fail(
        "no Kafka broker for the integration tests. Provide one of: (1) KAFKA_BOOTSTRAP_SERVERS="
        "host:port, (2) a Docker engine for testcontainers, (3) Java 17+ and Maven for "
        "scripts/kafka-local.\n" + "\n".join(problems),
        pytrace=False,
    )


@pytest.fixture
def topic_factory(
    kafka_bootstrap: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., str]]:
    """``make(partitions=3, *, config=None, replication=1) -> name``: creates a unique topic
    named after the test and waits until it is ready; the topics are deleted afterwards."""
    created: list[str] = []

    def make(
        partitions: int = 3, *, config: dict[str, str] | None = None, replication: int = 1
    ) -> str:
        name = unique_topic_name(request.node.name)
        create_topic(
            kafka_bootstrap, name, partitions=partitions, replication=replication, config=config
        )
        created.append(name)
        return name

    yield make
    try:
        delete_topics(kafka_bootstrap, created)
    except Exception as exc:  # cleanup only; never mask the test's own outcome
        print(f"topic cleanup failed: {exc!r}", file=sys.stderr)


@pytest.fixture(scope="session")
def kube() -> Iterator[KubeServer]:
    """A real kube-apiserver: from the environment, else ``scripts/kube-local start``
    (stopped at the end if this fixture started it, unless KUBE_LOCAL_KEEP=1)."""
    env = kube_server_from_env()
    if env is not None:
        yield env
        return
    before = kube_local("status")
    try:
        started = kube_local("start", timeout=3500)
        problem = f"exit {started.returncode}:\n{started.stderr.strip()[-3000:]}"
    except subprocess.TimeoutExpired:
        started, problem = None, "no answer within 3500 s"
    if started is None or started.returncode != 0:
        pytest.fail(
            "no kube-apiserver for the Kubernetes election tests: set KUBE_LOCAL_SERVER, "
            "KUBE_LOCAL_ADMIN_TOKEN and KUBE_LOCAL_CA, or make `scripts/kube-local start` "
            f"work ({problem})",
            pytrace=False,
        )
    values = parse_env(kube_local("env").stdout)
    try:
        yield KubeServer(
            values["KUBE_LOCAL_SERVER"],
            values["KUBE_LOCAL_ADMIN_TOKEN"],
            values["KUBE_LOCAL_CA"],
            values.get("KUBE_LOCAL_CLIENT_CERT", ""),
            values.get("KUBE_LOCAL_CLIENT_KEY", ""),
        )
    finally:
        if before.returncode != 0 and os.environ.get("KUBE_LOCAL_KEEP") != "1":
            kube_local("stop")


@pytest.fixture(scope="session")
def admin(kube: KubeServer) -> Iterator[KubeAdmin]:
    """The API as cluster admin."""
    client = KubeAdmin(kube)
    yield client
    client.close()


@pytest.fixture
def ns(admin: KubeAdmin) -> str:
    """A fresh namespace per test (no controller-manager runs, so none is ever deleted)."""
    name = unique("lease-test")
    admin.create_namespace(name)
    return name
