"""`make demo` runs Detect -> evidence -> Isolate on the embedded default and ends with a verified
audit."""

from __future__ import annotations

import os
import subprocess
import sys

from responder.agent import throwaway
from tests.support.processes import REPO


def test_the_demo_correlates_collects_evidence_asks_isolates_in_dry_run_and_verifies() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFT_")}
    env.pop("KUBECONFIG", None)
    done = subprocess.run([sys.executable, "-m", "responder.demo"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "backends (embedded default): store=SQLite" in out
    assert out.count("-> 202") == 6
    assert "storm: 150 more alerts" in out
    assert "[ Isolate ]  [ Evict ]  [ Dismiss ]" in out
    assert "isolate decided by cli:demo-analyst" in out
    assert "Run drop-and-execute: succeeded" in out
    # The dry run shows exactly what isolation would send, from the local API stand-in.
    assert "PATCH pod (application/merge-patch+json)" in out
    assert "drift-responder.io/quarantine:" in out
    assert "kind: NetworkPolicy" in out
    assert "approval.decided" in out
    assert "audit verify: OK" in out
    if throwaway.unavailable_reason() is None:
        # Root: a real container, real evidence from the node agent, hashed and audited.
        assert "Process tree* (node agent, high assurance)" in out
        assert "/tmp/x [upper]" in out
        assert "[memfd]" in out
        assert "Filesystem diff* (node agent, high assurance)" in out
        assert out.count("evidence.collected") == 3
        assert out.index("evidence.collected") < out.index("approval.requested")
