"""The Kubernetes API as the Lease election uses it: where the server and credentials come
from, and the calls on one ``coordination.k8s.io/v1`` Lease over a thin synchronous httpx
client. What the calls mean (acquire, renew, release) is ``bridge.election.kubernetes``.

Credentials: in a pod, the service-account token (re-read per request: bound tokens rotate),
ca.crt and KUBERNETES_SERVICE_HOST/PORT; else ``election.kubeconfig``'s current context
(token, tokenFile or client certificate; YAML needs PyYAML, JSON always parses). RBAC: get
and update on the named Lease, create on leases. The token is never logged.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import ssl
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bridge.config import ElectionSettings
from bridge.errors import ElectionError

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
Json = dict[str, Any]
Token = Callable[[], str | None]


def micro_time(t: float) -> str:
    """MicroTime: RFC 3339 in UTC with microseconds."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _tls(ca_file: str | None, ca_data: str | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=ca_file, cadata=ca_data)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ElectionError(f"cannot load the Kubernetes API CA: {exc.__class__.__name__}") from exc


def in_cluster(sa_dir: Path = SA_DIR) -> tuple[str, ssl.SSLContext, Token, str | None]:
    """(server, TLS, token source, namespace) from the pod's service-account mount."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    if not host:
        raise ElectionError(
            "backend kubernetes: not in a pod (KUBERNETES_SERVICE_HOST unset) and "
            "election.kubeconfig is not set"
        )
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    token_file = sa_dir / "token"
    if _read(token_file) is None:
        raise ElectionError(f"no service-account token in {token_file} (automount disabled?)")
    host = f"[{host}]" if ":" in host else host
    ctx = _tls(str(sa_dir / "ca.crt"), None)
    return f"https://{host}:{port}", ctx, lambda: _read(token_file), _read(sa_dir / "namespace")


def from_kubeconfig(path: str) -> tuple[str, ssl.SSLContext, Token, str | None]:
    """(server, TLS, token source, namespace) of a kubeconfig's current context."""
    file = Path(path).expanduser()
    try:
        text = file.read_text()
        try:
            doc: Any = importlib.import_module("yaml").safe_load(text)
        except ImportError:
            doc = json.loads(text)
    except OSError as exc:
        raise ElectionError(f"cannot read kubeconfig {file}: {exc.strerror}") from exc
    except Exception as exc:  # YAML/JSON syntax: the parser's own error types
        raise ElectionError(f"kubeconfig {file} does not parse ({exc.__class__.__name__})") from exc

    def pick(kind: str, name: object) -> Json:
        for item in (doc.get(f"{kind}s") if isinstance(doc, dict) else None) or []:
            if isinstance(item, dict) and item.get("name") == name:
                return dict(item.get(kind) or {})
        raise ElectionError(f"kubeconfig {file}: no {kind} named {name!r}")

    context = pick("context", doc.get("current-context") if isinstance(doc, dict) else None)
    cluster, user = pick("cluster", context.get("cluster")), pick("user", context.get("user"))
    if user.get("exec") or user.get("auth-provider"):
        raise ElectionError(f"kubeconfig {file}: exec and auth-provider users are not supported")
    server = str(cluster.get("server") or "")
    if not server.startswith("https://"):
        raise ElectionError(f"kubeconfig {file}: the cluster server must be an https:// URL")
    ca, ca_data = cluster.get("certificate-authority"), cluster.get("certificate-authority-data")
    ctx = _tls(ca and str(file.parent / ca), ca_data and base64.b64decode(ca_data).decode())
    with tempfile.TemporaryDirectory() as tmp:  # client certificate: files or inline data
        pair = []
        for key in ("client-certificate", "client-key"):
            if user.get(f"{key}-data"):
                Path(tmp, key).write_bytes(base64.b64decode(user[f"{key}-data"]))
                pair.append(str(Path(tmp, key)))
            elif user.get(key):
                pair.append(str(file.parent / user[key]))
        if len(pair) == 2:
            try:
                ctx.load_cert_chain(pair[0], pair[1])
            except (OSError, ssl.SSLError) as exc:
                raise ElectionError(f"kubeconfig {file}: unusable client certificate") from exc
    token, token_file = user.get("token"), user.get("tokenFile")

    def source() -> str | None:  # a tokenFile is re-read each time, like the pod's token
        return str(token) if token else _read(file.parent / token_file) if token_file else None

    return server, ctx, source, context.get("namespace")


class LeaseApi:
    """The calls on one Lease (and the access review), made with a token read anew each
    time; 401 and 403 become an ElectionError that says what to grant."""

    def __init__(
        self,
        cfg: ElectionSettings,
        identity: str,
        timeout_s: float,
        sa_dir: Path = SA_DIR,
    ) -> None:
        """Find the server, credentials and namespace (pod mount, else kubeconfig) and open
        a client; nothing is sent yet."""
        if cfg.kubeconfig:
            server, tls, self._token, ns = from_kubeconfig(cfg.kubeconfig)
        else:
            server, tls, self._token, ns = in_cluster(sa_dir)
        self.server, self.name, self.identity = server, cfg.lease_name, identity
        self.namespace = (
            cfg.lease_namespace
            or ns
            or _read(sa_dir / "namespace")
            or os.environ.get("POD_NAMESPACE")
            or "default"
        )
        self._timeout = timeout_s
        self._leases = f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"
        self._http = httpx.Client(base_url=server, verify=tls, follow_redirects=False)

    def get(self, *, timeout: float | None = None, name: str | None = None) -> httpx.Response:
        """GET this Lease, or the Lease ``name`` in the same namespace."""
        path = None if name is None else f"{self._leases}/{name}"
        return self.call("GET", "get", path=path, timeout=timeout)

    def create(self, spec: Json) -> httpx.Response:
        meta = {"name": self.name, "namespace": self.namespace}
        lease: Json = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta}
        lease["spec"] = spec
        return self.call("POST", "create", lease, path=self._leases)

    def update(self, lease: Json, *, timeout: float | None = None) -> httpx.Response:
        """PUT the whole Lease: its ``metadata.resourceVersion`` makes a stale write a 409."""
        return self.call("PUT", "update", lease, timeout=timeout)

    def call(
        self,
        method: str,
        verb: str,
        body: Json | None = None,
        *,
        path: str | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        headers = {"Accept": "application/json"}
        token = self._token()  # read anew each time: projected tokens rotate
        if token:
            headers["Authorization"] = f"Bearer {token}"
        wait = self._timeout if timeout is None else max(0.05, min(timeout, self._timeout))
        url = path or f"{self._leases}/{self.name}"
        resp = self._http.request(method, url, json=body, headers=headers, timeout=wait)
        if resp.status_code == 401:
            raise ElectionError("the Kubernetes API refused our credentials (401 Unauthorized)")
        if resp.status_code == 403 and verb != "review":
            raise ElectionError(self._forbidden(verb))
        return resp

    def check_access(self) -> None:
        """Ask (SelfSubjectAccessReview) for each permission the election needs, so that a
        missing one is named at start-up rather than found at the first failover."""
        path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
        for verb in ("get", "update", "create"):
            name = "" if verb == "create" else self.name
            attrs = dict(namespace=self.namespace, verb=verb, resource="leases", name=name)
            attrs["group"] = "coordination.k8s.io"
            review: Json = {
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attrs},
            }
            review["apiVersion"] = "authorization.k8s.io/v1"
            resp = self.call("POST", "review", review, path=path)
            if resp.status_code != 201:
                return  # cannot ask here; the Lease calls themselves will tell
            if not (resp.json().get("status") or {}).get("allowed"):
                raise ElectionError(self._forbidden(verb))

    def close(self) -> None:
        self._http.close()

    def _forbidden(self, verb: str) -> str:
        what = "leases" if verb == "create" else f"leases/{self.name}"
        return (
            f"forbidden: {self.identity} may not {verb} {what} (coordination.k8s.io) in "
            f"namespace {self.namespace}; grant get and update on that Lease and create on leases"
        )
