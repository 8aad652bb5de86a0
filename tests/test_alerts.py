"""The chart's alert rules: promtool checks them and runs their unit tests, each alert links
its runbook section, and every threshold is a chart value."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring import (
    KUBE_STATE_METRICS,
    RULE_TESTS,
    RUNBOOK,
    alerts,
    exported_names,
    metric_names,
    rule_file,
    tool,
)

# The first render may build helm from source (scripts/helm).
pytestmark = pytest.mark.timeout(1200)

ISSUE_ALERTS = {
    "LivestreamBridgeNoLeader": "critical",
    "LivestreamBridgeMultipleLeaders": "critical",
    "LivestreamBridgeNotCommitting": "critical",
    "LivestreamBridgeUpstreamRefusals": "warning",
    "LivestreamBridgeUpstreamFatalStatus": "critical",
    "LivestreamBridgeFreshnessHigh": "warning",
    "LivestreamBridgeDeadLetters": "warning",
    "LivestreamBridgeKafkaUnreachable": "critical",
    "LivestreamBridgePodRestarts": "warning",
}

Promtool = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def promtool() -> Promtool:
    """Runs Debian's promtool (skips the module only when it is not installed)."""
    path = tool("promtool")

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [path, *args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False
        )

    return run


@pytest.fixture(scope="module")
def default_rules() -> dict[str, Any]:
    """The rule file the chart renders with its default values."""
    return rule_file()


def _rule_dir(rules: dict[str, Any], where: Path) -> Path:
    """``where`` holding rules.yaml and the unit tests that load it from beside them."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(RULE_TESTS, where / RULE_TESTS.name)
    return where


def test_rules_pass_promtool_check(
    promtool: Promtool, default_rules: dict[str, Any], tmp_path: Path
) -> None:
    """`promtool check rules` accepts the rendered rules: valid PromQL, one rule per alert."""
    where = _rule_dir(default_rules, tmp_path)
    result = promtool("check", "rules", "rules.yaml", cwd=where)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ISSUE_ALERTS)} rules found" in result.stdout


def test_every_alert_passes_its_unit_tests(
    promtool: Promtool, default_rules: dict[str, Any], tmp_path: Path
) -> None:
    """`promtool test rules`: each alert fires when it should and stays silent otherwise."""
    where = _rule_dir(default_rules, tmp_path)
    result = promtool("test", "rules", RULE_TESTS.name, cwd=where)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_unit_tests_cover_firing_and_silence_for_every_alert(
    default_rules: dict[str, Any],
) -> None:
    """The promtool file has, for each alert, a case expecting it and one expecting silence."""
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    names = set(alerts(default_rules))
    assert firing == names
    assert silent == names


# Thresholds moved past what each firing case feeds: every alert's firing case must fail.
HIGHER = {
    "noLeader.for": "10m",
    "multipleLeaders.for": "10m",
    "notCommitting.window": "20m",
    "upstreamRefusals.count": "10",
    "upstreamFatalStatus.for": "5m",
    "freshness.seconds": "2000",
    "deadLetters.perSecond": "1",
    "kafkaUnreachable.seconds": "600",
    "podRestarts.count": "3",
}
# Thresholds moved below what each silent case feeds: its silent case must fail.
LOWER = {
    "noLeader.for": "0m",
    "multipleLeaders.for": "0m",
    "notCommitting.window": "5m",
    "upstreamRefusals.count": "1",
    "freshness.seconds": "30",
    "deadLetters.perSecond": "0.001",
    "kafkaUnreachable.seconds": "30",
    "podRestarts.count": "1",
}
ALERT_OF = {
    "noLeader": "LivestreamBridgeNoLeader",
    "multipleLeaders": "LivestreamBridgeMultipleLeaders",
    "notCommitting": "LivestreamBridgeNotCommitting",
    "upstreamRefusals": "LivestreamBridgeUpstreamRefusals",
    "upstreamFatalStatus": "LivestreamBridgeUpstreamFatalStatus",
    "freshness": "LivestreamBridgeFreshnessHigh",
    "deadLetters": "LivestreamBridgeDeadLetters",
    "kafkaUnreachable": "LivestreamBridgeKafkaUnreachable",
    "podRestarts": "LivestreamBridgePodRestarts",
}


@pytest.mark.parametrize("moved", [HIGHER, LOWER], ids=["higher", "lower"])
def test_unit_tests_catch_moved_thresholds(
    promtool: Promtool, tmp_path: Path, moved: dict[str, str]
) -> None:
    """The unit tests fail, naming each alert, when its threshold is not the default one."""
    rules = rule_file(*[f"metrics.prometheusRule.alerts.{k}={v}" for k, v in moved.items()])
    where = _rule_dir(rules, tmp_path)
    result = promtool("test", "rules", RULE_TESTS.name, cwd=where)
    assert result.returncode != 0
    failed = set(re.findall(r"alertname: (\w+),", result.stdout + result.stderr))
    assert failed == {ALERT_OF[key.split(".")[0]] for key in moved}


def test_alerts_are_the_issues_list(default_rules: dict[str, Any]) -> None:
    """The nine alerts the issue asks for, with their severities, all on by default."""
    found = {name: rule["labels"]["severity"] for name, rule in alerts(default_rules).items()}
    assert found == ISSUE_ALERTS


def test_alerts_use_only_exported_metrics(default_rules: dict[str, Any]) -> None:
    """Every series an alert reads is one the bridge exports, bar kube-state-metrics' one."""
    used = {n for rule in alerts(default_rules).values() for n in metric_names(rule["expr"])}
    assert used - exported_names() == KUBE_STATE_METRICS


def _github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_alert_links_its_runbook_section(default_rules: dict[str, Any]) -> None:
    """summary, description and a runbook_url naming a section of docs/runbook.md that
    exists, for every alert, and a runbook section for no alert that does not exist."""
    headings = re.findall(r"^## (.+)$", RUNBOOK.read_text(), flags=re.MULTILINE)
    anchors = {_github_anchor(h) for h in headings}
    for name, rule in alerts(default_rules).items():
        notes = rule["annotations"]
        assert set(notes) == {"summary", "description", "runbook_url"}, name
        assert notes["summary"].strip()
        assert notes["description"].strip()
        base, _, anchor = notes["runbook_url"].partition("#")
        assert base == "docs/runbook.md"
        assert anchor == name.lower()
        assert anchor in anchors, f"docs/runbook.md has no section for {name}"
    documented = {h for h in headings if h.startswith("LivestreamBridge")}
    assert documented == set(alerts(default_rules))


def test_thresholds_and_switches_are_chart_values() -> None:
    """Alert thresholds, windows, severities, labels, the runbook address and each alert's
    switch come from metrics.prometheusRule values."""
    base = "metrics.prometheusRule"
    rules = alerts(
        rule_file(
            f"{base}.alerts.freshness.seconds=1234",
            f"{base}.alerts.freshness.window=7m",
            f"{base}.alerts.kafkaUnreachable.seconds=45",
            f"{base}.alerts.upstreamRefusals.count=9",
            f"{base}.alerts.upstreamRefusals.window=1h",
            f"{base}.alerts.deadLetters.perSecond=0.25",
            f"{base}.alerts.podRestarts.count=4",
            f"{base}.alerts.noLeader.for=3m",
            f"{base}.alerts.noLeader.severity=page",
            f"{base}.alerts.podRestarts.enabled=false",
            f"{base}.alertLabels.team=streaming",
            f"{base}.runbookBaseUrl=https://git.example.test/bridge/blob/main/docs/runbook.md",
            f'{base}.selector=job="bridge"',
        )
    )
    assert "LivestreamBridgePodRestarts" not in rules
    assert rules["LivestreamBridgeFreshnessHigh"]["expr"].rstrip().endswith("> 1234")
    assert "[7m]" in rules["LivestreamBridgeFreshnessHigh"]["expr"]
    assert rules["LivestreamBridgeKafkaUnreachable"]["expr"].rstrip().endswith("> 45")
    refusals = rules["LivestreamBridgeUpstreamRefusals"]["expr"]
    assert refusals.rstrip().endswith("> 9")
    assert "[1h]" in refusals
    assert rules["LivestreamBridgeDeadLetters"]["expr"].rstrip().endswith("> 0.25")
    assert rules["LivestreamBridgeNoLeader"]["for"] == "3m"
    assert rules["LivestreamBridgeNoLeader"]["labels"] == {"severity": "page", "team": "streaming"}
    assert rules["LivestreamBridgeKafkaUnreachable"]["annotations"]["runbook_url"] == (
        "https://git.example.test/bridge/blob/main/docs/runbook.md#livestreambridgekafkaunreachable"
    )
    for name, rule in rules.items():
        assert 'job="bridge"' in rule["expr"], name
        assert "namespace=" not in rule["expr"], name
