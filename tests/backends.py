"""The two election backends the replica tests (failover, slots) run on: their short
timings, the test parameters that pick them, and each backend's environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kubeutil import KubeAdmin, KubeServer, kube_timeout, write_kubeconfig

SESSION_S = 6.0  # the Kafka election group's session timeout
LEASE_S, RENEW_S, RETRY_S = 4.0, 3.0, 0.5  # the Kubernetes Lease timings
GRACE_S = 2.0
LEASE = "livestream-bridge"

KUBE_TIMEOUT = kube_timeout()
KAFKA = pytest.param("kafka", id="kafka")
KUBERNETES = pytest.param("kubernetes", id="kubernetes", marks=KUBE_TIMEOUT)


def kafka_env() -> dict[str, str]:
    return {"BRIDGE_ELECTION__SESSION_TIMEOUT_MS": str(int(SESSION_S * 1000))}


def kubernetes_env(
    kube: KubeServer, admin: KubeAdmin, ns: str, tmp_path: Path, *leases: str
) -> dict[str, str]:
    """Settings for replicas whose ServiceAccount has the chart's Role for ``leases``
    (default: the one Lease of a single slot), in namespace ``ns``."""
    admin.create_lease_role(ns, "livestream-bridge", *(leases or (LEASE,)))
    token = admin.mint_token(ns, "livestream-bridge")
    kubeconfig = write_kubeconfig(tmp_path / "bridge.kubeconfig", kube, token)
    return {
        "BRIDGE_ELECTION__BACKEND": "kubernetes",
        "BRIDGE_ELECTION__LEASE_NAME": LEASE,
        "BRIDGE_ELECTION__LEASE_NAMESPACE": ns,
        "BRIDGE_ELECTION__LEASE_DURATION_S": str(LEASE_S),
        "BRIDGE_ELECTION__RENEW_DEADLINE_S": str(RENEW_S),
        "BRIDGE_ELECTION__RETRY_PERIOD_S": str(RETRY_S),
        "BRIDGE_ELECTION__KUBECONFIG": str(kubeconfig),
    }
