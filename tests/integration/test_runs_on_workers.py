"""Playbook runs end to end with real processes: ingest -> incident -> run on Celery workers ->
approval -> audit; retries from the beat; and workers killed with SIGKILL mid-run.

On the embedded backends in `make test`; on PostgreSQL + Redis under `make soak` (workers killed
on the production backends: tests/integration/test_faults_smoke.py in `make test` too)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import select

from responder.store.schema import step_leases
from tests.support.processes import wait_for
from tests.support.samples import drift_alert
from tests.support.stack import Stack
from tests.support.variants import production_in_soak

APPROVAL_PLAYBOOK = """
name: approve-then-log
match:
  rules: ["Drop and execute new binary in container"]
steps:
  - id: note
    uses: core.note
    with:
      message: "{{ alert.rule }} in {{ incident.namespace }}/{{ incident.pod }}"
  - id: ask
    uses: core.approval
    with:
      options: [isolate, dismiss]
      approvers: ["cli:alice"]
      expires_after_seconds: 600
  - id: record
    uses: core.log
    if: steps.ask.result.option == 'isolate'
    with:
      message: "isolate approved by {{ steps.ask.result.decided_by | join(',') }}"
"""

RETRY_PLAYBOOK = """
name: flaky-then-note
match:
  rules: ["Drop and execute new binary in container"]
steps:
  - id: flaky
    uses: test.flaky
    with: {times: 2}
    retries: {count: 3, backoff_seconds: 0.2, factor: 1}
  - id: done
    uses: core.note
    with: {message: "done after {{ steps.flaky.result.attempt }} attempts"}
"""

KILL_PLAYBOOK = """
name: five-steps
match:
  rules: ["Drop and execute new binary in container"]
steps:
  - {id: n1, uses: core.note, with: {message: one}}
  - {id: s1, uses: test.sleep, timeout: 3, with: {seconds: 1.5, label: first}}
  - {id: n2, uses: core.note, with: {message: two}}
  - {id: s2, uses: test.sleep, timeout: 3, with: {seconds: 1.5, label: second}}
  - {id: n3, uses: core.note, with: {message: three}}
"""


def _playbook(stack: Stack, text: str) -> None:
    Path(stack.env["DRIFT_PLAYBOOKS_DIR"], "playbook.yaml").write_text(textwrap.dedent(text))


@production_in_soak("stack_env")
def test_an_alert_runs_its_playbook_through_an_approval_to_the_end(stack: Stack) -> None:
    _playbook(stack, APPROVAL_PLAYBOOK)
    stack.start("worker", "--pool", "solo", name="worker")  # starts while the ingest does
    stack.ingest()
    incident = stack.post(drift_alert(1))
    run = stack.wait_run(incident, "waiting")
    assert run["state"]["steps"]["note"]["status"] == "succeeded"

    refused = stack.cli("approve", incident, "--option", "isolate", "--as", "mallory")
    assert refused.returncode == 1
    assert "not an approver" in refused.stderr
    decided = stack.cli("approve", incident, "--option", "isolate", "--as", "alice")
    assert decided.returncode == 0, decided.stderr
    again = stack.cli("approve", incident, "--option", "dismiss", "--as", "alice")
    assert again.returncode == 1
    assert "already decided: isolate by cli:alice" in again.stderr

    run = stack.wait_run(incident, "succeeded")
    assert run["state"]["steps"]["record"]["result"] == {
        "message": "isolate approved by cli:alice"}
    assert stack.audit_kinds(incident) == [
        "incident.opened", "run.started", "step.started", "note", "step.succeeded",
        "step.started", "approval.requested", "approval.refused", "approval.decided",
        "step.succeeded", "step.started", "log", "step.succeeded", "run.finished"]
    shown = json.loads(stack.cli("incidents", "show", incident, "--json").stdout)
    [shown_run] = shown["runs"]
    assert shown_run["playbook"] == "approve-then-log"
    assert shown_run["status"] == "succeeded"
    assert [(s["id"], s["uses"], s["status"]) for s in shown_run["steps"]] == [
        ("note", "core.note", "succeeded"), ("ask", "core.approval", "succeeded"),
        ("record", "core.log", "succeeded")]
    assert shown_run["steps"][1]["result"]["option"] == "isolate"


@production_in_soak("stack_env")
def test_failed_steps_are_retried_by_the_beat_with_backoff(stack: Stack) -> None:
    _playbook(stack, RETRY_PLAYBOOK)
    stack.start("worker", "--pool", "solo", name="worker")
    stack.start("beat", "--interval", "0.1", name="beat")
    stack.ingest()
    incident = stack.post(drift_alert(2))
    run = stack.wait_run(incident, "succeeded")
    assert run["state"]["steps"]["flaky"]["attempt"] == 3
    assert run["state"]["steps"]["done"]["result"] == {"message": "done after 3 attempts"}
    kinds = stack.audit_kinds(incident)
    assert kinds.count("step.failed") == 2
    assert kinds.count("step.started") == 4


@pytest.mark.parametrize("victim_step", ["s1", "s2"])
@production_in_soak("stack_env")
def test_a_worker_killed_mid_step_is_replaced_and_every_effect_lands_once(
    stack: Stack, victim_step: str,
) -> None:
    _playbook(stack, KILL_PLAYBOOK)
    workers = [stack.start("worker", "--pool", "solo", name=f"worker{i}") for i in range(2)]
    stack.start("beat", "--interval", "0.1", name="beat")
    stack.ingest()
    incident = stack.post(drift_alert(3))

    def holder() -> int | None:
        engine = stack.engine()
        try:
            with engine.connect() as conn:
                row = conn.execute(select(step_leases.c.owner)
                                   .where(step_leases.c.step_id == victim_step)).first()
        finally:
            engine.dispose()
        return int(row.owner.split(":")[1]) if row is not None and row.owner else None

    pid = wait_for(holder, 40, 0.02, what=f"a worker running {victim_step}")
    [victim] = [w for w in workers if w.pid == pid]
    victim.kill9()

    run = stack.wait_run(incident, "succeeded", timeout=60)
    assert [s["status"] for s in run["state"]["steps"].values()] == ["succeeded"] * 5
    kinds = stack.audit_kinds(incident)
    assert kinds.count("note") == 3
    assert kinds.count("test.effect") == 2
    assert kinds.count("step.succeeded") == 5
    assert kinds.count("run.finished") == 1
