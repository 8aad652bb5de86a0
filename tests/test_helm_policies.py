"""Chart policies that follow from the bridge's design: who may reach the HTTP port, how
the single-instance backend is rolled out and keeps its election state, and how the
livestream.maxConnections slots size, spread, protect and authorize the replicas. Rendered
by the pinned helm (scripts/helm), with the fixtures of test_helm."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.configload import known_env_names
from tests.test_helm import CHART, RELEASE, Docs, _container, _env, _only, helm, render

__all__ = ["helm", "render"]  # the fixtures, used here by name

pytestmark = pytest.mark.timeout(1200)


def test_network_policy_ingress_is_limited_to_prometheus_by_default(
    render: Callable[..., Docs], helm: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """By default only pods labelled app.kubernetes.io/name=prometheus may reach port 8080
    (kubelet probes come from the node, which a NetworkPolicy always lets through); other
    peers replace the default, and an empty list (from anywhere) is refused."""
    ingress = _only(render("networkPolicy.enabled=true"), "NetworkPolicy")["spec"]["ingress"]
    assert len(ingress) == 1
    assert ingress[0]["from"] == [
        {
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]
    own = render(
        "networkPolicy.enabled=true",
        "networkPolicy.ingress.from[0].podSelector.matchLabels.role=scraper",
    )
    peers = _only(own, "NetworkPolicy")["spec"]["ingress"][0]["from"]
    assert peers == [{"podSelector": {"matchLabels": {"role": "scraper"}}}]
    result = helm(
        "template", RELEASE, str(CHART), "--set", "networkPolicy.enabled=true",
        "--set-json", "networkPolicy.ingress.from=[]",
    )  # fmt: skip
    assert result.returncode != 0
    assert "/networkPolicy/ingress/from" in result.stderr
    unset = helm(
        "template", RELEASE, str(CHART), "--set", "networkPolicy.enabled=true",
        "--set", "networkPolicy.ingress.from=null",
    )  # fmt: skip
    assert unset.returncode != 0
    assert "would admit everyone" in unset.stderr
    values = (CHART / "values.yaml").read_text()
    comment = values[values.index("networkPolicy:") : values.index("egress:")]
    assert "probes" in comment and "prometheus" in comment


def test_rolling_update_only_with_an_election(render: Callable[..., Docs]) -> None:
    """A pair overlaps one surge pod during a rollout; the single instance (backend none)
    is replaced with Recreate, so the old pod is gone before the new one connects."""
    for backend in ("kafka", "kubernetes"):
        strategy = _only(render(f"election.backend={backend}"), "Deployment")["spec"]["strategy"]
        assert strategy == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        }, backend
    single = _only(render("election.backend=none", "replicaCount=1"), "Deployment")
    assert single["spec"]["strategy"] == {"type": "Recreate"}
    assert single["spec"]["replicas"] == 1


def test_single_instance_keeps_its_state_across_container_restarts(
    render: Callable[..., Docs],
) -> None:
    """Backend none: the election state file lies on an emptyDir of the pod (it survives a
    crash loop or OOM kill of the container); the other backends get neither."""
    docs = render("election.backend=none", "replicaCount=1")
    state = _env(docs)["BRIDGE_ELECTION__STATE_FILE"]["value"]
    assert "BRIDGE_ELECTION__STATE_FILE" in known_env_names()
    mounts = {m["mountPath"]: m["name"] for m in _container(docs)["volumeMounts"]}
    directory = str(Path(state).parent)
    assert directory in mounts and directory != "/tmp"
    volumes = {
        v["name"]: v for v in _only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    }
    assert "emptyDir" in volumes[mounts[directory]]
    assert _container(docs)["securityContext"]["readOnlyRootFilesystem"] is True
    for backend in ("kafka", "kubernetes"):
        other = render(f"election.backend={backend}")
        assert "BRIDGE_ELECTION__STATE_FILE" not in _env(other), backend
        assert directory not in {m["mountPath"] for m in _container(other)["volumeMounts"]}


def _pdb_limit(docs: Docs) -> dict[str, Any]:
    spec = _only(docs, "PodDisruptionBudget")["spec"]
    return {k: v for k, v in spec.items() if k in ("minAvailable", "maxUnavailable")}


@pytest.mark.parametrize(
    ("slots", "replicas", "limit"),
    [
        (1, 2, {"maxUnavailable": 1}),
        (2, 3, {"minAvailable": 2}),
        (8, 9, {"minAvailable": 8}),
    ],
)
def test_slots_size_the_deployment_and_its_disruption_budget(
    render: Callable[..., Docs], slots: int, replicas: int, limit: dict[str, int]
) -> None:
    """N slots default to N + 1 replicas spread over nodes (preferred, never required),
    and a drain keeps a holder for every slot (one pod at a time with one slot, as before)."""
    docs = render(f"livestream.maxConnections={slots}")
    deployment = _only(docs, "Deployment")
    assert deployment["spec"]["replicas"] == replicas
    assert _env(docs)["BRIDGE_LIVESTREAM__MAX_CONNECTIONS"]["value"] == str(slots)
    assert _pdb_limit(docs) == limit
    pod = deployment["spec"]["template"]["spec"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert set(pod["affinity"]["podAntiAffinity"]) == {
        "preferredDuringSchedulingIgnoredDuringExecution"
    }
    spread = pod["topologySpreadConstraints"]
    assert [(s["topologyKey"], s["whenUnsatisfiable"]) for s in spread] == [
        ("kubernetes.io/hostname", "ScheduleAnyway")
    ]
    assert spread[0]["labelSelector"]["matchLabels"] == selector


def test_explicit_replica_count_and_budget_win(
    render: Callable[..., Docs], helm: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """An explicit replicaCount replaces N + 1; without a standby the budget falls back to
    one pod at a time (minAvailable = replicas would block every drain); an explicit
    minAvailable or maxUnavailable wins, and setting both is refused."""
    more = render("livestream.maxConnections=2", "replicaCount=5")
    assert _only(more, "Deployment")["spec"]["replicas"] == 5
    assert _pdb_limit(more) == {"minAvailable": 2}
    no_standby = render("livestream.maxConnections=2", "replicaCount=2")
    assert _only(no_standby, "Deployment")["spec"]["replicas"] == 2
    assert _pdb_limit(no_standby) == {"maxUnavailable": 1}
    assert _only(render("replicaCount=3"), "Deployment")["spec"]["replicas"] == 3
    own_min = render("livestream.maxConnections=3", "podDisruptionBudget.minAvailable=1")
    assert _pdb_limit(own_min) == {"minAvailable": 1}
    own_max = render("livestream.maxConnections=3", "podDisruptionBudget.maxUnavailable=50%")
    assert _pdb_limit(own_max) == {"maxUnavailable": "50%"}
    both = helm(
        "template", RELEASE, str(CHART), "--set", "podDisruptionBudget.minAvailable=1",
        "--set", "podDisruptionBudget.maxUnavailable=1",
    )  # fmt: skip
    assert both.returncode != 0
    assert "not both" in both.stderr


@pytest.mark.parametrize("slots", [0, 9, -1])
def test_max_connections_outside_live_streams_range_is_refused(
    helm: Callable[..., subprocess.CompletedProcess[str]], slots: int
) -> None:
    """values.schema.json holds livestream.maxConnections to Live Stream's 1..8."""
    result = helm("template", RELEASE, str(CHART), "--set", f"livestream.maxConnections={slots}")
    assert result.returncode != 0
    assert "/livestream/maxConnections" in result.stderr


def test_single_instance_backend_holds_one_slot_only(
    helm: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """election.backend=none with maxConnections 2 is refused: one instance holds one slot,
    and Adobe would send the other connection's hits to nobody."""
    result = helm(
        "template", RELEASE, str(CHART), "--set", "election.backend=none",
        "--set", "replicaCount=1", "--set", "livestream.maxConnections=2",
    )  # fmt: skip
    assert result.returncode != 0
    assert "maxConnections" in result.stderr


@pytest.mark.parametrize("slots", [2, 8])
def test_kubernetes_role_covers_every_slot_lease(render: Callable[..., Docs], slots: int) -> None:
    """The Role may get/update exactly the N slot Leases (<name>, <name>-1, ...) and only get
    the others up to <name>-7; nothing else is named."""
    docs = render(
        "election.backend=kubernetes",
        "election.leaseName=my-lease",
        f"livestream.maxConnections={slots}",
    )
    named = [r for r in _only(docs, "Role")["rules"] if r.get("resourceNames")]
    held = ["my-lease", *(f"my-lease-{i}" for i in range(1, slots))]
    assert named[0]["resourceNames"] == held
    assert sorted(named[0]["verbs"]) == ["get", "update"]
    read_only = [f"my-lease-{i}" for i in range(slots, 8)]
    if read_only:
        assert len(named) == 2
        assert named[1]["resourceNames"] == read_only
        assert named[1]["verbs"] == ["get"]
    else:
        assert len(named) == 1
    assert _env(docs)["BRIDGE_ELECTION__LEASE_NAME"]["value"] == "my-lease"


@pytest.fixture(scope="module")
def notes(
    helm: Callable[..., subprocess.CompletedProcess[str]], tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., str]:
    """``notes(*set_args)`` -> the chart's NOTES.txt as helm renders it. `helm template`
    leaves NOTES out and `helm install --dry-run` wants a cluster, so a copy of the chart
    renders the same file through `tpl` into a ConfigMap."""
    chart = tmp_path_factory.mktemp("notes") / CHART.name
    shutil.copytree(CHART, chart)
    shutil.copy(CHART / "templates" / "NOTES.txt", chart / "notes-source.txt")
    probe = "templates/zz-notes-probe.yaml"
    (chart / probe).write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: {{ tpl (.Files.Get "notes-source.txt") . | toJson }}\n'
    )

    def run(*sets: str) -> str:
        args = ["template", RELEASE, str(chart), "--namespace", "streams", "-s", probe]
        for item in sets:
            args += ["--set", item]
        result = helm(*args)
        assert result.returncode == 0, result.stderr
        text: str = yaml.safe_load(result.stdout)["data"]["notes"]
        return text

    return run


def test_notes_show_how_to_watch_the_slots(notes: Callable[..., str]) -> None:
    """NOTES names every slot Lease for `kubectl get lease` and the /status slot key with
    several slots, keeps the one-Lease command with one, and warns when replicaCount leaves
    slots without a holder."""
    kube = ("election.backend=kubernetes", "election.leaseName=my-lease")
    two = notes(*kube, "livestream.maxConnections=2")
    assert "3 replica(s)" in two and "2 slot(s)" in two
    assert "get lease my-lease my-lease-1 -o custom-columns=" in two
    assert '"slot": 0..1' in two and '"max_connections": 2' in two
    assert "livestream_bridge_slot" in two
    assert "below livestream.maxConnections" not in two
    one = notes(*kube)
    assert "2 replica(s)" in one
    assert "get lease my-lease -o jsonpath='{.spec.holderIdentity}'" in one
    assert "my-lease-1" not in one
    short = notes(*kube, "livestream.maxConnections=3", "replicaCount=1")
    assert "WARNING: replicaCount (1) is below livestream.maxConnections (3): 2 slot(s)" in short
    kafka = notes("livestream.maxConnections=2")
    assert "get lease" not in kafka and '"slot"' in kafka
