"""Rehearsals: a playbook, an alert, mocked results and decisions in; the steps taken out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
import yaml

from responder.conducting.rehearsing import Fixture, Rehearsal, load_fixture, rehearse
from responder.playbooks.loading import load_text
from responder.playbooks.schema import Playbook
from responder.plugins import registry
from tests.support import samples

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "playbooks"
CLI = [sys.executable, "-m", "responder"]

PLAYBOOK = """\
name: respond
match: {rules: [Drop and execute new binary in container]}
steps:
  - id: note
    uses: core.note
    with:
      message: "{{ alert.rule }} in {{ incident.namespace }}/{{ incident.pod }} on {{ alert.node }}"
  - id: ask
    uses: core.approval
    with:
      approvers: ["cli:*"]
      options: [isolate, evict, dismiss]
      on_timeout: dismiss
  - id: isolated
    uses: core.note
    if: steps.ask.result.option == 'isolate'
    with: {message: "isolate by {{ steps.ask.result.decided_by | join(',') }}"}
  - id: dismissed
    uses: core.log
    if: steps.ask.result.option == 'dismiss'
    with: {message: "dismissed{{ ' on expiry' if steps.ask.result.expired else '' }}"}
"""

FLAKY = """\
name: flaky
match: {rules: [Drop and execute new binary in container]}
steps:
  - id: collect
    uses: core.note
    retries: {count: 2, backoff_seconds: 5, factor: 2}
    with: {message: collect}
  - id: after
    uses: core.log
    with: {message: "collected {{ steps.collect.status }}"}
"""


@pytest.fixture(scope="module")
def plugins() -> dict[str, registry.Plugin]:
    return {p.name: p for p in registry.load_all()}


def parse(text: str) -> Playbook:
    loaded = load_text(dedent(text), "playbook.yaml")
    assert loaded.playbook is not None, loaded.problems
    return loaded.playbook


def run(text: str, fixture: dict[str, Any], plugins: dict[str, registry.Plugin],
        file: Path = Path("rehearsal.yaml")) -> Rehearsal:
    playbook = parse(text)
    spec = {"alert": samples.load("sidekick-drop-and-execute.json"), **fixture}
    spec.setdefault("name", "a rehearsal")
    spec.setdefault("playbook", playbook.name)
    return rehearse(Fixture.model_validate(spec), file, {playbook.name: playbook}, plugins)


# -- matching expectations ------------------------------------------------------------------

def test_fixture_that_expects_what_happens_passes(plugins: dict[str, registry.Plugin]) -> None:
    result = run(PLAYBOOK, {
        "decisions": {"ask": {"option": "isolate", "by": ["cli:alice"]}},
        "expect": {"steps": ["note", "ask", "isolated"], "status": "succeeded",
                   "skipped": ["dismissed"]},
    }, plugins)
    assert result.ok, result.problems
    assert result.problems == []
    assert result.started == ["note", "ask", "isolated"]
    assert result.status == "succeeded"


def test_pure_steps_run_for_real_with_alert_data(plugins: dict[str, registry.Plugin]) -> None:
    result = run(PLAYBOOK, {
        "decisions": {"ask": {"option": "isolate", "by": ["cli:alice", "slack:U1"]}},
        "expect": {"steps": ["note", "ask", "isolated"], "status": "succeeded"},
    }, plugins)
    notes = [data["message"] for kind, data in result.audit if kind == "note"]
    assert notes == [
        "Drop and execute new binary in container in shop/web-7d9f8b6c5-x2x4q on "
        "ip-10-0-3-17.ec2.internal",
        "isolate by cli:alice,slack:U1",
    ]


def test_mismatch_in_steps_is_reported(plugins: dict[str, registry.Plugin]) -> None:
    result = run(PLAYBOOK, {
        "decisions": {"ask": {"option": "dismiss"}},
        "expect": {"steps": ["note", "ask", "isolated"], "status": "succeeded"},
    }, plugins)
    assert not result.ok
    assert result.problems == [
        "steps started ['note', 'ask', 'dismissed'], expected ['note', 'ask', 'isolated']"]


def test_mismatch_in_status_is_reported(plugins: dict[str, registry.Plugin]) -> None:
    result = run(PLAYBOOK, {
        "decisions": {"ask": {"option": "dismiss"}},
        "expect": {"steps": ["note", "ask", "dismissed"], "status": "failed"},
    }, plugins)
    assert not result.ok
    assert result.problems == ["run succeeded, expected failed"]


def test_mismatch_in_skipped_steps_is_reported(plugins: dict[str, registry.Plugin]) -> None:
    result = run(PLAYBOOK, {
        "decisions": {"ask": {"option": "dismiss"}},
        "expect": {"steps": ["note", "ask", "dismissed"], "status": "succeeded",
                   "skipped": []},
    }, plugins)
    assert not result.ok
    assert result.problems == ["steps skipped ['isolated'], expected []"]


def test_failed_run_reports_its_error_beside_the_status(
        plugins: dict[str, registry.Plugin]) -> None:
    result = run(PLAYBOOK, {
        "results": {"note": {"fail": "audit store unavailable"}},
        "expect": {"steps": ["note"], "status": "succeeded"},
    }, plugins)
    assert not result.ok
    assert result.status == "failed"
    assert result.problems == [
        "run failed, expected succeeded (step note failed: audit store unavailable)"]


# -- approvals ------------------------------------------------------------------------------

def test_missing_decision_for_an_approval_step_is_reported(
        plugins: dict[str, registry.Plugin]) -> None:
    result = run(PLAYBOOK, {
        "expect": {"steps": ["note", "ask", "isolated"], "status": "succeeded"},
    }, plugins)
    assert not result.ok
    assert result.problems == ["no decision given for approval step 'ask'"]
    assert result.started == ["note", "ask"]


def test_expired_approval_takes_the_on_timeout_option(
        plugins: dict[str, registry.Plugin]) -> None:
    result = run(PLAYBOOK, {
        "decisions": {"ask": {"expire": True}},
        "expect": {"steps": ["note", "ask", "dismissed"], "status": "succeeded"},
    }, plugins)
    assert result.ok, result.problems
    assert ("approval.expired", {"step": "ask", "on_timeout": "dismiss"}) in result.audit
    assert ("log", {"message": "dismissed on expiry"}) in result.audit


def test_expired_approval_without_on_timeout_fails_the_run(
        plugins: dict[str, registry.Plugin]) -> None:
    text = PLAYBOOK.replace("      on_timeout: dismiss\n", "")
    result = run(text, {
        "decisions": {"ask": {"expire": True}},
        "expect": {"steps": ["note", "ask"], "status": "failed",
                   "skipped": ["isolated", "dismissed"]},
    }, plugins)
    assert result.ok, result.problems


def test_expired_approval_takes_a_templated_on_timeout_as_rendered(
        plugins: dict[str, registry.Plugin]) -> None:
    text = PLAYBOOK.replace("on_timeout: dismiss",
                            "on_timeout: \"{{ 'isolate' if alert.priority == 'Critical' "
                            "else 'dismiss' }}\"")
    result = run(text, {
        "decisions": {"ask": {"expire": True}},
        "expect": {"steps": ["note", "ask", "isolated"], "status": "succeeded"},
    }, plugins)
    assert result.problems == []


# -- retries --------------------------------------------------------------------------------

def test_list_outcomes_are_taken_one_per_attempt(plugins: dict[str, registry.Plugin]) -> None:
    result = run(FLAKY, {
        "results": {"collect": [{"fail": "node agent busy"}, {"timeout": True},
                                {"result": {"message": "third time"}}]},
        "expect": {"steps": ["collect", "collect", "collect", "after"],
                   "status": "succeeded"},
    }, plugins)
    assert result.ok, result.problems
    failures = [d for k, d in result.audit if k == "step.failed"]
    assert [(d["attempt"], d["error"]) for d in failures] == [
        (1, "node agent busy"), (2, "timed out (attempt 2)")]
    # Backoff 5 s, then 10 s: each retry is due after the previous failure.
    assert failures[1]["retry_at_ns"] - failures[0]["retry_at_ns"] >= 5 * 10**9
    assert ("log", {"message": "collected succeeded"}) in result.audit


def test_retries_stop_after_their_count(plugins: dict[str, registry.Plugin]) -> None:
    result = run(FLAKY, {
        "results": {"collect": [{"fail": "one"}, {"fail": "two"}, {"fail": "three"},
                                {"result": {}}]},
        "expect": {"steps": ["collect", "collect", "collect"], "status": "failed",
                   "skipped": ["after"]},
    }, plugins)
    assert result.ok, result.problems
    assert [d["attempt"] for k, d in result.audit if k == "step.failed"] == [1, 2, 3]


def test_last_outcome_of_a_list_repeats_for_later_attempts(
        plugins: dict[str, registry.Plugin]) -> None:
    result = run(FLAKY, {
        "results": {"collect": [{"fail": "always"}]},
        "expect": {"steps": ["collect", "collect", "collect"], "status": "failed"},
    }, plugins)
    assert result.ok, result.problems


def test_failure_with_on_failure_continue_goes_on(plugins: dict[str, registry.Plugin]) -> None:
    text = FLAKY.replace("    with: {message: collect}\n",
                         "    with: {message: collect}\n    on_failure: continue\n")
    result = run(text, {
        "results": {"collect": {"fail": "always"}},
        "expect": {"steps": ["collect", "collect", "collect", "after"],
                   "status": "succeeded"},
    }, plugins)
    assert result.ok, result.problems
    assert ("log", {"message": "collected failed"}) in result.audit


# -- fixtures that cannot run ---------------------------------------------------------------

def test_unknown_playbook_is_reported(plugins: dict[str, registry.Plugin]) -> None:
    result = run(PLAYBOOK, {"playbook": "nope",
                            "expect": {"steps": [], "status": "succeeded"}}, plugins)
    assert not result.ok
    assert result.problems == ["no playbook named 'nope'"]


def test_fixture_without_an_alert_is_reported(plugins: dict[str, registry.Plugin]) -> None:
    result = run(PLAYBOOK, {"alert": None, "expect": {"steps": [], "status": "succeeded"}},
                 plugins)
    assert result.problems == ["give alert or alert_file"]


def test_invalid_alert_is_reported(plugins: dict[str, registry.Plugin]) -> None:
    result = run(PLAYBOOK, {"alert": {"rule": "x", "priority": "Loud"},
                            "expect": {"steps": [], "status": "succeeded"}}, plugins)
    assert not result.ok
    assert len(result.problems) == 1
    assert result.problems[0].startswith("the fixture's alert is invalid: priority:")


def test_alert_file_is_read_relative_to_the_fixture(
        tmp_path: Path, plugins: dict[str, registry.Plugin]) -> None:
    (tmp_path / "alerts").mkdir()
    (tmp_path / "alerts" / "shell.json").write_text(
        json.dumps(samples.load("falco-http-output-drop-and-execute.json")))
    result = run(PLAYBOOK, {
        "alert": None, "alert_file": "alerts/shell.json",
        "decisions": {"ask": {"option": "dismiss"}},
        "expect": {"steps": ["note", "ask", "dismissed"], "status": "succeeded"},
    }, plugins, file=tmp_path / "fixture.yaml")
    assert result.ok, result.problems
    first_note = next(data for kind, data in result.audit if kind == "note")
    assert first_note["message"].endswith("payments/api-5c7d8-qwert on worker-2")


def test_missing_alert_file_is_reported(tmp_path: Path,
                                        plugins: dict[str, registry.Plugin]) -> None:
    result = run(PLAYBOOK, {"alert": None, "alert_file": "alerts/missing.json",
                            "expect": {"steps": [], "status": "succeeded"}},
                 plugins, file=tmp_path / "fixture.yaml")
    assert not result.ok
    assert "missing.json" in result.problems[0]


def test_fixture_with_an_unknown_key_is_reported_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(dedent("""\
        name: typo
        playbook: respond
        alert_file: alerts/a.json
        expected:
          steps: []
          status: succeeded
        """))
    fixture, problems = load_fixture(path)
    assert fixture is None
    assert f"{path}:1:1: expect: Field required" in problems
    assert any(p.startswith(f"{path}:5:3: expected: Extra inputs") for p in problems)


# -- the command ----------------------------------------------------------------------------

def _cli(*args: str, playbooks_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFT_")}
    env["DRIFT_PLAYBOOKS_DIR"] = str(playbooks_dir)
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False, cwd=REPO)


def test_cli_test_passes_every_shipped_rehearsal() -> None:
    done = _cli("playbooks", "test", playbooks_dir=SHIPPED)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    fixtures = sorted((SHIPPED / "rehearsals").glob("*.yaml"))
    assert len(lines) == len(fixtures) > 0
    assert all(line.startswith("ok   ") for line in lines), done.stdout
    assert f"{len(fixtures)} passed, 0 failed" in done.stderr


def test_cli_test_exits_1_on_a_fixture_expecting_the_wrong_thing(tmp_path: Path) -> None:
    fixture = tmp_path / "wrong.yaml"
    fixture.write_text(yaml.safe_dump({
        "name": "expects no isolation", "playbook": "drop-and-execute",
        "alert": samples.load("sidekick-drop-and-execute.json"),
        "decisions": {"ask": {"option": "isolate"}},
        "expect": {"steps": ["summary", "ask", "dismissed"], "status": "succeeded"},
    }))
    done = _cli("playbooks", "test", str(fixture), playbooks_dir=SHIPPED)
    assert done.returncode == 1
    # kubernetes.pod_context is not mocked: it succeeds with {} (no pod found), so the decision
    # is recorded and the `unresolved` note says it was not carried out.
    assert done.stdout.splitlines() == [
        f"FAIL {fixture}: expects no isolation",
        "     steps started ['summary', 'process_tree', 'filesystem_diff', 'context', 'ask', "
        "'isolate_decided', 'unresolved'], "
        "expected ['summary', 'ask', 'dismissed']",
    ]
    assert "0 passed, 1 failed" in done.stderr


def test_cli_test_refuses_to_rehearse_playbooks_that_do_not_lint(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("name: broken\nmatch: {}\nsteps:\n"
                                          "  - {id: x, uses: nope.nope}\n")
    (tmp_path / "rehearsals").mkdir()
    done = _cli("playbooks", "test", playbooks_dir=tmp_path)
    assert done.returncode == 1
    assert "unknown plug-in 'nope.nope'" in done.stdout
    assert "fix the lint problems first" in done.stderr
