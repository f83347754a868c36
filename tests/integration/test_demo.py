"""`make demo` runs the spine on the embedded default and ends with a verified audit trail."""

from __future__ import annotations

import os
import subprocess
import sys


def test_the_demo_posts_samples_shows_incidents_and_verifies_the_audit() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFT_")}
    done = subprocess.run([sys.executable, "-m", "responder.demo"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "backends (embedded)" in out
    assert out.count("-> 202") == 6
    assert "storm: 150 more alerts" in out
    assert "alerts.received" in out
    assert "audit verify: OK" in out
