"""bench/run.py and bench/stages.py, tiny: every phase and stage reports. No timing is judged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEYS = (
    "hits_per_s",
    "ceiling_hits_per_s",
    "ratio_ceiling",
    "peer_hits_per_s",
    "ratio_peer",
    "peak_rss_mib",
    "p99_ms",
    "p50_ms",
    "cpu_s_per_100k",
    "mb_per_s",
    "hits_per_s_slots2",
    "ratio_slots2",
)


@pytest.mark.integration
@pytest.mark.slow
def test_bench_run_reports_every_figure(kafka_bootstrap: str) -> None:
    """The benchmark runs end to end at a tiny size, the maxConnections = 2 phase (two
    replicas, two connections) included, and prints one JSON line with every figure the
    README quotes and the aggregate hits/s of the two slots."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap
    cmd = [sys.executable, str(ROOT / "bench" / "run.py"), "--hits", "2000"]
    cmd += ["--latency-seconds", "2", "--warmup", "1000", "--json"]
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    figures = json.loads(lines[0])
    assert set(figures) == set(KEYS)
    for key in KEYS:
        value = figures[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
        assert value > 0, (key, value)


def test_bench_stages_reports_every_stage() -> None:
    """bench/stages.py runs at a tiny size and reports a positive cost for every stage."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    cmd = [sys.executable, str(ROOT / "bench" / "stages.py"), "--hits", "500", "--repeat", "1"]
    cmd.append("--json")
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    stages = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(stages) == {
        *("gunzip", "gunzip (zlib)", "frame", "parse", "parse (orjson)"),
        *("dedupe", "dedupe (Python)", "produce", "produce (pairs)", "bare produce"),
        "lane",
    }
    assert all(isinstance(v, float) and v >= 0 for v in stages.values()), stages
    assert stages["parse"] > 0 and stages["produce"] > 0 and stages["lane"] > 0, stages
