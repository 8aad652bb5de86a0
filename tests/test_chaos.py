"""scripts/chaos in its short mode (issue 19): random faults for a minute, then the checker."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.kafkautil import REPO_ROOT
from tests.netbed import require

CHAOS = REPO_ROOT / "scripts" / "chaos"
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


def test_chaos_short_run_finds_no_violation(tmp_path: Path) -> None:
    """A 60 s chaos run (short timings, a fault every 5-12 s) ends with the checker's summary
    line last and no violation: nothing lost, doubled, out of order or zombie-visible, and
    never more than one live upstream connection."""
    require()
    done = subprocess.run(
        [str(CHAOS), "--duration", "60", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    print(done.stdout)
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-3000:]
    assert lines[0].startswith("chaos: seed="), lines[0]
    summary = dict(field.split("=", 1) for field in lines[-1].split()[1:])
    assert done.returncode == 0, f"{lines[-1]} (logs in {tmp_path}) {done.stderr[-2000:]}"
    assert int(summary["faults"]) >= 3, lines[-1]
    assert int(summary["emitted"]) > 0
    for name in ("lost", "duplicated", "unexpected", "out_of_order"):
        assert summary[name] == "0", lines[-1]
    assert summary["zombie"] == "0", lines[-1]
    assert int(summary["max_live"]) <= 1


def test_chaos_refuses_more_than_one_slot() -> None:
    """--slots other than 1 is refused with a reason (the chaos checker counts one
    connection; slots are proved by tests/test_slots.py), before anything is set up."""
    done = subprocess.run(
        [str(CHAOS), "--slots", "2", "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "issue 16" in done.stderr
