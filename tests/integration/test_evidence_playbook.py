"""Evidence end to end: a real container on this machine drifts, Falco's alert goes through the
real intake, the playbook's evidence steps run on a real node agent process (the host's /proc and
overlay), the artifacts are stored by hash and recorded in the audit trail before anyone is asked
to decide. Root only (cgroups, overlay mounts, namespaces). On the embedded backends in
`make test`, on PostgreSQL + Redis under `make soak`."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from responder.agent import throwaway
from responder.store import artifacts as artifacts_store
from tests.support.processes import wait_for
from tests.support.samples import drift_alert
from tests.support.stack import Stack
from tests.support.variants import production_in_soak

pytestmark = pytest.mark.skipif(throwaway.unavailable_reason() is not None,
                                reason=f"needs a real container: {throwaway.unavailable_reason()}")

NODE = "evidence-node-1"

PLAYBOOK = """
name: evidence
match:
  rules: ["Drop and execute new binary in container"]
steps:
  - id: tree
    uses: evidence.process_tree
    with:
      container_id: "{{ alert.container_full_id }}"
      node: "{{ incident.node }}"
      namespace: "{{ incident.namespace }}"
      pod: "{{ incident.pod }}"
      via: VIA
      flag_pid: "{{ alert.fields['proc.pid'] | default(none) }}"
      flag_exe: "{{ alert.fields['proc.exepath'] | default(none) }}"
    on_failure: continue
  - id: diff
    uses: evidence.filesystem_diff
    with:
      container_id: "{{ alert.container_full_id }}"
      node: "{{ incident.node }}"
      namespace: "{{ incident.namespace }}"
      pod: "{{ incident.pod }}"
      via: VIA
      flag_paths: ["{{ alert.fields['proc.exepath'] | default(none) }}"]
      quarantine: true
    on_failure: continue
  - id: ask
    uses: core.approval
    with:
      options: [isolate, dismiss]
      approvers: ["cli:alice"]
"""


@pytest.fixture(scope="module")
def container() -> Iterator[throwaway.ThrowawayContainer]:
    with throwaway.ThrowawayContainer() as built:
        yield built


def _alert(container: throwaway.ThrowawayContainer, pid: int, exe: str, n: int) -> dict[str, Any]:
    alert = drift_alert(n, node=NODE)
    fields = alert["output_fields"]
    fields["container.id"] = container.id[:12]
    fields["container.full_id"] = container.id
    fields["proc.pid"] = pid
    fields["proc.exepath"] = exe
    return alert


def _playbook(stack: Stack, via: str) -> None:
    Path(stack.env["DRIFT_PLAYBOOKS_DIR"], "evidence.yaml").write_text(
        textwrap.dedent(PLAYBOOK).replace("VIA", via))


def _result(run: dict[str, Any], step: str) -> dict[str, Any]:
    state = run["state"]["steps"][step]
    assert state["status"] == "succeeded", state
    return dict(state["result"])


@production_in_soak("stack_env")
def test_a_drift_playbook_run_shows_both_pieces_of_evidence_hashed_and_audited(
        stack: Stack, container: throwaway.ThrowawayContainer) -> None:
    dropped = f"/tmp/payload-{uuid.uuid4().hex[:8]}"  # the container is shared by backends
    pid = container.drop_and_execute(dropped)
    _playbook(stack, "node")
    stack.start("worker", "--pool", "solo", name="worker")
    agent = stack.start("agent", "--node", NODE, name="agent")
    stack.start("beat", "--interval", "0.2", name="beat")

    def agent_beating() -> bool:
        listed = stack.cli("agent", "list")
        return NODE in listed.stdout and "alive" in listed.stdout

    stack.ingest()  # starts while the agent does
    wait_for(agent_beating, 30, 0.3, what=f"the agent's heartbeat ({agent.output()[-500:]})")
    incident = stack.post(_alert(container, pid, dropped, 1))
    run = stack.wait_run(incident, "waiting", timeout=60)

    tree = _result(run, "tree")
    assert tree["method"] == "node-agent"
    assert tree["assurance"] == "high"
    assert tree["node"] == NODE
    assert [p["pid"] for p in tree["flagged"]] == [pid]
    assert tree["flagged"][0]["exe"] == dropped
    assert tree["flagged"][0]["in_upper_layer"] is True
    expected_sha = hashlib.sha256(container.dropped_binary()).hexdigest()
    assert tree["flagged"][0]["sha256"] == expected_sha
    assert tree["processes_total"] == len(container.pids())

    diff = _result(run, "diff")
    assert diff["method"] == "node-agent"
    flagged = [e for e in diff["notable"] if e["flagged"]]
    assert [(e["kind"], e["path"]) for e in flagged] == [("A", dropped)]
    assert flagged[0]["sha256"] == expected_sha
    assert flagged[0]["elf"] is True
    assert flagged[0]["quarantined"] == expected_sha
    assert diff["summary"]["added"] >= 1

    # The artifacts: content-addressed, read-only, the bytes they claim.
    store = artifacts_store.ArtifactStore(Path(stack.env["DRIFT_DATA_DIR"]) / "artifacts")
    for ref in (tree["artifact"], diff["artifact"], *diff["quarantined"]):
        assert store.verify(ref["sha256"])
        assert stat.S_IMODE(os.stat(store.path(ref["sha256"])).st_mode) == 0o400
    assert store.read_bytes(expected_sha) == container.dropped_binary()
    whole_tree = json.loads(store.read_bytes(tree["artifact"]["sha256"]))
    assert any(p["pid"] == pid and p["flagged"] for p in whole_tree["processes"])

    # Recorded in the chain, every artifact, before the approval was asked for.
    kinds = stack.audit_kinds(incident)
    collected = [i for i, k in enumerate(kinds) if k == "evidence.collected"]
    # The tree, the diff, and each quarantined executable (this one, and those dropped into the
    # shared container by earlier tests).
    assert expected_sha in {q["sha256"] for q in diff["quarantined"]}
    assert len(collected) == 2 + len(diff["quarantined"])
    assert max(collected) < kinds.index("approval.requested")
    engine = stack.engine()
    try:
        with engine.connect() as conn:
            rows = artifacts_store.for_incident(conn, incident)
    finally:
        engine.dispose()
    assert {r.sha256 for r in rows} == {tree["artifact"]["sha256"], diff["artifact"]["sha256"],
                                        *(q["sha256"] for q in diff["quarantined"])}
    assert {r.node for r in rows} == {NODE}


@production_in_soak("stack_env")
def test_without_an_agent_a_node_only_step_fails_saying_why_and_the_run_goes_on(
        stack: Stack, container: throwaway.ThrowawayContainer) -> None:
    _playbook(stack, "node")
    stack.start("worker", "--pool", "solo", name="worker")
    stack.ingest()
    incident = stack.post(_alert(container, container.init_pid, "/bin/sh", 2))
    run = stack.wait_run(incident, "waiting", timeout=60)
    for step in ("tree", "diff"):
        state = run["state"]["steps"][step]
        assert state["status"] == "failed"
        assert f"no live node agent on {NODE}" in state["error"]
        assert "via: node forbids the exec fallback" in state["error"]
