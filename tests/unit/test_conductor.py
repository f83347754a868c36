"""The conductor: a pure function from (playbook, state, event) to (state, directives).

Every test drives ``conduct`` directly, with no broker, worker or database, and checks the exact
directives it asks for and the exact state it leaves behind.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from responder.conducting import events as ev
from responder.conducting.conductor import NS, Decision, conduct, digest
from responder.conducting.state import RunState, StepState
from responder.playbooks.schema import Playbook
from responder.plugins.registry import load_all
from tests.support.variants import fuzz_examples

T0 = 1_700_000_000 * NS


@dataclass(frozen=True)
class FakeKind:
    is_approval: bool = False
    default_timeout: float = 60.0
    params: type[BaseModel] = field(default_factory=lambda: AnyParams)


class AnyParams(BaseModel):
    model_config = ConfigDict(extra="allow")


class AskParams(BaseModel):
    model_config = ConfigDict(extra="allow")
    expires_after_seconds: float = 1800


KINDS: dict[str, FakeKind] = {
    "t.work": FakeKind(default_timeout=45.0),
    "t.quick": FakeKind(default_timeout=2.5),
    "t.ask": FakeKind(is_approval=True, default_timeout=0.0, params=AskParams),
}

CONTEXT: dict[str, Any] = {
    "alert": {
        "rule": "Drop and execute new binary in container",
        "namespace": "shop",
        "pod": "web-1",
        "output": "evil {{ 7*7 }} payload",
        "tags": ["container", "drift"],
    },
    "incident": {"id": "INC-1", "namespace": "shop", "pod": "web-1", "alert_count": 3},
}


# ------------------------------------------------------------------------------- helpers


def playbook(*steps: Mapping[str, Any]) -> Playbook:
    return Playbook.model_validate(
        {"name": "contain-drift", "match": {"rules": ["Drop and execute new binary in container"]},
         "steps": [dict(s) for s in steps]})


def work(step_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "uses": "t.work", **extra}


def ask(step_id: str = "ask", **with_: Any) -> dict[str, Any]:
    params = {"options": ["isolate", "dismiss"], "approvers": ["cli:*"], **with_}
    return {"id": step_id, "uses": "t.ask", "with": params}


def fresh(pb: Playbook) -> RunState:
    return RunState.new("run-1", pb.name, [s.id for s in pb.steps])


def run(pb: Playbook, state: RunState, event: ev.Event, *,
        kinds: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None) -> Decision:
    """conduct, checking on every call that the input state is left untouched."""
    before = copy.deepcopy(state)
    decision = conduct(pb, KINDS if kinds is None else kinds, state, event,
                       CONTEXT if context is None else context)
    assert state == before
    return decision


def started(pb: Playbook, **kw: Any) -> Decision:
    return run(pb, fresh(pb), ev.Start(T0), **kw)


def audits(decision: Decision) -> list[tuple[str, dict[str, Any]]]:
    return [(d.kind, d.data) for d in decision.directives if isinstance(d, ev.Audit)]


def audit_kinds(decision: Decision) -> list[str]:
    return [d.kind for d in decision.directives if isinstance(d, ev.Audit)]


def non_audits(decision: Decision) -> list[ev.Directive]:
    return [d for d in decision.directives if not isinstance(d, ev.Audit)]


def statuses(state: RunState) -> dict[str, str]:
    return {sid: s.status for sid, s in state.steps.items()}


def independent_sha256(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def assert_stale(decision: Decision, state: RunState) -> None:
    assert decision.stale is True
    assert decision.directives == []
    assert decision.state is state


# ------------------------------------------------------------------------------- start


def test_start_audits_run_started_then_step_started_and_asks_to_run_the_first_step() -> None:
    pb = playbook(work("first", **{"with": {"rule": "{{ alert.rule }}"}}), work("second"))
    decision = started(pb)
    assert decision.stale is False
    assert audits(decision) == [
        ("run.started", {"playbook": "contain-drift", "steps": ["first", "second"]}),
        ("step.started", {"step": "first", "uses": "t.work", "attempt": 1}),
    ]
    assert non_audits(decision) == [
        ev.RunStep("first", 1, "t.work", {"rule": "Drop and execute new binary in container"},
                   45.0)]
    assert decision.directives[0] == ev.Audit(
        "run.started", {"playbook": "contain-drift", "steps": ["first", "second"]})


def test_start_leaves_the_run_running_with_the_first_step_running_and_the_rest_pending() -> None:
    pb = playbook(work("first"), work("second"), work("third"))
    state = started(pb).state
    assert state.status == "running"
    assert state.cursor == 0
    assert state.error is None
    assert statuses(state) == {"first": "running", "second": "pending", "third": "pending"}
    assert state.steps["first"] == StepState(status="running", attempt=1, result=None,
                                             error=None, started_ns=T0, finished_ns=None,
                                             due_ns=T0 + 45 * NS)


def test_start_renders_templates_inside_nested_parameters() -> None:
    pb = playbook(work("first", **{"with": {
        "target": "{{ incident.namespace }}/{{ incident.pod }}",
        "nested": {"list": ["{{ alert.pod }}", 3, "plain"], "count": "{{ incident.alert_count }}"},
        "literal": 7,
    }}))
    (run_step,) = non_audits(started(pb))
    assert isinstance(run_step, ev.RunStep)
    assert run_step.params == {
        "target": "shop/web-1",
        "nested": {"list": ["web-1", 3, "plain"], "count": 3},
        "literal": 7,
    }


def test_a_whole_string_template_keeps_the_type_of_its_expression() -> None:
    pb = playbook(work("first", **{"with": {"ids": "{{ [1,2] }}", "tags": "{{ alert.tags }}",
                                            "n": "  {{ incident.alert_count + 1 }}  "}}))
    (run_step,) = non_audits(started(pb))
    assert isinstance(run_step, ev.RunStep)
    assert run_step.params == {"ids": [1, 2], "tags": ["container", "drift"], "n": 4}
    assert type(run_step.params["ids"]) is list
    assert type(run_step.params["n"]) is int


def test_a_template_inside_an_alert_value_is_kept_as_literal_text_not_evaluated() -> None:
    pb = playbook(work("first", **{"with": {"whole": "{{ alert.output }}",
                                            "mixed": "saw: {{ alert.output }}"}}))
    (run_step,) = non_audits(started(pb))
    assert isinstance(run_step, ev.RunStep)
    assert run_step.params == {"whole": "evil {{ 7*7 }} payload",
                               "mixed": "saw: evil {{ 7*7 }} payload"}
    assert "49" not in json.dumps(run_step.params)


def test_the_step_timeout_sets_the_run_step_timeout_and_the_due_time() -> None:
    pb = playbook(work("first", timeout=7.5))
    decision = started(pb)
    (run_step,) = non_audits(decision)
    assert isinstance(run_step, ev.RunStep)
    assert run_step.timeout_s == 7.5
    assert decision.state.steps["first"].due_ns == T0 + 7_500_000_000


def test_without_a_step_timeout_the_plug_in_default_timeout_applies() -> None:
    pb = playbook({"id": "first", "uses": "t.quick"})
    decision = started(pb)
    (run_step,) = non_audits(decision)
    assert isinstance(run_step, ev.RunStep)
    assert run_step.timeout_s == 2.5
    assert decision.state.steps["first"].due_ns == T0 + 2_500_000_000


def test_the_real_registry_supplies_kinds_and_their_default_timeouts() -> None:
    pb = playbook({"id": "note", "uses": "core.note",
                   "with": {"message": "Drift in {{ incident.namespace }}/{{ incident.pod }}"}})
    decision = started(pb, kinds=load_all())
    assert non_audits(decision) == [
        ev.RunStep("note", 1, "core.note", {"message": "Drift in shop/web-1"}, 10)]
    assert decision.state.steps["note"].due_ns == T0 + 10 * NS


def test_start_does_not_mutate_the_input_state() -> None:
    pb = playbook(work("first"), work("second"))
    state = fresh(pb)
    snapshot = copy.deepcopy(state.to_json())
    decision = conduct(pb, KINDS, state, ev.Start(T0), CONTEXT)
    assert state.to_json() == snapshot
    assert state.status == "pending"
    assert state.steps["first"].status == "pending"
    assert decision.state is not state
    assert decision.state.steps["first"] is not state.steps["first"]


def test_state_round_trips_through_json_after_every_kind_of_event() -> None:
    pb = playbook(work("first", retries={"count": 1}), ask(), work("last"))
    states = []
    d = started(pb)
    states.append(d.state)
    d = run(pb, d.state, ev.StepFailed("first", 1, "boom", T0 + NS))
    states.append(d.state)
    d = run(pb, d.state, ev.RetryDue("first", 2, T0 + 3 * NS))
    states.append(d.state)
    d = run(pb, d.state, ev.StepSucceeded("first", 2, {"n": [1, {"x": None}]}, T0 + 4 * NS))
    states.append(d.state)
    d = run(pb, d.state, ev.ApprovalDecided("ask", "isolate", ["cli:alice"], T0 + 5 * NS, "ok"))
    states.append(d.state)
    d = run(pb, d.state, ev.StepSucceeded("last", 1, {}, T0 + 6 * NS))
    states.append(d.state)
    assert d.state.status == "succeeded"
    for state in states:
        text = json.dumps(state.to_json())
        assert RunState.from_json(json.loads(text)) == state
        assert RunState.from_json(json.loads(text)).to_json() == state.to_json()


# ------------------------------------------------------------------------------- sequencing


def test_a_step_success_starts_the_next_step() -> None:
    pb = playbook(work("first"), work("second", **{"with": {"x": "{{ alert.pod }}"}}))
    state = started(pb).state
    decision = run(pb, state, ev.StepSucceeded("first", 1, {"ok": True}, T0 + 5 * NS))
    assert decision.stale is False
    assert audits(decision) == [
        ("step.succeeded", {"step": "first", "uses": "t.work", "attempt": 1,
                            "result_sha256": digest({"ok": True})}),
        ("step.started", {"step": "second", "uses": "t.work", "attempt": 1}),
    ]
    assert non_audits(decision) == [ev.RunStep("second", 1, "t.work", {"x": "web-1"}, 45.0)]
    new = decision.state
    assert new.cursor == 1
    assert new.status == "running"
    assert new.steps["first"] == StepState(status="succeeded", attempt=1, result={"ok": True},
                                           error=None, started_ns=T0, finished_ns=T0 + 5 * NS,
                                           due_ns=None)
    assert new.steps["second"].status == "running"
    assert new.steps["second"].started_ns == T0 + 5 * NS
    assert new.steps["second"].due_ns == T0 + 5 * NS + 45 * NS


def test_the_last_success_finishes_the_run_as_succeeded() -> None:
    pb = playbook(work("first"), work("second"))
    state = started(pb).state
    state = run(pb, state, ev.StepSucceeded("first", 1, {}, T0 + NS)).state
    decision = run(pb, state, ev.StepSucceeded("second", 1, {"done": 1}, T0 + 2 * NS))
    assert audit_kinds(decision) == ["step.succeeded", "run.finished"]
    assert audits(decision)[-1] == ("run.finished", {"status": "succeeded"})
    assert non_audits(decision) == [ev.Finished("succeeded")]
    assert decision.directives[-1] == ev.Finished("succeeded")
    assert decision.state.status == "succeeded"
    assert decision.state.error is None
    assert decision.state.cursor == 2
    assert statuses(decision.state) == {"first": "succeeded", "second": "succeeded"}


@pytest.mark.parametrize(
    "result",
    [
        {},
        {"option": "isolate"},
        {"b": 2, "a": [1, 2, {"z": None, "y": "é"}]},
        {"nested": {"deep": {"deeper": [True, False, 1.5]}}},
    ],
)
def test_step_succeeded_audit_carries_the_sha256_of_the_result(result: dict[str, Any]) -> None:
    pb = playbook(work("only"))
    state = started(pb).state
    decision = run(pb, state, ev.StepSucceeded("only", 1, result, T0 + NS))
    ((kind, data), *_rest) = audits(decision)
    assert kind == "step.succeeded"
    assert data["result_sha256"] == digest(result)
    assert data["result_sha256"] == independent_sha256(result)
    assert decision.state.steps["only"].result == result


def test_the_digest_does_not_depend_on_key_order() -> None:
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})
    assert digest({"a": 1, "b": 2}) == independent_sha256({"a": 1, "b": 2})


def test_a_single_step_run_goes_from_pending_to_succeeded() -> None:
    pb = playbook(work("only"))
    d1 = started(pb)
    d2 = run(pb, d1.state, ev.StepSucceeded("only", 1, {"v": 1}, T0 + NS))
    kinds = audit_kinds(d1) + audit_kinds(d2)
    assert kinds == ["run.started", "step.started", "step.succeeded", "run.finished"]


# ------------------------------------------------------------------------------- staleness


def _running_two_steps() -> tuple[Playbook, RunState]:
    pb = playbook(work("first"), work("second"))
    return pb, started(pb).state


def test_a_duplicate_step_success_is_stale_and_changes_nothing() -> None:
    pb, state = _running_two_steps()
    success = ev.StepSucceeded("first", 1, {"ok": True}, T0 + NS)
    after_first = run(pb, state, success).state
    snapshot = after_first.to_json()
    decision = run(pb, after_first, success)
    assert_stale(decision, after_first)
    assert after_first.to_json() == snapshot


@pytest.mark.parametrize("attempt", [0, 2, 3])
def test_a_success_for_a_wrong_attempt_is_stale(attempt: int) -> None:
    pb, state = _running_two_steps()
    assert_stale(run(pb, state, ev.StepSucceeded("first", attempt, {}, T0 + NS)), state)


def test_a_success_for_a_step_that_is_not_running_is_stale() -> None:
    pb, state = _running_two_steps()
    assert_stale(run(pb, state, ev.StepSucceeded("second", 1, {}, T0 + NS)), state)
    assert_stale(run(pb, state, ev.StepSucceeded("second", 0, {}, T0 + NS)), state)


def test_an_event_for_an_unknown_step_is_stale() -> None:
    pb, state = _running_two_steps()
    assert_stale(run(pb, state, ev.StepSucceeded("ghost", 1, {}, T0 + NS)), state)
    assert_stale(run(pb, state, ev.StepFailed("ghost", 1, "x", T0 + NS)), state)
    assert_stale(run(pb, state, ev.ApprovalExpired("ghost", T0 + NS)), state)


def test_a_second_start_is_stale() -> None:
    pb, state = _running_two_steps()
    assert_stale(run(pb, state, ev.Start(T0 + NS)), state)


@pytest.mark.parametrize("stale_step", ["first", "second"])
@pytest.mark.parametrize("attempt", [0, 1, 2])
def test_failures_timeouts_and_retries_for_a_step_that_is_not_in_that_attempt_are_stale(
    stale_step: str, attempt: int
) -> None:
    pb = playbook(work("first", retries={"count": 1}), work("second"))
    state = run(pb, started(pb).state, ev.StepFailed("first", 1, "boom", T0 + NS)).state
    # first waits for its retry (attempt 2); second has not started.
    for event in (ev.StepFailed(stale_step, attempt, "late", T0 + 9 * NS),
                  ev.StepTimedOut(stale_step, attempt, T0 + 9 * NS),
                  ev.StepSucceeded(stale_step, attempt, {}, T0 + 9 * NS)):
        assert_stale(run(pb, state, event), state)
    if not (stale_step == "first" and attempt == 2):
        assert_stale(run(pb, state, ev.RetryDue(stale_step, attempt, T0 + 99 * NS)), state)


def _finished_runs() -> list[tuple[Playbook, RunState]]:
    ok = playbook(work("first"), ask(), work("second"))
    d = started(ok)
    d = run(ok, d.state, ev.StepSucceeded("first", 1, {}, T0 + NS))
    d = run(ok, d.state, ev.ApprovalDecided("ask", "isolate", ["cli:a"], T0 + 2 * NS))
    d = run(ok, d.state, ev.StepSucceeded("second", 1, {}, T0 + 3 * NS))
    assert d.state.status == "succeeded"
    succeeded = d.state
    bad = playbook(work("first"), ask(), work("second"))
    failed = run(bad, started(bad).state, ev.StepFailed("first", 1, "boom", T0 + NS)).state
    assert failed.status == "failed"
    return [(ok, succeeded), (bad, failed)]


AFTER_FINISH_EVENTS: list[ev.Event] = [
    ev.Start(T0 + 10 * NS),
    ev.StepSucceeded("first", 1, {}, T0 + 10 * NS),
    ev.StepSucceeded("second", 1, {}, T0 + 10 * NS),
    ev.StepFailed("first", 1, "late", T0 + 10 * NS),
    ev.StepFailed("second", 1, "late", T0 + 10 * NS),
    ev.StepTimedOut("second", 1, T0 + 10 * NS),
    ev.RetryDue("first", 2, T0 + 10 * NS),
    ev.ApprovalDecided("ask", "dismiss", ["cli:b"], T0 + 10 * NS),
    ev.ApprovalExpired("ask", T0 + 10 * NS),
]


@pytest.mark.parametrize("which", ["succeeded", "failed"])
@pytest.mark.parametrize("event", AFTER_FINISH_EVENTS, ids=lambda e: type(e).__name__)
def test_any_event_after_the_run_finished_is_stale(which: str, event: ev.Event) -> None:
    pb, state = dict(zip(["succeeded", "failed"], _finished_runs(), strict=True))[which]
    snapshot = state.to_json()
    assert_stale(run(pb, state, event), state)
    assert state.to_json() == snapshot


# ------------------------------------------------------------------------------- if


def test_a_false_if_skips_the_step_and_runs_the_next_one() -> None:
    pb = playbook(work("gated", **{"if": "alert.namespace == 'kube-system'"}), work("next"))
    decision = started(pb)
    assert audits(decision) == [
        ("run.started", {"playbook": "contain-drift", "steps": ["gated", "next"]}),
        ("step.skipped", {"step": "gated", "uses": "t.work"}),
        ("step.started", {"step": "next", "uses": "t.work", "attempt": 1}),
    ]
    assert non_audits(decision) == [ev.RunStep("next", 1, "t.work", {}, 45.0)]
    assert decision.state.steps["gated"] == StepState(status="skipped", attempt=0,
                                                      finished_ns=T0)
    assert decision.state.cursor == 1


def test_a_true_if_runs_the_step() -> None:
    pb = playbook(work("gated", **{"if": "alert.namespace == 'shop' and "
                                          "incident.alert_count >= 3"}), work("next"))
    decision = started(pb)
    assert non_audits(decision) == [ev.RunStep("gated", 1, "t.work", {}, 45.0)]
    assert statuses(decision.state) == {"gated": "running", "next": "pending"}


def test_when_every_remaining_step_is_skipped_the_run_succeeds() -> None:
    pb = playbook(work("first"), work("a", **{"if": "false"}), work("b", **{"if": "0"}))
    state = started(pb).state
    decision = run(pb, state, ev.StepSucceeded("first", 1, {}, T0 + NS))
    assert audit_kinds(decision) == ["step.succeeded", "step.skipped", "step.skipped",
                                     "run.finished"]
    assert non_audits(decision) == [ev.Finished("succeeded")]
    assert statuses(decision.state) == {"first": "succeeded", "a": "skipped", "b": "skipped"}


@pytest.mark.parametrize(("option", "expect_isolate"), [("isolate", True), ("dismiss", False)])
def test_an_if_reads_the_result_of_an_earlier_step(option: str, expect_isolate: bool) -> None:
    pb = playbook(work("decide"),
                  work("isolate", **{"if": "steps.decide.result.option == 'isolate'"}),
                  work("report"))
    state = started(pb).state
    decision = run(pb, state, ev.StepSucceeded("decide", 1, {"option": option}, T0 + NS))
    (run_step,) = non_audits(decision)
    assert isinstance(run_step, ev.RunStep)
    assert run_step.step_id == ("isolate" if expect_isolate else "report")
    assert decision.state.steps["isolate"].status == ("running" if expect_isolate
                                                      else "skipped")


def test_an_if_can_read_the_status_of_an_earlier_step() -> None:
    pb = playbook(work("first", on_failure="continue"),
                  work("rescue", **{"if": "steps.first.status == 'failed'"}))
    state = started(pb).state
    decision = run(pb, state, ev.StepFailed("first", 1, "boom", T0 + NS))
    assert non_audits(decision) == [ev.RunStep("rescue", 1, "t.work", {}, 45.0)]


def test_reading_the_result_of_a_skipped_step_is_simply_false() -> None:
    pb = playbook(work("maybe", **{"if": "false"}),
                  work("after", **{"if": "steps.maybe.result.option == 'isolate'"}),
                  work("always"))
    decision = started(pb)
    assert audit_kinds(decision) == ["run.started", "step.skipped", "step.skipped",
                                     "step.started"]
    assert non_audits(decision) == [ev.RunStep("always", 1, "t.work", {}, 45.0)]
    assert statuses(decision.state) == {"maybe": "skipped", "after": "skipped",
                                        "always": "running"}
    assert decision.state.steps["after"].error is None


def test_reading_a_step_that_does_not_exist_in_an_if_is_simply_false() -> None:
    pb = playbook(work("first", **{"if": "steps.nowhere.result.option == 'x'"}), work("second"))
    decision = started(pb)
    assert statuses(decision.state) == {"first": "skipped", "second": "running"}


def test_a_failing_if_expression_fails_the_run_by_default_without_retrying() -> None:
    pb = playbook(work("bad", **{"if": "1 / 0 > 1"}, retries={"count": 3}), work("next"))
    decision = started(pb)
    error = "if: expression '1 / 0 > 1' failed: division by zero"
    assert audits(decision) == [
        ("run.started", {"playbook": "contain-drift", "steps": ["bad", "next"]}),
        ("step.failed", {"step": "bad", "uses": "t.work", "attempt": 1, "error": error}),
        ("run.finished", {"status": "failed", "error": f"step bad failed: {error}"}),
    ]
    assert non_audits(decision) == [ev.Finished("failed")]
    assert decision.state.status == "failed"
    assert decision.state.error == f"step bad failed: {error}"
    assert statuses(decision.state) == {"bad": "failed", "next": "skipped"}
    assert decision.state.steps["bad"].error == error


def test_a_failing_if_expression_with_on_failure_continue_runs_the_next_step() -> None:
    pb = playbook(work("bad", **{"if": "undefined_function()"}, on_failure="continue"),
                  work("next"))
    decision = started(pb)
    assert audits(decision)[1] == (
        "step.failed", {"step": "bad", "uses": "t.work", "attempt": 1,
                        "error": "if: expression 'undefined_function()' failed: "
                                 "'undefined_function' is undefined"})
    assert non_audits(decision) == [ev.RunStep("next", 1, "t.work", {}, 45.0)]
    assert statuses(decision.state) == {"bad": "failed", "next": "running"}
    assert decision.state.status == "running"


def test_a_failing_if_expression_with_an_on_failure_jump_skips_to_the_target() -> None:
    pb = playbook(work("bad", **{"if": "steps.nothing.result.count > 3"}, on_failure="tail"),
                  work("middle"), work("tail"))
    decision = started(pb)
    assert audit_kinds(decision) == ["run.started", "step.failed", "step.skipped",
                                     "step.started"]
    assert audits(decision)[2] == ("step.skipped", {"step": "middle", "uses": "t.work",
                                                    "reason": "on_failure of bad"})
    assert non_audits(decision) == [ev.RunStep("tail", 1, "t.work", {}, 45.0)]
    assert statuses(decision.state) == {"bad": "failed", "middle": "skipped", "tail": "running"}


# ------------------------------------------------------------------------------- failures


def test_a_failure_with_retries_left_waits_for_a_retry_with_backoff() -> None:
    pb = playbook(work("flaky", retries={"count": 2, "backoff_seconds": 2, "factor": 3}),
                  work("next"))
    state = started(pb).state
    decision = run(pb, state, ev.StepFailed("flaky", 1, "connection reset", T0 + 5 * NS))
    retry_at = T0 + 5 * NS + 2 * NS
    assert audits(decision) == [
        ("step.failed", {"step": "flaky", "uses": "t.work", "attempt": 1,
                         "error": "connection reset", "retry_at_ns": retry_at}),
    ]
    assert non_audits(decision) == []
    assert decision.state.status == "running"
    assert decision.state.steps["flaky"] == StepState(
        status="retry_wait", attempt=1, result=None, error="connection reset", started_ns=T0,
        finished_ns=None, due_ns=retry_at)
    assert decision.state.steps["next"].status == "pending"


def test_retry_due_before_the_due_time_is_stale() -> None:
    pb = playbook(work("flaky", retries={"count": 2, "backoff_seconds": 2, "factor": 3}))
    state = run(pb, started(pb).state, ev.StepFailed("flaky", 1, "x", T0 + 5 * NS)).state
    assert_stale(run(pb, state, ev.RetryDue("flaky", 2, T0 + 7 * NS - 1)), state)


@pytest.mark.parametrize("attempt", [1, 3, 0])
def test_retry_due_for_a_wrong_attempt_is_stale(attempt: int) -> None:
    pb = playbook(work("flaky", retries={"count": 2}))
    state = run(pb, started(pb).state, ev.StepFailed("flaky", 1, "x", T0 + 5 * NS)).state
    assert_stale(run(pb, state, ev.RetryDue("flaky", attempt, T0 + 100 * NS)), state)


def test_retry_due_at_the_due_time_runs_the_next_attempt() -> None:
    pb = playbook(work("flaky", retries={"count": 2, "backoff_seconds": 2, "factor": 3},
                       timeout=20, **{"with": {"pod": "{{ alert.pod }}"}}))
    state = run(pb, started(pb).state, ev.StepFailed("flaky", 1, "x", T0 + 5 * NS)).state
    now = T0 + 7 * NS
    decision = run(pb, state, ev.RetryDue("flaky", 2, now))
    assert decision.stale is False
    assert audits(decision) == [("step.started", {"step": "flaky", "uses": "t.work",
                                                  "attempt": 2})]
    assert non_audits(decision) == [ev.RunStep("flaky", 2, "t.work", {"pod": "web-1"}, 20)]
    assert decision.state.steps["flaky"] == StepState(
        status="running", attempt=2, result=None, error=None, started_ns=T0, finished_ns=None,
        due_ns=now + 20 * NS)


def test_a_duplicate_retry_due_is_stale() -> None:
    pb = playbook(work("flaky", retries={"count": 2}))
    state = run(pb, started(pb).state, ev.StepFailed("flaky", 1, "x", T0 + 5 * NS)).state
    retry = ev.RetryDue("flaky", 2, T0 + 6 * NS)
    state = run(pb, state, retry).state
    assert_stale(run(pb, state, retry), state)


def test_the_backoff_grows_by_the_factor_with_each_attempt() -> None:
    pb = playbook(work("flaky", retries={"count": 3, "backoff_seconds": 1.5, "factor": 2}))
    state = started(pb).state
    now = T0
    retry_ats = []
    for attempt in (1, 2, 3):
        now += 100 * NS
        decision = run(pb, state, ev.StepFailed("flaky", attempt, f"e{attempt}", now))
        (_kind, data), = audits(decision)
        retry_ats.append(data["retry_at_ns"] - now)
        state = run(pb, decision.state, ev.RetryDue("flaky", attempt + 1,
                                                    data["retry_at_ns"])).state
        now = data["retry_at_ns"]
    assert retry_ats == [1_500_000_000, 3_000_000_000, 6_000_000_000]
    assert state.steps["flaky"].attempt == 4
    assert state.steps["flaky"].status == "running"


def test_exhausted_retries_fail_the_run_naming_the_step_and_skip_pending_steps() -> None:
    pb = playbook(work("first"), work("flaky", retries={"count": 1}), work("third"),
                  work("fourth"))
    state = run(pb, started(pb).state, ev.StepSucceeded("first", 1, {}, T0 + NS)).state
    state = run(pb, state, ev.StepFailed("flaky", 1, "e1", T0 + 2 * NS)).state
    state = run(pb, state, ev.RetryDue("flaky", 2, T0 + 3 * NS)).state
    decision = run(pb, state, ev.StepFailed("flaky", 2, "e2", T0 + 4 * NS))
    assert audits(decision) == [
        ("step.failed", {"step": "flaky", "uses": "t.work", "attempt": 2, "error": "e2"}),
        ("run.finished", {"status": "failed", "error": "step flaky failed: e2"}),
    ]
    assert non_audits(decision) == [ev.Finished("failed")]
    new = decision.state
    assert new.status == "failed"
    assert new.error == "step flaky failed: e2"
    assert statuses(new) == {"first": "succeeded", "flaky": "failed", "third": "skipped",
                             "fourth": "skipped"}
    assert new.steps["flaky"] == StepState(status="failed", attempt=2, result=None, error="e2",
                                           started_ns=T0 + NS, finished_ns=T0 + 4 * NS,
                                           due_ns=None)


def test_a_failure_without_retries_fails_the_run_at_once() -> None:
    pb = playbook(work("only"))
    decision = run(pb, started(pb).state, ev.StepFailed("only", 1, "nope", T0 + NS))
    assert audit_kinds(decision) == ["step.failed", "run.finished"]
    assert "retry_at_ns" not in audits(decision)[0][1]
    assert decision.state.status == "failed"
    assert decision.state.error == "step only failed: nope"


def test_on_failure_continue_runs_the_next_step_after_retries_are_exhausted() -> None:
    pb = playbook(work("flaky", on_failure="continue"), work("next"))
    decision = run(pb, started(pb).state, ev.StepFailed("flaky", 1, "boom", T0 + NS))
    assert audits(decision) == [
        ("step.failed", {"step": "flaky", "uses": "t.work", "attempt": 1, "error": "boom"}),
        ("step.started", {"step": "next", "uses": "t.work", "attempt": 1}),
    ]
    assert non_audits(decision) == [ev.RunStep("next", 1, "t.work", {}, 45.0)]
    assert decision.state.status == "running"
    assert decision.state.error is None
    assert statuses(decision.state) == {"flaky": "failed", "next": "running"}


def test_on_failure_continue_on_the_last_step_finishes_the_run_as_succeeded() -> None:
    pb = playbook(work("first"), work("last", on_failure="continue"))
    state = run(pb, started(pb).state, ev.StepSucceeded("first", 1, {}, T0 + NS)).state
    decision = run(pb, state, ev.StepFailed("last", 1, "boom", T0 + 2 * NS))
    assert audit_kinds(decision) == ["step.failed", "run.finished"]
    assert non_audits(decision) == [ev.Finished("succeeded")]
    assert decision.state.status == "succeeded"
    assert statuses(decision.state) == {"first": "succeeded", "last": "failed"}


def test_on_failure_naming_a_later_step_skips_the_steps_in_between_with_a_reason() -> None:
    pb = playbook(work("first", on_failure="cleanup"), work("b"), work("c"), work("cleanup"),
                  work("after"))
    decision = run(pb, started(pb).state, ev.StepFailed("first", 1, "boom", T0 + NS))
    assert audits(decision) == [
        ("step.failed", {"step": "first", "uses": "t.work", "attempt": 1, "error": "boom"}),
        ("step.skipped", {"step": "b", "uses": "t.work", "reason": "on_failure of first"}),
        ("step.skipped", {"step": "c", "uses": "t.work", "reason": "on_failure of first"}),
        ("step.started", {"step": "cleanup", "uses": "t.work", "attempt": 1}),
    ]
    assert non_audits(decision) == [ev.RunStep("cleanup", 1, "t.work", {}, 45.0)]
    assert decision.state.cursor == 3
    assert statuses(decision.state) == {"first": "failed", "b": "skipped", "c": "skipped",
                                        "cleanup": "running", "after": "pending"}


def test_an_on_failure_jump_target_whose_if_is_false_is_skipped_too() -> None:
    pb = playbook(work("first", on_failure="cleanup"), work("b"),
                  work("cleanup", **{"if": "false"}), work("after"))
    decision = run(pb, started(pb).state, ev.StepFailed("first", 1, "boom", T0 + NS))
    assert statuses(decision.state) == {"first": "failed", "b": "skipped",
                                        "cleanup": "skipped", "after": "running"}


def test_a_timeout_is_a_failure_with_a_timed_out_error() -> None:
    pb = playbook(work("slow", retries={"count": 1, "backoff_seconds": 4}), work("next"))
    state = started(pb).state
    decision = run(pb, state, ev.StepTimedOut("slow", 1, T0 + 45 * NS))
    assert audits(decision) == [
        ("step.failed", {"step": "slow", "uses": "t.work", "attempt": 1,
                         "error": "timed out (attempt 1)", "retry_at_ns": T0 + 49 * NS}),
    ]
    state = run(pb, decision.state, ev.RetryDue("slow", 2, T0 + 49 * NS)).state
    decision = run(pb, state, ev.StepTimedOut("slow", 2, T0 + 94 * NS))
    assert decision.state.status == "failed"
    assert decision.state.error == "step slow failed: timed out (attempt 2)"
    assert decision.state.steps["slow"].error == "timed out (attempt 2)"


def test_a_late_result_of_a_timed_out_attempt_is_stale() -> None:
    pb = playbook(work("slow", retries={"count": 1}))
    state = run(pb, started(pb).state, ev.StepTimedOut("slow", 1, T0 + 45 * NS)).state
    assert_stale(run(pb, state, ev.StepSucceeded("slow", 1, {}, T0 + 46 * NS)), state)
    state = run(pb, state, ev.RetryDue("slow", 2, T0 + 47 * NS)).state
    assert_stale(run(pb, state, ev.StepSucceeded("slow", 1, {}, T0 + 48 * NS)), state)
    decision = run(pb, state, ev.StepSucceeded("slow", 2, {"ok": 1}, T0 + 48 * NS))
    assert decision.state.status == "succeeded"


def test_a_template_error_in_with_at_run_time_fails_the_step_without_retry() -> None:
    pb = playbook(work("first"),
                  work("bad", retries={"count": 3}, **{"with": {"x": "pod {{ alert.nope }}"}}),
                  work("last"))
    decision = run(pb, started(pb).state, ev.StepSucceeded("first", 1, {}, T0 + NS))
    error = "with: template 'pod {{ alert.nope }}' failed: 'dict object' has no attribute 'nope'"
    assert audits(decision) == [
        ("step.succeeded", {"step": "first", "uses": "t.work", "attempt": 1,
                            "result_sha256": digest({})}),
        ("step.failed", {"step": "bad", "uses": "t.work", "attempt": 1, "error": error}),
        ("run.finished", {"status": "failed", "error": f"step bad failed: {error}"}),
    ]
    assert non_audits(decision) == [ev.Finished("failed")]
    assert statuses(decision.state) == {"first": "succeeded", "bad": "failed",
                                        "last": "skipped"}


def test_a_template_error_in_with_and_on_failure_continue_runs_the_next_step() -> None:
    pb = playbook(work("bad", on_failure="continue", **{"with": {"x": "{{ 1 / 0 }}"}}),
                  work("last"))
    decision = started(pb)
    assert audits(decision)[1] == (
        "step.failed", {"step": "bad", "uses": "t.work", "attempt": 1,
                        "error": "with: expression ' 1 / 0 ' failed: division by zero"})
    assert non_audits(decision) == [ev.RunStep("last", 1, "t.work", {}, 45.0)]


def test_a_template_error_on_a_retry_fails_the_step_without_another_retry() -> None:
    pb = playbook(work("flaky", retries={"count": 5},
                       **{"with": {"x": "pod {{ incident.pod }}"}}),
                  work("after"))
    state = run(pb, started(pb).state, ev.StepFailed("flaky", 1, "e1", T0 + NS)).state
    assert state.steps["flaky"].status == "retry_wait"
    gone = {"alert": CONTEXT["alert"], "incident": {"id": "INC-1"}}
    decision = run(pb, state, ev.RetryDue("flaky", 2, T0 + 2 * NS), context=gone)
    error = "with: template 'pod {{ incident.pod }}' failed: 'dict object' has no attribute 'pod'"
    assert audits(decision) == [
        ("step.failed", {"step": "flaky", "uses": "t.work", "attempt": 1, "error": error}),
        ("run.finished", {"status": "failed", "error": f"step flaky failed: {error}"}),
    ]
    assert non_audits(decision) == [ev.Finished("failed")]
    assert statuses(decision.state) == {"flaky": "failed", "after": "skipped"}


def test_a_whole_string_template_reading_a_missing_value_fails_the_step() -> None:
    """A parameter template that reads a value that is not there is an error (StrictUndefined),
    whether or not the string is one ``{{ expr }}``."""
    pb = playbook(work("bad", **{"with": {"target": "{{ alert.nope }}"}}), work("last"))
    decision = started(pb)
    assert [d for d in decision.directives if isinstance(d, ev.RunStep)] == []
    assert decision.state.steps["bad"].status == "failed"
    assert (decision.state.steps["bad"].error or "").startswith("with: ")
    assert decision.state.status == "failed"
    assert non_audits(decision) == [ev.Finished("failed")]


def test_an_unknown_plug_in_fails_the_step() -> None:
    pb = playbook({"id": "mystery", "uses": "nope.missing", "retries": {"count": 2}},
                  work("last"))
    decision = started(pb)
    error = "unknown plug-in 'nope.missing'"
    assert audits(decision) == [
        ("run.started", {"playbook": "contain-drift", "steps": ["mystery", "last"]}),
        ("step.failed", {"step": "mystery", "uses": "nope.missing", "attempt": 1,
                         "error": error}),
        ("run.finished", {"status": "failed", "error": f"step mystery failed: {error}"}),
    ]
    assert non_audits(decision) == [ev.Finished("failed")]
    assert statuses(decision.state) == {"mystery": "failed", "last": "skipped"}


def test_an_unknown_plug_in_with_on_failure_continue_runs_the_next_step() -> None:
    pb = playbook({"id": "mystery", "uses": "nope.missing", "on_failure": "continue"},
                  work("last"))
    decision = started(pb)
    assert non_audits(decision) == [ev.RunStep("last", 1, "t.work", {}, 45.0)]
    assert statuses(decision.state) == {"mystery": "failed", "last": "running"}


# ------------------------------------------------------------------------------- approvals


def _approval_playbook(**with_: Any) -> Playbook:
    return playbook(work("evidence"), ask("ask", **with_),
                    work("isolate", **{"if": "steps.ask.result.option == 'isolate'"}),
                    work("report", **{"with": {"choice": "{{ steps.ask.result.option }}"}}))


def _waiting(pb: Playbook) -> RunState:
    state = run(pb, started(pb).state, ev.StepSucceeded("evidence", 1, {}, T0 + NS)).state
    assert state.status == "waiting"
    return state


def test_an_approval_step_requests_an_approval_with_rendered_params_and_waits() -> None:
    pb = _approval_playbook(prompt="Isolate {{ incident.namespace }}/{{ incident.pod }}?",
                            expires_after_seconds=600, on_timeout="dismiss")
    state = started(pb).state
    decision = run(pb, state, ev.StepSucceeded("evidence", 1, {}, T0 + NS))
    now = T0 + NS
    assert audits(decision)[1] == ("step.started", {"step": "ask", "uses": "t.ask",
                                                    "attempt": 1})
    assert non_audits(decision) == [ev.RequestApproval(
        "ask",
        {"options": ["isolate", "dismiss"], "approvers": ["cli:*"],
         "prompt": "Isolate shop/web-1?", "expires_after_seconds": 600,
         "on_timeout": "dismiss"},
        now + 600 * NS)]
    new = decision.state
    assert new.status == "waiting"
    assert new.cursor == 1
    assert new.steps["ask"] == StepState(status="waiting", attempt=1, result=None, error=None,
                                         started_ns=now, finished_ns=None,
                                         due_ns=now + 600 * NS,
                                         params=decision.directives[-1].params)
    assert new.steps["ask"].params == {
        "options": ["isolate", "dismiss"], "approvers": ["cli:*"],
        "prompt": "Isolate shop/web-1?", "expires_after_seconds": 600, "on_timeout": "dismiss"}


def test_an_approval_without_expires_after_seconds_expires_after_1800_seconds() -> None:
    pb = playbook(ask())
    (request,) = non_audits(started(pb))
    assert isinstance(request, ev.RequestApproval)
    assert request.expires_ns == T0 + 1800 * NS


def test_an_approval_with_the_real_registry_requests_an_approval() -> None:
    pb = playbook({"id": "ask", "uses": "core.approval",
                   "with": {"prompt": "Rule {{ alert.rule }}", "approvers": ["cli:*"],
                            "expires_after_seconds": "{{ 60 * 5 }}"}})
    decision = started(pb, kinds=load_all())
    assert non_audits(decision) == [ev.RequestApproval(
        "ask", {"prompt": "Rule Drop and execute new binary in container",
                "approvers": ["cli:*"], "expires_after_seconds": 300}, T0 + 300 * NS)]
    assert decision.state.status == "waiting"


def test_step_events_for_a_waiting_approval_are_stale() -> None:
    pb = _approval_playbook()
    state = _waiting(pb)
    for event in (ev.StepSucceeded("ask", 1, {"option": "isolate"}, T0 + 2 * NS),
                  ev.StepFailed("ask", 1, "x", T0 + 2 * NS),
                  ev.StepTimedOut("ask", 1, T0 + 2 * NS),
                  ev.RetryDue("ask", 2, T0 + 2 * NS)):
        assert_stale(run(pb, state, event), state)


def test_approval_events_for_a_step_that_is_not_waiting_are_stale() -> None:
    pb = _approval_playbook()
    state = started(pb).state
    assert_stale(run(pb, state, ev.ApprovalDecided("ask", "isolate", ["cli:a"], T0 + NS)), state)
    assert_stale(run(pb, state, ev.ApprovalExpired("ask", T0 + NS)), state)
    assert_stale(run(pb, state, ev.ApprovalDecided("evidence", "isolate", ["cli:a"], T0 + NS)),
                 state)
    assert_stale(run(pb, state, ev.ApprovalExpired("evidence", T0 + NS)), state)


def test_a_decided_approval_succeeds_with_the_decision_and_the_next_step_runs() -> None:
    pb = _approval_playbook()
    state = _waiting(pb)
    now = T0 + 30 * NS
    decision = run(pb, state, ev.ApprovalDecided("ask", "isolate", ["cli:alice", "slack:U1"],
                                                 now, reason="confirmed drift"))
    result = {"option": "isolate", "decided_by": ["cli:alice", "slack:U1"], "expired": False,
              "reason": "confirmed drift"}
    assert audits(decision) == [
        ("approval.decided", {"step": "ask", "option": "isolate",
                              "decided_by": ["cli:alice", "slack:U1"],
                              "reason": "confirmed drift"}),
        ("step.succeeded", {"step": "ask", "uses": "t.ask", "attempt": 1,
                            "result_sha256": digest(result)}),
        ("step.started", {"step": "isolate", "uses": "t.work", "attempt": 1}),
    ]
    assert audits(decision)[1][1]["result_sha256"] == independent_sha256(result)
    assert non_audits(decision) == [ev.RunStep("isolate", 1, "t.work", {}, 45.0)]
    new = decision.state
    assert new.status == "running"
    assert new.steps["ask"] == StepState(status="succeeded", attempt=1, result=result,
                                         error=None, started_ns=T0 + NS, finished_ns=now,
                                         due_ns=None, params=state.steps["ask"].params)
    assert new.steps["ask"].params == {"options": ["isolate", "dismiss"], "approvers": ["cli:*"]}


def test_a_decision_without_a_reason_has_no_reason_in_its_audit() -> None:
    pb = _approval_playbook()
    decision = run(pb, _waiting(pb), ev.ApprovalDecided("ask", "dismiss", ["cli:bob"],
                                                        T0 + 2 * NS))
    assert audits(decision)[0] == ("approval.decided", {"step": "ask", "option": "dismiss",
                                                        "decided_by": ["cli:bob"]})
    assert decision.state.steps["ask"].result == {"option": "dismiss", "decided_by": ["cli:bob"],
                                                  "expired": False, "reason": None}
    # dismiss: isolate is skipped, report runs with the chosen option.
    assert non_audits(decision) == [ev.RunStep("report", 1, "t.work", {"choice": "dismiss"},
                                               45.0)]
    assert statuses(decision.state) == {"evidence": "succeeded", "ask": "succeeded",
                                        "isolate": "skipped", "report": "running"}


def test_a_second_decision_is_stale() -> None:
    pb = _approval_playbook()
    state = run(pb, _waiting(pb), ev.ApprovalDecided("ask", "isolate", ["cli:a"],
                                                     T0 + 2 * NS)).state
    for event in (ev.ApprovalDecided("ask", "isolate", ["cli:a"], T0 + 3 * NS),
                  ev.ApprovalDecided("ask", "dismiss", ["cli:b"], T0 + 3 * NS),
                  ev.ApprovalExpired("ask", T0 + 3 * NS)):
        assert_stale(run(pb, state, event), state)


def test_the_decision_list_is_copied_not_shared_with_the_event() -> None:
    pb = _approval_playbook()
    deciders = ["cli:alice"]
    decision = run(pb, _waiting(pb), ev.ApprovalDecided("ask", "isolate", deciders, T0))
    deciders.append("cli:mallory")
    assert decision.state.steps["ask"].result == {"option": "isolate",
                                                  "decided_by": ["cli:alice"],
                                                  "expired": False, "reason": None}


def test_an_expired_approval_with_on_timeout_takes_that_option() -> None:
    pb = _approval_playbook(on_timeout="dismiss", expires_after_seconds=60)
    state = _waiting(pb)
    now = T0 + 61 * NS
    decision = run(pb, state, ev.ApprovalExpired("ask", now))
    result = {"option": "dismiss", "decided_by": ["system:expiry"], "expired": True,
              "reason": None}
    assert audits(decision) == [
        ("approval.expired", {"step": "ask", "on_timeout": "dismiss"}),
        ("step.succeeded", {"step": "ask", "uses": "t.ask", "attempt": 1,
                            "result_sha256": digest(result)}),
        ("step.skipped", {"step": "isolate", "uses": "t.work"}),
        ("step.started", {"step": "report", "uses": "t.work", "attempt": 1}),
    ]
    assert decision.state.steps["ask"].result == result
    assert decision.state.steps["ask"].status == "succeeded"
    assert decision.state.steps["ask"].finished_ns == now
    assert non_audits(decision) == [ev.RunStep("report", 1, "t.work", {"choice": "dismiss"},
                                               45.0)]


def test_an_expired_approval_without_on_timeout_fails_the_run() -> None:
    pb = _approval_playbook(expires_after_seconds=60)
    decision = run(pb, _waiting(pb), ev.ApprovalExpired("ask", T0 + 61 * NS))
    error = "approval expired with no on_timeout option"
    assert audits(decision) == [
        ("approval.expired", {"step": "ask", "on_timeout": None}),
        ("step.failed", {"step": "ask", "uses": "t.ask", "attempt": 1, "error": error}),
        ("run.finished", {"status": "failed", "error": f"step ask failed: {error}"}),
    ]
    assert non_audits(decision) == [ev.Finished("failed")]
    assert decision.state.status == "failed"
    assert statuses(decision.state) == {"evidence": "succeeded", "ask": "failed",
                                        "isolate": "skipped", "report": "skipped"}


def test_an_expired_approval_without_on_timeout_is_not_retried() -> None:
    pb = playbook({**ask(), "retries": {"count": 3}, "on_failure": "continue"}, work("after"))
    state = started(pb).state
    decision = run(pb, state, ev.ApprovalExpired("ask", T0 + 1800 * NS))
    assert audits(decision)[1] == ("step.failed", {
        "step": "ask", "uses": "t.ask", "attempt": 1,
        "error": "approval expired with no on_timeout option"})
    assert non_audits(decision) == [ev.RunStep("after", 1, "t.work", {}, 45.0)]
    assert statuses(decision.state) == {"ask": "failed", "after": "running"}


def test_an_expired_approval_without_on_timeout_follows_an_on_failure_jump() -> None:
    pb = playbook({**ask(), "on_failure": "notify"}, work("isolate"), work("notify"))
    decision = run(pb, started(pb).state, ev.ApprovalExpired("ask", T0 + 1800 * NS))
    assert statuses(decision.state) == {"ask": "failed", "isolate": "skipped",
                                        "notify": "running"}
    assert audits(decision)[2] == ("step.skipped", {"step": "isolate", "uses": "t.work",
                                                    "reason": "on_failure of ask"})


def test_a_decision_after_the_expiry_event_is_stale() -> None:
    pb = _approval_playbook(on_timeout="dismiss", expires_after_seconds=60)
    state = run(pb, _waiting(pb), ev.ApprovalExpired("ask", T0 + 61 * NS)).state
    assert_stale(run(pb, state, ev.ApprovalDecided("ask", "isolate", ["cli:a"], T0 + 62 * NS)),
                 state)
    assert state.steps["ask"].result == {"option": "dismiss", "decided_by": ["system:expiry"],
                                         "expired": True, "reason": None}


def test_a_decision_made_after_the_approval_expired_is_stale() -> None:
    """The approval expires at expires_ns, recorded as the waiting step's due_ns; a decision
    made later must not win just because the expiry event has not been processed yet."""
    pb = _approval_playbook(on_timeout="dismiss", expires_after_seconds=60)
    state = _waiting(pb)
    expires = state.steps["ask"].due_ns
    assert expires == T0 + NS + 60 * NS
    late = ev.ApprovalDecided("ask", "isolate", ["cli:a"], expires + 3600 * NS)
    assert_stale(run(pb, state, late), state)


def test_an_on_timeout_template_is_rendered_like_the_other_approval_params() -> None:
    context = {**CONTEXT, "incident": {**CONTEXT["incident"], "fallback": "dismiss"}}
    pb = _approval_playbook(on_timeout="{{ incident.fallback }}", expires_after_seconds=60)
    state = run(pb, started(pb, context=context).state,
                ev.StepSucceeded("evidence", 1, {}, T0 + NS), context=context)
    (request,) = non_audits(state)
    assert isinstance(request, ev.RequestApproval)
    assert request.params["on_timeout"] == "dismiss"
    decision = run(pb, state.state, ev.ApprovalExpired("ask", T0 + 61 * NS), context=context)
    assert decision.state.steps["ask"].result == {"option": "dismiss",
                                                  "decided_by": ["system:expiry"],
                                                  "expired": True, "reason": None}


def test_an_approval_whose_expiry_renders_to_a_non_number_fails_the_step_instead_of_raising(
) -> None:
    pb = playbook({**ask(expires_after_seconds="{{ alert.rule }}"), "on_failure": "continue"},
                  work("after"))
    decision = started(pb)
    assert decision.state.steps["ask"].status == "failed"
    assert non_audits(decision) == [ev.RunStep("after", 1, "t.work", {}, 45.0)]


# ------------------------------------------------------------------------------- properties


PROPERTY_PLAYBOOKS = [
    playbook(
        work("note", retries={"count": 1, "backoff_seconds": 1}),
        ask("ask", expires_after_seconds=100),
        work("act", **{"if": "steps.ask.result.option == 'isolate'"},
             retries={"count": 2, "backoff_seconds": 0.5, "factor": 2}, on_failure="continue"),
        work("check", timeout=5, on_failure="cleanup"),
        work("extra"),
        work("cleanup", **{"with": {"pod": "{{ incident.pod }}"}}),
    ),
    playbook(
        ask("ask", on_timeout="dismiss", expires_after_seconds=10),
        work("act", **{"if": "steps.ask.result.option == 'isolate'"}, on_failure="tail"),
        {"id": "odd", "uses": "nope.missing", "on_failure": "continue"},
        work("maybe", **{"if": "steps.act.status == 'failed'"}, retries={"count": 1}),
        work("tail", retries={"count": 3, "backoff_seconds": 0}),
    ),
    playbook(
        work("only", retries={"count": 2, "backoff_seconds": 1, "factor": 3}),
    ),
    playbook(
        work("first", on_failure="continue"),
        ask("second", on_timeout="isolate"),
        work("third", **{"if": "1 / 0"}, on_failure="continue"),
        ask("fourth"),
    ),
]

ACTIVE = {"running", "waiting", "retry_wait"}
TERMINAL_STEP_AUDITS = {"step.succeeded", "step.skipped"}


def _result(draw: st.DrawFn) -> dict[str, Any]:
    small = st.integers(-(2**63), 2**63 - 1)
    return draw(st.dictionaries(st.text(max_size=5), small | st.text(max_size=5), max_size=3))


def _fitting_event(draw: st.DrawFn, state: RunState, clock: int) -> ev.Event | None:
    """An event that the run is waiting for (most of the time accepted)."""
    if state.status == "pending":
        return ev.Start(clock)
    active = [(sid, s) for sid, s in state.steps.items() if s.status in ACTIVE]
    if not active:
        return None
    sid, current = active[0]
    due = current.due_ns if current.due_ns is not None else clock
    if current.status == "running":
        now = draw(st.sampled_from([clock, due]))
        choice = draw(st.sampled_from(["ok", "ok", "fail", "timeout"]))
        if choice == "ok":
            return ev.StepSucceeded(sid, current.attempt, _result(draw), now)
        if choice == "fail":
            return ev.StepFailed(sid, current.attempt, "boom", now)
        return ev.StepTimedOut(sid, current.attempt, now)
    if current.status == "retry_wait":
        return ev.RetryDue(sid, current.attempt + 1, draw(st.sampled_from([due, due - 1])))
    now = draw(st.sampled_from([clock, due - 1, due]))
    if draw(st.booleans()):
        return ev.ApprovalExpired(sid, now)
    option = draw(st.sampled_from(["isolate", "dismiss"]))
    return ev.ApprovalDecided(sid, option, ["cli:x"], now, draw(st.none() | st.just("why")))


@st.composite
def next_event(draw: st.DrawFn, pb: Playbook, state: RunState, clock: int) -> ev.Event:
    if draw(st.integers(0, 2)) > 0:
        fitting = _fitting_event(draw, state, clock)
        if fitting is not None:
            return fitting
    ids = [s.id for s in pb.steps] + ["ghost"]
    sid = draw(st.sampled_from(ids))
    current = state.steps.get(sid, StepState())
    attempt = draw(st.sampled_from([current.attempt, current.attempt + 1, 0, 1, 2]))
    due = current.due_ns if current.due_ns is not None else clock
    now = draw(st.sampled_from([clock, due, due - 1, due + NS, clock + 10**12]))
    kind = draw(st.sampled_from(["start", "ok", "fail", "timeout", "retry", "decide",
                                 "expire"]))
    if kind == "start":
        return ev.Start(now)
    if kind == "ok":
        return ev.StepSucceeded(sid, attempt, _result(draw), now)
    if kind == "fail":
        return ev.StepFailed(sid, attempt, draw(st.text(max_size=10)), now)
    if kind == "timeout":
        return ev.StepTimedOut(sid, attempt, now)
    if kind == "retry":
        return ev.RetryDue(sid, attempt, now)
    if kind == "decide":
        option = draw(st.sampled_from(["isolate", "dismiss", "evict"]))
        return ev.ApprovalDecided(sid, option, ["cli:x"], now,
                                  draw(st.none() | st.just("because")))
    return ev.ApprovalExpired(sid, now)


def check_audit_grammar(kinds: Sequence[str], data: Sequence[dict[str, Any]]) -> None:
    if not kinds:
        return
    assert kinds[0] == "run.started"
    assert kinds.count("run.started") == 1
    assert kinds.count("run.finished") <= 1
    if "run.finished" in kinds:
        assert kinds[-1] == "run.finished"
    ended: set[str] = set()
    for kind, item in zip(kinds, data, strict=True):
        if kind in TERMINAL_STEP_AUDITS or (kind == "step.failed" and "retry_at_ns" not in item):
            assert item["step"] not in ended
            ended.add(item["step"])
        elif kind == "step.started":
            assert item["step"] not in ended


@settings(max_examples=fuzz_examples(300), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), which=st.integers(0, len(PROPERTY_PLAYBOOKS) - 1),
       length=st.integers(1, 40))
def test_random_event_sequences_never_raise_and_keep_the_run_consistent(
    data: st.DataObject, which: int, length: int
) -> None:
    pb = PROPERTY_PLAYBOOKS[which]
    state = fresh(pb)
    clock = T0
    kinds: list[str] = []
    payloads: list[dict[str, Any]] = []
    finished: list[str] = []
    for _ in range(length):
        event = data.draw(next_event(pb, state, clock))
        clock = max(clock, event.now_ns) + NS
        before = state.to_json()
        decision = conduct(pb, KINDS, state, event, CONTEXT)
        assert state.to_json() == before
        if decision.stale:
            assert decision.directives == []
            assert decision.state is state
            continue
        assert decision.directives != []
        state = decision.state
        assert RunState.from_json(json.loads(json.dumps(state.to_json()))) == state
        for directive in decision.directives:
            if isinstance(directive, ev.Audit):
                kinds.append(directive.kind)
                payloads.append(directive.data)
            elif isinstance(directive, ev.Finished):
                finished.append(directive.status)
                assert directive.status == state.status
        check_audit_grammar(kinds, payloads)
        active = [sid for sid, s in state.steps.items() if s.status in ACTIVE]
        if state.status in {"succeeded", "failed"}:
            assert active == []
            assert [sid for sid, s in state.steps.items() if s.status == "pending"] == []
            assert finished == [state.status]
            assert kinds[-1] == "run.finished"
        else:
            assert len(active) == 1
            assert finished == []
            assert "run.finished" not in kinds
            expected = "waiting" if state.steps[active[0]].status == "waiting" else "running"
            assert state.status == expected
    note_event(f"run ended {state.status}")
