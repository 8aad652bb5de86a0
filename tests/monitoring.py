"""What the alert, dashboard and real-Prometheus tests share: the chart's rules rendered by
the pinned helm, the dashboard's queries, and the PromQL pieces they are made of."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.observability import Metrics

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "livestream-bridge"
HELM = ROOT / "scripts" / "helm"
DASHBOARD = ROOT / "dashboards" / "livestream-bridge.json"
CHART_DASHBOARD = CHART / "dashboards" / "livestream-bridge.json"
RULE_TESTS = ROOT / "tests" / "promtool" / "livestream-bridge.rules.test.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"
RELEASE, NAMESPACE = "lsb", "streams"
JOB = f"{RELEASE}-livestream-bridge"  # the Service's name: the job label a ServiceMonitor gives
# The one series an alert uses that the bridge does not export: kube-state-metrics' restarts.
KUBE_STATE_METRICS = frozenset({"kube_pod_container_status_restarts_total"})

_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_IDENT = re.compile(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b")
_TRAILING_COMPARISON = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*[0-9.eE+-]+\s*$")
_SET_OPERATOR = re.compile(r"\b(?:and|or|unless)\b(?:\s+(?:on|ignoring)\s*\([^)]*\))?")


def tool(name: str) -> str:
    """Path of a binary of Debian's prometheus package; skips when it is not installed
    (scripts/test installs it: apt-get install prometheus)."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install prometheus; scripts/test does)")
    return path


def helm(*args: str, timeout: float = 1100) -> subprocess.CompletedProcess[str]:
    """The pinned helm (scripts/helm; its first run may build it, hence the long timeout)."""
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def render(*sets: str) -> list[dict[str, Any]]:
    """The chart's objects for release lsb in namespace streams with ``--set`` items;
    fractions go as ``--set-json`` (``--set`` keeps them strings, which the schema refuses)."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for item in sets:
        fraction = re.fullmatch(r"[^=]+=[0-9]*\.[0-9]+", item)
        args += ["--set-json" if fraction else "--set", item]
    result = helm(*args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def rule_file(*sets: str) -> dict[str, Any]:
    """The PrometheusRule's spec (a Prometheus rule file) with the alerts' values ``sets``."""
    docs = render("metrics.prometheusRule.enabled=true", *sets)
    (rule,) = [doc for doc in docs if doc["kind"] == "PrometheusRule"]
    spec: dict[str, Any] = rule["spec"]
    return spec


def alerts(rules: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Alerting rules by name."""
    return {r["alert"]: r for group in rules["groups"] for r in group["rules"] if "alert" in r}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panel_queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) of every query of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in dash["panels"]
        for target in panel.get("targets", [])
    ]


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, label matchers) of every vector selector written with braces."""
    return [(m[1], m[2]) for m in _SELECTOR.finditer(expr)]


def metric_names(expr: str) -> set[str]:
    """Metric names an expression refers to (every selector in it has braces)."""
    return {name for name, _ in selectors(expr)}


def exported_names() -> set[str]:
    """Every series name a bridge's registry can export, whether or not it has a sample
    now (a labelled metric without children has none, and the newest-hit gauges appear
    only after the first commit). The registry's own index of the names it hands out is
    the one list that includes those."""
    return set(Metrics().registry._names_to_collectors)


def measured_parts(expr: str) -> list[str]:
    """The operands of an expression's top-level set operators (and, or, unless), each
    without its final comparison with a threshold: the values the expression judges. Each
    must return series for the expression to mean anything, except absent() fallbacks,
    which must return none while the metric exists."""
    expr = _strip_parens(_TRAILING_COMPARISON.sub("", expr.strip()).strip())
    cuts, depth, last = [], 0, 0
    for match in _SET_OPERATOR.finditer(expr):
        depth += expr.count("(", last, match.start()) - expr.count(")", last, match.start())
        last = match.start()
        if depth == 0:
            cuts.append(match)
    if not cuts:
        return [expr]
    bounds = [0, *[c for m in cuts for c in (m.start(), m.end())], len(expr)]
    return [
        part
        for start, end in zip(bounds[::2], bounds[1::2], strict=True)
        for part in measured_parts(expr[start:end])
    ]


def _strip_parens(expr: str) -> str:
    while expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, char in enumerate(expr):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0 and i < len(expr) - 1:
                return expr  # the first parenthesis closes before the end: not one group
        expr = expr[1:-1].strip()
    return expr


def identifiers(text: str) -> set[str]:
    return set(_IDENT.findall(text))
