"""A real Prometheus (Debian's package) scrapes a running pair (real broker, simulator, two
replicas) and evaluates every expression of the dashboard and of the alert rules: each must
return series, so no panel or rule refers to a metric or label that does not exist."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from livestream_sim import Simulator
from tests.harness import (
    BridgeProc,
    bridge_env,
    failover_simulator_config,
    flowing,
    leader_of,
    running_pair,
)
from tests.monitoring import (
    JOB,
    KUBE_STATE_METRICS,
    NAMESPACE,
    alerts,
    dashboard,
    measured_parts,
    metric_names,
    panel_queries,
    rule_file,
    tool,
)
from tests.testutil import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

# Windows short enough for a Prometheus that lives a minute; everything else as shipped.
WINDOW = "20s"
SHORT_WINDOWS = tuple(
    f"metrics.prometheusRule.alerts.{alert}.window={WINDOW}"
    for alert in ("notCommitting", "upstreamRefusals", "freshness", "deadLetters", "podRestarts")
)
# What Grafana puts in place of the dashboard's variables.
VARIABLES = {"$namespace": NAMESPACE, "$job": JOB, "$__rate_interval": WINDOW}


@dataclass
class Prometheus:
    """A ``prometheus`` process of our own: own directory, own port, 1 s scrapes."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as a:
            doc = json.loads(a.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]] | str:
        """The instant vector ``expr`` returns, or the error text Prometheus answers."""
        try:
            data = self.api("query", query=expr)
        except urllib.error.HTTPError as err:
            return str(json.loads(err.read()).get("error", err))
        assert data["resultType"] == "vector", (expr, data["resultType"])
        result: list[dict[str, Any]] = data["result"]
        return result

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False


@pytest.fixture(scope="module")
def prometheus_bin() -> str:
    return tool("prometheus")


@pytest.fixture(scope="module")
def scraped_pair(
    prometheus_bin: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Prometheus, tuple[BridgeProc, BridgeProc]]]:
    """A streaming pair, and a Prometheus that scrapes both replicas as the ServiceMonitor's
    job would label them, with the chart's alert rules loaded; ready once hits are committed."""
    work = tmp_path_factory.mktemp("prometheus")
    (work / "rules.yaml").write_text(yaml.safe_dump(rule_file(*SHORT_WINDOWS), sort_keys=False))
    with (
        Simulator(failover_simulator_config()) as sim,
        running_pair(bridge_env(sim, kafka_bootstrap), work) as pair,
    ):
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules.yaml"],
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{p.port}" for p in pair],
                            "labels": {"namespace": NAMESPACE},
                        }
                    ],
                }
            ],
        }
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = work / "prometheus.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    prometheus_bin,
                    f"--config.file={work / 'prometheus.yml'}",
                    f"--storage.tsdb.path={work / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)
        try:
            wait_until(prom.ready, 60, "Prometheus to be ready")
            leader_of(pair)
            flowing(sim, 1000)
            wait_until(
                lambda: all(t["health"] == "up" for t in prom.api("targets")["activeTargets"]),
                30,
                "both replicas to be scraped",
            )
            wait_until(
                lambda: prom.query(
                    f'sum(livestream_bridge_records_published_total{{job="{JOB}"}}) > 0'
                ),
                60,
                "Prometheus to see committed records",
            )
            yield prom, pair
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _series_by(prom: Prometheus, expr: str, deadline: float) -> list[dict[str, Any]] | str:
    """What ``expr`` returns once it returns series (rates need a few scrapes), or, past
    ``deadline`` (monotonic), whatever it returns then: an empty list or an error."""
    while True:
        result = prom.query(expr)
        if (isinstance(result, list) and result) or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def test_targets_are_the_pair_with_the_chart_job(
    scraped_pair: tuple[Prometheus, tuple[BridgeProc, BridgeProc]],
) -> None:
    """Both replicas are up under the job and namespace the rules and dashboard select."""
    prom, pair = scraped_pair
    targets = prom.api("targets")["activeTargets"]
    assert sorted(t["labels"]["instance"] for t in targets) == sorted(
        f"127.0.0.1:{p.port}" for p in pair
    )
    assert {(t["labels"]["job"], t["labels"]["namespace"]) for t in targets} == {(JOB, NAMESPACE)}


def test_dashboard_variables_find_the_pair(
    scraped_pair: tuple[Prometheus, tuple[BridgeProc, BridgeProc]],
) -> None:
    """The namespace and job variables' label_values queries list this deployment."""
    prom, _ = scraped_pair
    match = {"match[]": "livestream_bridge_build_info"}
    assert NAMESPACE in prom.api("label/namespace/values", **match)
    match = {"match[]": f'livestream_bridge_build_info{{namespace=~"{NAMESPACE}"}}'}
    assert prom.api("label/job/values", **match) == [JOB]


def test_every_dashboard_query_returns_series(
    scraped_pair: tuple[Prometheus, tuple[BridgeProc, BridgeProc]],
) -> None:
    """Every panel's query, its variables substituted, returns at least one series."""
    prom, _ = scraped_pair
    empty, deadline = [], time.monotonic() + 45
    for title, written in panel_queries(dashboard()):
        expr = written
        for name, value in VARIABLES.items():
            expr = expr.replace(name, value)
        result = _series_by(prom, expr, deadline)
        if not (isinstance(result, list) and result):
            empty.append(f"{title}: {expr} -> {result!r}")
    assert empty == [], "panels without data:\n" + "\n".join(empty)


def test_every_alert_expression_evaluates_on_real_series(
    scraped_pair: tuple[Prometheus, tuple[BridgeProc, BridgeProc]],
) -> None:
    """Each alert's expression is valid, and every value it judges returns series; the only
    exception is the restart alert's kube_pod_container_status_restarts_total, which
    kube-state-metrics exports in a cluster and nothing exports here."""
    prom, _ = scraped_pair
    rules = alerts(rule_file(*SHORT_WINDOWS))
    errors, empty, wrongly_present = [], set(), []
    deadline = time.monotonic() + 45
    for name, rule in rules.items():
        whole = prom.query(rule["expr"])
        if isinstance(whole, str):
            errors.append(f"{name}: {whole}")
        for part in measured_parts(rule["expr"]):
            if "absent(" in part:
                # The fallback for "no replica at all" must stay empty while replicas export.
                if prom.query(part) != []:
                    wrongly_present.append(f"{name}: {part}")
                continue
            result = _series_by(prom, part, deadline)
            if not (isinstance(result, list) and result):
                empty |= {(name, metric) for metric in metric_names(part)}
    assert errors == []
    assert wrongly_present == []
    assert {metric for _, metric in empty} == KUBE_STATE_METRICS, sorted(empty)
    assert {name for name, _ in empty} == {"LivestreamBridgePodRestarts"}


def test_loaded_rules_evaluate_cleanly_and_a_healthy_pair_fires_nothing(
    scraped_pair: tuple[Prometheus, tuple[BridgeProc, BridgeProc]],
) -> None:
    """Prometheus itself evaluates the chart's rules on the pair's series without an error,
    and none of them fires while the pair streams and commits."""
    prom, _ = scraped_pair

    def evaluated() -> list[dict[str, Any]] | None:
        found = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        done = all(r.get("lastEvaluation", "").startswith("20") for r in found)
        return found if found and done else None

    rules = wait_until(evaluated, 30, "every rule to be evaluated")
    assert {r["name"] for r in rules} == set(alerts(rule_file(*SHORT_WINDOWS)))
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    firing = [a["labels"] for a in prom.api("alerts")["alerts"] if a["state"] == "firing"]
    assert firing == []
