"""The executor over a real store, with a dispatcher that records what it would send."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest

from responder.intake.backends import Backends, open_backends
from responder.intake.planning import RunPlanner
from responder.models.alerts import parse_alert
from responder.models.identities import Identities
from responder.playbooks.schema import Playbook
from responder.plugins.registry import load_all
from responder.store import runs
from responder.workers.executing import Executor
from tests.conftest import make_settings
from tests.support.dispatching import RecordingDispatcher
from tests.support.samples import drift_alert

PLAYBOOK = Playbook.model_validate({
    "name": "two-notes", "match": {"rules": ["Drop and execute new binary in container"]},
    "steps": [{"id": "a", "uses": "core.note", "with": {"message": "a"}},
              {"id": "b", "uses": "core.note", "with": {"message": "b"}}],
})


@pytest.fixture
def setup(backend_kind: str, request: pytest.FixtureRequest) -> Iterator[tuple[Backends,
                                                                                  Executor,
                                                                                  RecordingDispatcher]]:
    sent = RecordingDispatcher()
    backends = open_backends(make_settings(backend_kind, request),
                             planner=RunPlanner([PLAYBOOK]), dispatcher=sent)
    executor = Executor(backends.engine, load_all(), sent, grace_s=0.2)
    yield backends, executor, sent
    backends.close()


def test_a_redelivered_start_is_stale_and_changes_nothing(setup: Any) -> None:
    backends, executor, sent = setup
    recorded = backends.recorder.record([parse_alert(drift_alert(1))])
    [run_id] = recorded.runs
    assert executor.start(run_id) is True
    assert executor.start(run_id) is False  # the same message delivered twice
    assert [s for s in sent.sent if s[0] == "run_step"] == [("run_step", run_id, "a", 1)]


def test_a_redelivered_step_runs_its_plugin_once(setup: Any) -> None:
    backends, executor, _ = setup
    [run_id] = backends.recorder.record([parse_alert(drift_alert(2))]).runs
    executor.start(run_id)
    assert executor.run_step(run_id, "a", 1) == "recorded"
    assert executor.run_step(run_id, "a", 1) == "already done"
    executor.run_step(run_id, "b", 1)
    with backends.engine.connect() as conn:
        record = runs.load_run(conn, run_id)
    assert record is not None
    assert record.status == "succeeded"


def test_the_beat_resends_a_lost_start_once_a_period_not_every_sweep(setup: Any) -> None:
    backends, executor, sent = setup
    [run_id] = backends.recorder.record([parse_alert(drift_alert(3))]).runs
    sent.sent.clear()
    assert executor.sweep()["started"] == 0  # too early: the first send may still be queued
    time.sleep(0.45)
    assert executor.sweep()["started"] == 1
    assert executor.sweep()["started"] == 0  # just re-sent: not again at the next sweep
    assert sent.sent == [("start", run_id)]


def test_a_start_that_stays_pending_is_resent_less_and_less_often(setup: Any) -> None:
    backends, executor, sent = setup
    [run_id] = backends.recorder.record([parse_alert(drift_alert(5))]).runs
    sent.sent.clear()
    resent_at: list[float] = []
    started = time.monotonic()
    while time.monotonic() - started < 2.5:
        if executor.sweep()["started"]:
            resent_at.append(time.monotonic() - started)
        time.sleep(0.02)
    # Two grace periods (0.4 s) after its creation, then at twice and four times that age
    # (0.8 s, 1.6 s; next 3.2 s): not once every 0.4 s (6 times by now), a backlog's multiplier.
    assert sent.sent == [("start", run_id)] * len(resent_at)
    assert len(resent_at) == 3, resent_at
    first_gap, second_gap = (b - a for a, b in itertools.pairwise(resent_at))
    assert first_gap < second_gap, resent_at


def test_an_unclaimed_step_is_resent_with_backoff_and_never_timed_out(setup: Any) -> None:
    backends, executor, sent = setup
    [run_id] = backends.recorder.record([parse_alert(drift_alert(4))]).runs
    executor.start(run_id)
    sent.sent.clear()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        counts = executor.sweep()
        assert counts["timed_out"] == 0
        time.sleep(0.05)
    resends = [s for s in sent.sent if s[0] == "run_step"]
    assert 2 <= len(resends) <= 4  # 0.2 s, then 0.4 s, 0.8 s...: backing off
    assert executor.run_step(run_id, "a", 1) == "recorded"  # still runnable when it arrives


TWO_PERSON = Playbook.model_validate({
    "name": "two-person", "match": {"rules": ["Drop and execute new binary in container"]},
    "steps": [{"id": "ask", "uses": "core.approval",
               "with": {"options": ["evict", "dismiss"], "approvers": ["cli:*"],
                        "two_person": ["evict"]}}],
})


def test_one_person_cannot_satisfy_the_two_person_rule_under_two_names(
    backend_kind: str, request: pytest.FixtureRequest,
) -> None:
    sent = RecordingDispatcher()
    backends = open_backends(make_settings(backend_kind, request),
                             planner=RunPlanner([TWO_PERSON]), dispatcher=sent)
    try:
        executor = Executor(backends.engine, load_all(), sent, grace_s=0.2)
        recorded = backends.recorder.record([parse_alert(drift_alert(9))])
        [run_id] = recorded.runs
        executor.start(run_id)
        [incident] = recorded.incidents
        first = executor.decide(incident_id=incident, option="evict", actor="cli:a",
                                principal="os:mallory")
        assert first.ok
        assert not first.decided
        again = executor.decide(incident_id=incident, option="evict", actor="cli:b",
                                principal="os:mallory")
        assert not again.ok
        assert "second, different approver" in again.message
        other = executor.decide(incident_id=incident, option="evict", actor="cli:c",
                                principal="os:bob")
        assert other.decided
    finally:
        backends.close()


TWO_TRANSPORTS = Playbook.model_validate({
    "name": "two-person", "match": {"rules": ["Drop and execute new binary in container"]},
    "steps": [{"id": "ask", "uses": "core.approval",
               "with": {"options": ["evict", "dismiss"], "approvers": ["cli:*", "slack:*"],
                        "two_person": ["evict"]}}],
})


@pytest.mark.parametrize("mapped", [True, False])
def test_one_person_voting_in_slack_and_with_the_cli_counts_once_when_identities_say_so(
    backend_kind: str, request: pytest.FixtureRequest, mapped: bool,
) -> None:
    sent = RecordingDispatcher()
    backends = open_backends(make_settings(backend_kind, request),
                             planner=RunPlanner([TWO_TRANSPORTS]), dispatcher=sent)
    people = Identities.parse("alice=slack:U01ALICE,os:alice" if mapped else "")
    try:
        executor = Executor(backends.engine, load_all(), sent, grace_s=0.2, identities=people)
        recorded = backends.recorder.record([parse_alert(drift_alert(10))])
        [run_id] = recorded.runs
        executor.start(run_id)
        [incident] = recorded.incidents
        in_slack = executor.decide(incident_id=incident, option="evict", actor="slack:U01ALICE")
        assert in_slack.ok
        assert not in_slack.decided
        with_cli = executor.decide(incident_id=incident, option="evict", actor="cli:alice",
                                   principal="os:alice")
        if mapped:
            assert not with_cli.ok
            assert "second, different approver" in with_cli.message
            bob = executor.decide(incident_id=incident, option="evict", actor="cli:bob",
                                  principal="os:bob")
            assert bob.decided
        else:  # nothing says os:alice is slack:U01ALICE: two people as far as we can tell
            assert with_cli.decided
    finally:
        backends.close()
