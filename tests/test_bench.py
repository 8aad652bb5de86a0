"""bench/run.py end to end, tiny: every phase runs and reports every figure. No timing is judged."""

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
)


@pytest.mark.integration
@pytest.mark.slow
def test_bench_run_reports_every_figure(kafka_bootstrap: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap
    cmd = [sys.executable, str(ROOT / "bench" / "run.py"), "--hits", "2000"]
    cmd += ["--latency-seconds", "2", "--json"]
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
