"""The Grafana dashboard: one file in two places, a structure Grafana loads, one row per
concern of the issue, and queries that select by the dashboard's variables."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.monitoring import (
    CHART_DASHBOARD,
    DASHBOARD,
    dashboard,
    exported_names,
    metric_names,
    panel_queries,
    selectors,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Each row, in order, with metrics its panels must show (the list of concerns).
ROWS = {
    "Overview": {"livestream_bridge_leader", "livestream_bridge_upstream_fatal_status"},
    "Throughput": {
        "livestream_bridge_records_received_total",
        "livestream_bridge_records_published_total",
        "livestream_bridge_upstream_compressed_bytes_total",
    },
    "Freshness": {
        "livestream_bridge_hit_freshness_seconds_bucket",
        "livestream_bridge_newest_committed_hit_age_seconds",
        "livestream_bridge_last_record_timestamp_seconds",
    },
    "Upstream connection and refusals": {
        "livestream_bridge_upstream_state",
        "livestream_bridge_upstream_backoff_seconds",
        "livestream_bridge_upstream_refusals_total",
        "livestream_bridge_upstream_fatal_status",
    },
    "Leadership": {
        "livestream_bridge_leader",
        "livestream_bridge_slot",
        "livestream_bridge_election_term",
        "livestream_bridge_leadership_transitions_total",
    },
    "Dead letters": {"livestream_bridge_records_dead_lettered_total"},
    "Kafka commits": {
        "livestream_bridge_transaction_commit_seconds_bucket",
        "livestream_bridge_kafka_unreachable_seconds",
    },
    "Queues": {"livestream_bridge_reader_queue_bytes", "livestream_bridge_producer_queue_messages"},
    "Dedupe window": {
        "livestream_bridge_dedupe_window_ids",
        "livestream_bridge_dedupe_window_capacity_ids",
        "livestream_bridge_records_deduplicated_total",
    },
    "Process": {"process_resident_memory_bytes", "process_cpu_seconds_total"},
}


@pytest.fixture(scope="module")
def dash() -> dict[str, Any]:
    return dashboard()


def _rows(dash: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Panels by the row they follow (a panel before any row belongs to none: key "")."""
    rows: dict[str, list[dict[str, Any]]] = {}
    current = ""
    for panel in dash["panels"]:
        if panel["type"] == "row":
            current = panel["title"]
            rows[current] = []
        else:
            rows.setdefault(current, []).append(panel)
    return rows


def test_repo_file_and_chart_copy_are_identical() -> None:
    """dashboards/livestream-bridge.json and the copy the chart's ConfigMap embeds agree
    (after editing one: cp dashboards/livestream-bridge.json helm/livestream-bridge/dashboards/)."""
    assert DASHBOARD.read_bytes() == CHART_DASHBOARD.read_bytes()


def test_variables_datasource_namespace_and_job(dash: dict[str, Any]) -> None:
    """A Prometheus datasource variable, and namespace and job variables queried through it
    (namespace "All" matches series without the label, outside Kubernetes)."""
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert list(variables) == ["datasource", "namespace", "job"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    namespace, job = variables["namespace"], variables["job"]
    for var in (namespace, job):
        assert var["type"] == "query"
        assert var["datasource"] == DATASOURCE
    assert namespace["definition"] == "label_values(livestream_bridge_build_info, namespace)"
    assert namespace["includeAll"] is True
    assert namespace["allValue"] == ".*"
    assert job["definition"] == (
        'label_values(livestream_bridge_build_info{namespace=~"$namespace"}, job)'
    )


def test_panel_ids_unique_and_layout_sound(dash: dict[str, Any]) -> None:
    """Panel ids are unique; every panel fits the 24-column grid and none overlaps another."""
    ids = [panel["id"] for panel in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert all(isinstance(i, int) and i > 0 for i in ids)
    cells: dict[tuple[int, int], int] = {}
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert grid["w"] > 0
        assert grid["h"] > 0
        assert grid["x"] >= 0
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = panel["id"]
    assert [p["gridPos"]["y"] for p in dash["panels"]] == sorted(
        p["gridPos"]["y"] for p in dash["panels"]
    ), "panels are listed out of their visual order (rows would take the wrong panels)"


def test_one_row_per_concern(dash: dict[str, Any]) -> None:
    """The rows are the issue's concerns, in order, each showing its metrics and nothing
    left outside a row."""
    rows = _rows(dash)
    assert "" not in rows
    assert list(rows) == list(ROWS)
    for title, needed in ROWS.items():
        assert rows[title], f"row {title} is empty"
        shown = {n for p in rows[title] for t in p["targets"] for n in metric_names(t["expr"])}
        assert needed <= shown, f"row {title} lacks {needed - shown}"


def test_every_query_selects_by_the_variables(dash: dict[str, Any]) -> None:
    """Every panel and query uses the datasource variable, and every selector in a query is
    limited to $namespace and $job."""
    for panel in dash["panels"]:
        if panel["type"] == "row":
            assert panel["panels"] == []  # an expanded row: its panels follow it
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["description"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            found = selectors(target["expr"])
            assert found, f"{panel['title']}: no selector in {target['expr']}"
            for name, matchers in found:
                assert 'namespace=~"$namespace"' in matchers, f"{panel['title']}: {name}"
                assert 'job=~"$job"' in matchers, f"{panel['title']}: {name}"


def test_queries_use_only_exported_metrics(dash: dict[str, Any]) -> None:
    """Every series a panel reads is one the bridge's registry exports."""
    used = {n for _, expr in panel_queries(dash) for n in metric_names(expr)}
    assert used - exported_names() == set()


def test_rate_windows_follow_grafana(dash: dict[str, Any]) -> None:
    """Range selectors use $__rate_interval, except the overview's fixed windows."""
    rows = _rows(dash)
    for title, panels in rows.items():
        for panel in panels:
            for target in panel["targets"]:
                windows = set(re.findall(r"\[([^\]]+)\]", target["expr"]))
                if title == "Overview":
                    assert windows <= {"5m", "15m"}, panel["title"]
                else:
                    assert windows <= {"$__rate_interval"}, panel["title"]
