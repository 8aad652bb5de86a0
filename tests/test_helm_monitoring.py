"""The chart's monitoring objects (metrics.serviceMonitor, metrics.prometheusRule,
metrics.grafanaDashboard), rendered by the pinned helm with the fixtures of test_helm. The
rules themselves are tested by test_alerts, the dashboard by test_dashboard."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest

from tests.test_helm import CHART, COMPLETE, RELEASE, ROOT, Docs, _kinds, _only, helm, render

__all__ = ["helm", "render"]  # the fixtures, used here by name

pytestmark = pytest.mark.timeout(1200)


MONITORING = (
    "metrics.serviceMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "metrics.grafanaDashboard.enabled=true",
)


def test_monitoring_switches_lint_and_default_off(
    helm: Callable[..., subprocess.CompletedProcess[str]], render: Callable[..., Docs]
) -> None:
    """`helm lint --strict` passes with the three monitoring switches on; each is off by
    default and renders exactly its own object when on."""
    args = [a for s in (*COMPLETE, *MONITORING) for a in ("--set", s)]
    result = helm("lint", "--strict", str(CHART), *args)
    assert result.returncode == 0, result.stdout + result.stderr
    base = _kinds(render())
    kinds = ["ServiceMonitor", "PrometheusRule", "ConfigMap"]
    for switch, kind in zip(MONITORING, kinds, strict=True):
        assert sorted([*base, kind]) == _kinds(render(switch)), switch


def test_servicemonitor_under_metrics_and_legacy_key(render: Callable[..., Docs]) -> None:
    """metrics.serviceMonitor makes the ServiceMonitor, naming instances by pod; keys set
    under the old top-level serviceMonitor still apply and win."""
    monitor = _only(render("metrics.serviceMonitor.enabled=true"), "ServiceMonitor")
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["interval"] == "30s"
    assert endpoint["relabelings"] == [
        {
            "sourceLabels": ["__meta_kubernetes_pod_name"],
            "targetLabel": "instance",
            "action": "replace",
        }
    ]
    legacy = _only(
        render(
            "metrics.serviceMonitor.enabled=true",
            "metrics.serviceMonitor.labels.release=new",
            "serviceMonitor.interval=15s",
        ),
        "ServiceMonitor",
    )
    assert legacy["spec"]["endpoints"][0]["interval"] == "15s"
    assert legacy["metadata"]["labels"]["release"] == "new"
    assert "ServiceMonitor" not in _kinds(render("serviceMonitor.interval=15s"))


def test_prometheus_rule_object(render: Callable[..., Docs]) -> None:
    """The PrometheusRule carries the chart's labels plus metrics.prometheusRule.labels and
    selects this release's job and namespace."""
    rule = _only(
        render("metrics.prometheusRule.enabled=true", "metrics.prometheusRule.labels.release=kp"),
        "PrometheusRule",
    )
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "streams"
    assert rule["metadata"]["labels"]["release"] == "kp"
    assert rule["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    bridge_exprs = [e for e in exprs if "livestream_bridge_" in e]
    assert len(bridge_exprs) == len(exprs) - 1  # the restart alert reads kube-state-metrics
    for expr in bridge_exprs:
        assert f'job="{RELEASE}-livestream-bridge",namespace="streams"' in expr


@pytest.mark.parametrize("slots", [1, 3])
def test_leadership_alerts_count_one_holder_per_slot(
    render: Callable[..., Docs], slots: int
) -> None:
    """NoLeader fires below livestream.maxConnections holders and MultipleLeaders above it,
    so N slot holders at once are the healthy state, not a page."""
    rule = _only(
        render("metrics.prometheusRule.enabled=true", f"livestream.maxConnections={slots}"),
        "PrometheusRule",
    )
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert rules["LivestreamBridgeNoLeader"]["expr"].rstrip().endswith(f") < {slots}")
    multiple = rules["LivestreamBridgeMultipleLeaders"]["expr"].rstrip()
    assert multiple.startswith("sum without (instance, pod) (livestream_bridge_leader{")
    assert multiple.endswith(f"> {slots}")
    summary = rules["LivestreamBridgeNoLeader"]["annotations"]["summary"]
    assert (f"of {slots} Live Stream slots" in summary) == (slots > 1)


def test_grafana_dashboard_configmap(render: Callable[..., Docs]) -> None:
    """The dashboard ConfigMap carries the sidecar's label and the repo's dashboard JSON,
    in Grafana's namespace when one is given."""
    docs = render(
        "metrics.grafanaDashboard.enabled=true",
        "metrics.grafanaDashboard.namespace=monitoring",
        "metrics.grafanaDashboard.annotations.grafana_folder=Streaming",
    )
    config = _only(docs, "ConfigMap")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config["metadata"]["namespace"] == "monitoring"
    assert config["metadata"]["annotations"] == {"grafana_folder": "Streaming"}
    (name,) = config["data"]
    assert name == "livestream-bridge.json"
    repo_file = ROOT / "dashboards" / "livestream-bridge.json"
    assert json.loads(config["data"][name]) == json.loads(repo_file.read_text())
    other = _only(
        render(
            "metrics.grafanaDashboard.enabled=true",
            "metrics.grafanaDashboard.label=dashboards",
            "metrics.grafanaDashboard.labelValue=lsb",
        ),
        "ConfigMap",
    )
    assert other["metadata"]["labels"]["dashboards"] == "lsb"
    assert "grafana_dashboard" not in other["metadata"]["labels"]
    assert other["metadata"]["namespace"] == "streams"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("metrics.grafanaDashboard.enable=true", "enable"),
        ("metrics.prometheusRule.alerts.freshness.seconds=0", "/freshness/seconds"),
        ("metrics.prometheusRule.alerts.noLeader.for=2 minutes", "/noLeader/for"),
        ("metrics.prometheusRule.alerts.leaderless.enabled=true", "leaderless"),
        ("metrics.prometheusRule.runbookBaseUrl=https://x.test/r.md#top", "/runbookBaseUrl"),
    ],
)
def test_schema_rejects_bad_monitoring_values(
    helm: Callable[..., subprocess.CompletedProcess[str]], value: str, message: str
) -> None:
    """values.schema.json refuses misspelt switches, bad thresholds and durations."""
    result = helm("template", RELEASE, str(CHART), "--set", value)
    assert result.returncode != 0
    assert "schema" in result.stderr
    assert message in result.stderr
