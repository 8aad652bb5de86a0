"""The Helm chart, linted and rendered by the pinned helm (scripts/helm) and checked as data."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.config import PublishSettings
from bridge.configload import known_env_names, load_settings, secret_env_names

ROOT = Path(__file__).resolve().parent.parent
HELM = ROOT / "scripts" / "helm"
CHART = ROOT / "helm" / "livestream-bridge"
SECRETS_DIR = "/etc/livestream-bridge/secrets"
RELEASE = "lsb"

# The first run may build helm from source (scripts/helm), which takes minutes.
pytestmark = pytest.mark.timeout(1200)

# Values that make a complete install; every secret is a sentinel that must only ever
# appear base64-encoded in a Secret.
CLIENT_SECRET = "sentinel-client-secret-7f3a"
ACCESS_TOKEN = "sentinel-access-token-91c2"
SASL_PASSWORD = "sentinel-sasl-password-5e8d"
SENTINELS = (CLIENT_SECRET, ACCESS_TOKEN, SASL_PASSWORD)
COMPLETE = (
    "livestream.url=https://livestream.example.test/api/1/stream/abc",
    "auth.clientId=client-1",
    f"auth.clientSecret={CLIENT_SECRET}",
    f"auth.accessToken={ACCESS_TOKEN}",
    "kafka.bootstrapServers=kafka-0.kafka:9092",
    "kafka.securityProtocol=SASL_SSL",
    "kafka.saslMechanism=SCRAM-SHA-512",
    "kafka.saslUsername=bridge",
    f"kafka.saslPassword={SASL_PASSWORD}",
)

Docs = list[dict[str, Any]]


def _run_helm(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def helm() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs the pinned helm; the first call installs it when the cache lacks it."""
    first = _run_helm("version", "--short", timeout=1100)
    assert first.returncode == 0, f"scripts/helm could not provide helm:\n{first.stderr}"
    assert first.stdout.startswith("v3.22"), first.stdout
    return _run_helm


@pytest.fixture(scope="module")
def render(helm: Callable[..., subprocess.CompletedProcess[str]]) -> Callable[..., Docs]:
    """``render(*set_args)`` -> the rendered objects; fails the test if helm fails."""

    def run(*sets: str, string_sets: tuple[str, ...] = ()) -> Docs:
        args = ["template", RELEASE, str(CHART), "--namespace", "streams"]
        for item in sets:
            args += ["--set", item]
        for item in string_sets:
            args += ["--set-string", item]
        result = helm(*args)
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    return run


def _kinds(docs: Docs) -> list[str]:
    return sorted(doc["kind"] for doc in docs)


def _only(docs: Docs, kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def _container(docs: Docs) -> dict[str, Any]:
    containers = _only(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _env(docs: Docs) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in _container(docs)["env"]}


def _walk_strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _walk_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_strings(value)
    elif node is not None:
        yield str(node)


def test_lint_strict_passes(helm: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """`helm lint --strict` passes with the defaults and with every option switched on."""
    default = helm("lint", "--strict", str(CHART))
    assert default.returncode == 0, default.stdout + default.stderr
    sets = [
        *COMPLETE,
        "election.backend=kubernetes",
        "serviceMonitor.enabled=true",
        "networkPolicy.enabled=true",
    ]
    full = helm("lint", "--strict", str(CHART), *[a for s in sets for a in ("--set", s)])
    assert full.returncode == 0, full.stdout + full.stderr


def test_defaults_render_the_minimal_set(render: Callable[..., Docs]) -> None:
    """Defaults: Deployment, Service, ServiceAccount and PDB; no RBAC, Secret or extras."""
    docs = render()
    assert _kinds(docs) == ["Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]
    pdb = _only(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1


def test_deployment_runs_a_spread_pair(render: Callable[..., Docs]) -> None:
    """Two replicas, preferred anti-affinity across hostnames and a spread over nodes."""
    deployment = _only(render(), "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    terms = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert terms[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert terms[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    spread = pod["topologySpreadConstraints"][0]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"] == selector


def test_probes_and_port(render: Callable[..., Docs]) -> None:
    """Liveness on /healthz and readiness on /readyz, both on port 8080 named http."""
    container = _container(render())
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert _env(render())["BRIDGE_HTTP__PORT"]["value"] == "8080"


def test_security_context_and_resources(render: Callable[..., Docs]) -> None:
    """Non-root 10001, RuntimeDefault seccomp, no privilege, read-only root, 384Mi limit."""
    docs = render()
    pod = _only(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = _container(docs)
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    resources = container["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert resources["limits"]["memory"] == "384Mi"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert pod["automountServiceAccountToken"] is False


def test_grace_period_exceeds_shutdown_timeout(render: Callable[..., Docs]) -> None:
    """terminationGracePeriodSeconds is above the bridge's shutdown timeout, as configured."""
    docs = render()
    grace = _only(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    configured = float(_env(docs)["BRIDGE_PUBLISH__SHUTDOWN_TIMEOUT_S"]["value"])
    assert grace == 40
    assert grace > configured
    assert grace > PublishSettings().shutdown_timeout_s


def test_grace_period_not_above_timeout_is_refused(
    helm: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """A grace period that does not exceed the shutdown timeout fails the render."""
    result = helm("template", RELEASE, str(CHART), "--set", "publish.shutdownTimeoutSeconds=45")
    assert result.returncode != 0
    assert "terminationGracePeriodSeconds" in result.stderr


def test_identity_and_downward_api(render: Callable[..., Docs]) -> None:
    """POD_NAME/POD_NAMESPACE come from the downward API; the identity is the pod name."""
    env = _env(render("election.backend=kubernetes"))
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["BRIDGE_ELECTION__IDENTITY"]["value"] == "$(POD_NAME)"
    assert env["BRIDGE_ELECTION__LEASE_NAMESPACE"]["value"] == "$(POD_NAMESPACE)"
    names = list(env)
    assert names.index("POD_NAME") < names.index("BRIDGE_ELECTION__IDENTITY")


def test_values_become_bridge_settings(render: Callable[..., Docs]) -> None:
    """Configuration values reach the container as the bridge's own variable names."""
    env = _env(
        render(
            *COMPLETE,
            "livestream.maxConnections=2",
            "kafka.topic=hits",
            "kafka.dlqTopic=hits-dlq",
            "election.groupId=grp",
            "log.format=text",
            "log.level=DEBUG",
            "extraEnv[0].name=BRIDGE_LIVESTREAM__SMOOTHING",
            "extraEnv[0].value=true",
        )
    )
    values = {name: item.get("value") for name, item in env.items()}
    assert values["BRIDGE_LIVESTREAM__URL"] == "https://livestream.example.test/api/1/stream/abc"
    assert values["BRIDGE_LIVESTREAM__MAX_CONNECTIONS"] == "2"
    assert values["BRIDGE_KAFKA__BOOTSTRAP_SERVERS"] == "kafka-0.kafka:9092"
    assert values["BRIDGE_KAFKA__TOPIC"] == "hits"
    assert values["BRIDGE_KAFKA__DLQ_TOPIC"] == "hits-dlq"
    assert values["BRIDGE_ELECTION__BACKEND"] == "kafka"
    assert values["BRIDGE_ELECTION__GROUP_ID"] == "grp"
    assert values["BRIDGE_LOG__FORMAT"] == "text"
    assert values["BRIDGE_LOG__LEVEL"] == "DEBUG"
    assert values["BRIDGE_LIVESTREAM__SMOOTHING"] == "true"
    assert values["BRIDGE_SECRETS_DIR"] == SECRETS_DIR
    unknown = {n for n in env if n.startswith("BRIDGE_")} - known_env_names()
    assert unknown == {"BRIDGE_SECRETS_DIR"}, f"settings the bridge would reject: {unknown}"


def test_rendered_pod_configures_the_bridge(
    render: Callable[..., Docs], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rendered env plus the Secret as mounted files load as valid bridge settings."""
    docs = render(*COMPLETE)
    pod_name, namespace = f"{RELEASE}-livestream-bridge-5d9c-x2x7q", "streams"
    for name in [n for n in os.environ if n.startswith("BRIDGE_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("POD_NAME", raising=False)
    for name, item in _env(docs).items():
        if "valueFrom" in item:
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            value = {"metadata.name": pod_name, "metadata.namespace": namespace}[path]
        else:
            value = item["value"]
        value = value.replace("$(POD_NAME)", pod_name).replace("$(POD_NAMESPACE)", namespace)
        monkeypatch.setenv(name, value)
    for key, encoded in _only(docs, "Secret")["data"].items():
        (tmp_path / key).write_bytes(base64.b64decode(encoded))
    monkeypatch.setenv("BRIDGE_SECRETS_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)

    settings = load_settings(env_file=None)

    assert settings.election.identity == pod_name
    assert settings.auth.client_secret is not None
    assert settings.auth.client_secret.get_secret_value() == CLIENT_SECRET
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == SASL_PASSWORD
    assert settings.kafka.transactional_id == f"{RELEASE}-livestream-bridge"
    assert settings.election.group_id == f"{RELEASE}-livestream-bridge-election"
    assert settings.publish.shutdown_timeout_s == 20


def test_secrets_only_by_reference(render: Callable[..., Docs]) -> None:
    """Secret values live only in the Secret and reach the pod as files, never as env."""
    docs = render(*COMPLETE)
    secret = _only(docs, "Secret")
    assert set(secret["data"]) == {
        "BRIDGE_AUTH__CLIENT_SECRET",
        "BRIDGE_AUTH__ACCESS_TOKEN",
        "BRIDGE_KAFKA__SASL_PASSWORD",
    }
    assert set(secret["data"]) <= secret_env_names()
    decoded = {base64.b64decode(v).decode() for v in secret["data"].values()}
    assert decoded == set(SENTINELS)
    assert "ConfigMap" not in _kinds(docs)
    for doc in docs:
        if doc["kind"] != "Secret":
            text = " ".join(_walk_strings(doc))
            assert not any(s in text for s in SENTINELS), f"secret value in {doc['kind']}"
    env = _container(docs)["env"]
    assert not {item["name"] for item in env} & secret_env_names()
    assert all(not any(s in str(item.get("value", "")) for s in SENTINELS) for item in env)
    mount = next(m for m in _container(docs)["volumeMounts"] if m["mountPath"] == SECRETS_DIR)
    assert mount["readOnly"] is True
    volumes = _only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    volume = next(v for v in volumes if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]


def test_existing_secret_is_mounted_not_created(render: Callable[..., Docs]) -> None:
    """With existingSecret no Secret is made, values are ignored and that Secret is mounted."""
    docs = render(*COMPLETE, "existingSecret=adobe-creds")
    assert "Secret" not in _kinds(docs)
    assert not any(s in " ".join(_walk_strings(docs)) for s in SENTINELS)
    volumes = _only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    secret_volume = next(v for v in volumes if "secret" in v)
    assert secret_volume["secret"]["secretName"] == "adobe-creds"
    assert "items" not in secret_volume["secret"]

    mapped = render(
        "existingSecret=adobe-creds", "existingSecretKeys.BRIDGE_AUTH__CLIENT_SECRET=cs"
    )
    volumes = _only(mapped, "Deployment")["spec"]["template"]["spec"]["volumes"]
    items = next(v for v in volumes if "secret" in v)["secret"]["items"]
    assert items == [{"key": "cs", "path": "BRIDGE_AUTH__CLIENT_SECRET"}]


def test_secret_as_env_literal_is_refused(
    helm: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """extraEnv cannot smuggle a secret setting in as a plain value."""
    result = helm(
        "template",
        RELEASE,
        str(CHART),
        "--set",
        "extraEnv[0].name=BRIDGE_KAFKA__SASL_PASSWORD",
        "--set",
        f"extraEnv[0].value={SASL_PASSWORD}",
    )
    assert result.returncode != 0
    assert "must not be an env literal" in result.stderr


@pytest.mark.parametrize("backend", ["kafka", "none"])
def test_no_rbac_without_kubernetes_election(render: Callable[..., Docs], backend: str) -> None:
    """The kafka and none backends get no Role, no RoleBinding and no API token."""
    docs = render(f"election.backend={backend}", "replicaCount=1")
    assert not {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} & set(_kinds(docs))
    assert _only(docs, "ServiceAccount")["automountServiceAccountToken"] is False


def test_kubernetes_election_rbac_is_limited_to_the_lease(render: Callable[..., Docs]) -> None:
    """With one slot the Role may get/update only the named Lease, merely get the seven
    other slots' Leases (the bridge's maxConnections check), plus create (not
    name-limitable)."""
    docs = render("election.backend=kubernetes", "election.leaseName=my-lease")
    role = _only(docs, "Role")
    named = [r for r in role["rules"] if r.get("resourceNames")]
    unnamed = [r for r in role["rules"] if not r.get("resourceNames")]
    assert len(named) == 2
    for rule in named:
        assert rule["apiGroups"] == ["coordination.k8s.io"]
        assert rule["resources"] == ["leases"]
    assert named[0]["resourceNames"] == ["my-lease"]
    assert sorted(named[0]["verbs"]) == ["get", "update"]
    assert named[1]["resourceNames"] == [f"my-lease-{i}" for i in range(1, 8)]
    assert named[1]["verbs"] == ["get"]
    assert [r["verbs"] for r in unnamed] == [["create"]]
    assert unnamed[0]["resources"] == ["leases"]
    binding = _only(docs, "RoleBinding")
    account = _only(docs, "ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"][0]["name"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is True
    pod = _only(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert _env(docs)["BRIDGE_ELECTION__LEASE_NAME"]["value"] == "my-lease"


def test_service_and_servicemonitor(render: Callable[..., Docs]) -> None:
    """The metrics Service exposes http/8080; the ServiceMonitor scrapes it when enabled."""
    docs = render("serviceMonitor.enabled=true", "serviceMonitor.labels.release=prom")
    service = _only(docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    monitor = _only(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_network_policy(render: Callable[..., Docs]) -> None:
    """Ingress only to 8080; egress to DNS, Kafka and HTTPS, and the API server for leases."""
    docs = render(
        "networkPolicy.enabled=true",
        "networkPolicy.egress.kafka.ports={9094}",
        "networkPolicy.egress.kafka.to[0].ipBlock.cidr=10.1.0.0/16",
    )
    policy = _only(docs, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert [rule["ports"] for rule in policy["ingress"]] == [[{"port": "http", "protocol": "TCP"}]]
    egress_ports = [{p["port"] for p in rule["ports"]} for rule in policy["egress"]]
    assert egress_ports == [{53}, {9094}, {443}]
    assert policy["egress"][1]["to"] == [{"ipBlock": {"cidr": "10.1.0.0/16"}}]
    with_lease = _only(
        render("networkPolicy.enabled=true", "election.backend=kubernetes"), "NetworkPolicy"
    )
    assert {p["port"] for p in with_lease["spec"]["egress"][-1]["ports"]} == {443, 6443}


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--set", "election.backend=zookeeper", "/election/backend"),
        ("--set", "replicaCount=two", "/replicaCount"),
        ("--set-string", "replicaCount=2", "/replicaCount"),
        ("--set", "log.format=xml", "/log/format"),
        ("--set", "log.level=TRACE", "/log/level"),
        ("--set", "replicas=2", "replicas"),
        ("--set", "kafka.bootstrap=x:9092", "bootstrap"),
    ],
)
def test_schema_rejects_bad_values(
    helm: Callable[..., subprocess.CompletedProcess[str]], flag: str, value: str, message: str
) -> None:
    """values.schema.json refuses wrong types, unknown enums and misspelt keys."""
    result = helm("template", RELEASE, str(CHART), flag, value)
    assert result.returncode != 0
    assert "schema" in result.stderr
    assert message in result.stderr


def test_single_instance_backend_needs_one_replica(
    helm: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """election.backend=none with two replicas is refused: both would connect upstream."""
    result = helm("template", RELEASE, str(CHART), "--set", "election.backend=none")
    assert result.returncode != 0
    assert "replicaCount" in result.stderr


def test_secret_change_rolls_the_pods(render: Callable[..., Docs]) -> None:
    """The pod template carries a digest of the chart's Secret, so a new secret restarts it."""

    def digest(*sets: str) -> str | None:
        pod = _only(render(*sets), "Deployment")["spec"]["template"]["metadata"]
        value = (pod.get("annotations") or {}).get("checksum/secret")
        return None if value is None else str(value)

    first = digest(f"auth.clientSecret={CLIENT_SECRET}")
    second = digest("auth.clientSecret=another-secret")
    assert first is not None
    assert second is not None
    assert first != second
    assert digest("existingSecret=adobe-creds") is None
