"""Helpers for the tests that need a real kube-apiserver (``scripts/kube-local``).

``KubeAdmin`` talks to the API with the admin token (namespaces, RBAC, TokenRequest,
raw Lease reads); ``LeaseWatch`` records every change of one Lease through the watch API;
``TcpRelay`` is a loopback TCP forwarder whose ``cut()`` makes the API unreachable for the
one client that goes through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import ssl
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.testutil import wait_until

ROOT = Path(__file__).resolve().parent.parent
KUBE_LOCAL = ROOT / "scripts" / "kube-local"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"


def kube_local(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``scripts/kube-local ARGS`` and capture its output."""
    return subprocess.run(
        [str(KUBE_LOCAL), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def parse_env(text: str) -> dict[str, str]:
    """``KEY=value`` lines (as printed by ``kube-local env``) into a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("KUBE_LOCAL_"):
            out[key] = value.strip().strip("'\"")
    return out


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class KubeServer:
    """Where the API server is and how to reach it as admin."""

    server: str
    token: str
    ca: str
    client_cert: str = ""  # an admin client certificate and key (x509 authentication)
    client_key: str = ""


class KubeAdmin:
    """The API as the static admin (group system:masters)."""

    def __init__(self, kube: KubeServer) -> None:
        self.kube = kube
        self.http = httpx.Client(
            base_url=kube.server,
            verify=ssl.create_default_context(cafile=kube.ca),
            timeout=10,
            headers={"Authorization": f"Bearer {kube.token}"},
        )

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return self.http.request(method, path, json=body)

    def ok(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        resp = self.request(method, path, body)
        if resp.status_code >= 300:
            raise AssertionError(f"{method} {path} -> {resp.status_code}: {resp.text[:500]}")
        result: dict[str, Any] = resp.json()
        return result

    def create_namespace(self, name: str) -> None:
        self.ok("POST", "/api/v1/namespaces", {"metadata": {"name": name}})

    def create_lease_role(self, ns: str, sa: str, lease: str, *more: str) -> str:
        """A ServiceAccount with ONLY the chart's Lease rights: get/update on the named
        Lease(s) (the slots it may hold), get on the other slot Leases up to ``<lease>-7``
        (the check before connecting reads them), create on leases; returns the
        RoleBinding's name."""
        held = [lease, *more]
        others = [f"{lease}-{i}" for i in range(1, 8) if f"{lease}-{i}" not in held]
        self.ok("POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": sa}})
        rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}"
        rules = [
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": held,
                "verbs": ["get", "update"],
            },
            *(
                [
                    {
                        "apiGroups": ["coordination.k8s.io"],
                        "resources": ["leases"],
                        "resourceNames": others,
                        "verbs": ["get"],
                    }
                ]
                if others
                else []
            ),
            # create cannot be limited by resourceNames: the name is not known to RBAC then
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        ]
        self.ok("POST", f"{rbac}/roles", {"metadata": {"name": sa}, "rules": rules})
        binding = {
            "metadata": {"name": sa},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
        }
        self.ok("POST", f"{rbac}/rolebindings", binding)
        return sa

    def delete_rolebinding(self, ns: str, name: str) -> None:
        self.ok("DELETE", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings/{name}")

    def mint_token(self, ns: str, sa: str, seconds: int = 3600) -> str:
        """A bound ServiceAccount token from the TokenRequest API."""
        body: dict[str, Any] = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest"}
        body["spec"] = {"expirationSeconds": seconds}
        out = self.ok("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token", body)
        token: str = out["status"]["token"]
        return token

    def lease(self, ns: str, name: str) -> dict[str, Any] | None:
        resp = self.request("GET", f"{LEASES.format(ns=ns)}/{name}")
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def holder(self, ns: str, name: str) -> str | None:
        lease = self.lease(ns, name)
        if lease is None:
            return None
        return lease.get("spec", {}).get("holderIdentity") or None


def write_kubeconfig(
    path: Path, kube: KubeServer, token: str, *, server: str | None = None, ns: str | None = None
) -> Path:
    """A kubeconfig in the usual YAML form, for ``token`` against the test server."""
    context: dict[str, Any] = {"cluster": "kube-local", "user": "u"}
    if ns:
        context["namespace"] = ns
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kube-local",
                "cluster": {"server": server or kube.server, "certificate-authority": kube.ca},
            }
        ],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "ctx", "context": context}],
        "current-context": "ctx",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@dataclass
class LeaseWatch:
    """Streams every event of one Lease (watch API) into ``events``."""

    admin: KubeAdmin
    ns: str
    name: str
    events: list[tuple[str, str, int, str]] = field(default_factory=list)  # type, holder, n, rv
    error: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> LeaseWatch:
        self._thread = threading.Thread(target=self._run, name="lease-watch", daemon=True)
        self._thread.start()
        wait_until(self._ready.is_set, 10, "the watch to open")
        return self

    def _run(self) -> None:
        params = {
            "watch": "true",
            "fieldSelector": f"metadata.name={self.name}",
            "allowWatchBookmarks": "false",
        }
        path = LEASES.format(ns=self.ns)
        rv = ""
        try:
            while not self._stop.is_set():
                if rv:
                    params["resourceVersion"] = rv
                timeout = httpx.Timeout(10, read=1.0)
                try:
                    with self.admin.http.stream("GET", path, params=params, timeout=timeout) as r:
                        r.raise_for_status()
                        self._ready.set()
                        for line in r.iter_lines():
                            if not line:
                                continue
                            event = json.loads(line)
                            obj = event["object"]
                            if event["type"] == "ERROR":
                                raise AssertionError(f"watch error: {obj}")
                            spec = obj.get("spec", {})
                            rv = obj["metadata"]["resourceVersion"]
                            self.events.append(
                                (
                                    event["type"],
                                    spec.get("holderIdentity") or "",
                                    int(spec.get("leaseTransitions") or 0),
                                    rv,
                                )
                            )
                except httpx.ReadTimeout:
                    continue  # quiet stream: reopen from the last resourceVersion
        except BaseException as exc:
            self.error.append(exc)
            self._ready.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        if self.error:
            raise self.error[0]


class TcpRelay:
    """127.0.0.1:<port> -> target; ``cut()`` drops every connection and refuses new ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._cut = threading.Event()
        threading.Thread(target=self._accept, name="tcp-relay", daemon=True).start()

    def _accept(self) -> None:
        while not self._cut.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._cut.is_set():
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._cut.is_set():
                readable, _, _ = select.select([a, b], [], [], 0.2)
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    peers[s].sendall(data)
        except OSError:
            return
        finally:
            a.close()
            b.close()

    def cut(self) -> None:
        self._cut.set()
        self.listener.close()
        with self._lock:
            for s in self._conns:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


def kube_server_from_env() -> KubeServer | None:
    """The server named by KUBE_LOCAL_SERVER/_ADMIN_TOKEN/_CA, if all three are set (and
    KUBE_LOCAL_CLIENT_CERT/_KEY, which only the client-certificate test needs)."""
    server = os.environ.get("KUBE_LOCAL_SERVER", "").strip()
    token = os.environ.get("KUBE_LOCAL_ADMIN_TOKEN", "").strip()
    ca = os.environ.get("KUBE_LOCAL_CA", "").strip()
    cert = os.environ.get("KUBE_LOCAL_CLIENT_CERT", "").strip()
    key = os.environ.get("KUBE_LOCAL_CLIENT_KEY", "").strip()
    if server and token and ca:
        return KubeServer(server, token, ca, cert, key)
    return None


def bridge_settings(**election: Any) -> Any:
    """Settings with dummy upstream and Kafka sections and the given election fields."""
    from bridge.config import (
        AuthSettings,
        ElectionSettings,
        KafkaSettings,
        LivestreamSettings,
        Settings,
    )

    return Settings(
        livestream=LivestreamSettings(url="https://livestream.invalid/x"),
        auth=AuthSettings(access_token="unused"),
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        election=ElectionSettings(backend="kubernetes", **election),
        _env_file=None,
    )


def _child(spec: str) -> None:
    """``python -m tests.kubeutil child JSON``: lead, announce, print, then hang until killed
    (the crash test SIGKILLs this process while it holds the Lease)."""
    from bridge.election.kubernetes import KubernetesElection
    from bridge.observability import Metrics, State

    election = KubernetesElection(bridge_settings(**json.loads(spec)), Metrics(), State())
    election.start()
    term = election.wait_for_leadership(threading.Event())
    assert term is not None
    election.announce_connected()
    print(f"LEADING {term.number}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["child"]:
        _child(sys.argv[2])


def kube_timeout(seconds: float = 420) -> pytest.MarkDecorator:
    """The timeout of a test that needs the kube-apiserver: without a server in the
    environment and without the binaries, the session fixture builds kube-apiserver first
    (10-20 minutes on 2 cores), inside the first Kubernetes test's timeout."""
    needs_build = kube_server_from_env() is None and kube_local("built").returncode != 0
    return pytest.mark.timeout(3600 if needs_build else seconds)
