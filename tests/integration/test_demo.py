"""`make demo` runs Detect -> Isolate on the embedded default and ends with a verified audit."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.processes import REPO


def test_the_demo_correlates_alerts_runs_the_playbook_through_approval_and_verifies() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFT_")}
    done = subprocess.run([sys.executable, "-m", "responder.demo"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "backends (embedded)" in out
    assert out.count("-> 202") == 6
    assert "storm: 150 more alerts" in out
    assert "[ isolate ]  [ evict ]  [ dismiss ]" in out
    assert "isolate decided by cli:demo-analyst" in out
    assert "Run drop-and-execute: succeeded" in out
    assert "approval.decided" in out
    assert "alerts.received" in out
    assert "audit verify: OK" in out
