"""Chart policies that follow from the bridge's design: who may reach the HTTP port, and
how the single-instance backend is rolled out and keeps its election state. Rendered by
the pinned helm (scripts/helm), with the fixtures of test_helm."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

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
