"""A playbook's `correlation` overrides the incident key and window for the alerts it handles,
on both backend sets; runs are created with their incidents."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from responder.intake.backends import Backends, open_backends
from responder.intake.planning import RunPlanner
from responder.models.alerts import parse_alert
from responder.playbooks.schema import Playbook
from responder.store.schema import incidents, runs
from tests.conftest import make_settings
from tests.support.dispatching import RecordingDispatcher
from tests.support.samples import drift_alert

BY_POD = Playbook.model_validate({
    "name": "by-pod", "match": {"rules": ["Drop and execute new binary in container"]},
    "correlation": {"key": "pod", "window_seconds": 1.0},
    "steps": [{"id": "n", "uses": "core.note", "with": {"message": "x"}}],
})
OTHER = Playbook.model_validate({
    "name": "shells", "match": {"rules": ["Terminal shell in container"]},
    "steps": [{"id": "n", "uses": "core.note", "with": {"message": "y"}}],
})


@pytest.fixture
def sent() -> RecordingDispatcher:
    return RecordingDispatcher(starts_only=True)


@pytest.fixture
def planned(backend_kind: str, request: pytest.FixtureRequest,
            sent: RecordingDispatcher) -> Iterator[Backends]:
    opened = open_backends(make_settings(backend_kind, request),
                           planner=RunPlanner([BY_POD, OTHER]), dispatcher=sent)
    yield opened
    opened.close()


def _pod_alert(container: int, seq: int, rule: str | None = None) -> Any:
    raw = drift_alert(container, seq=seq, rule=rule)
    raw["output_fields"]["k8s.pod.name"] = "web-shared"
    return parse_alert(raw)


def test_a_playbook_can_group_a_pods_containers_into_one_incident(
    planned: Backends, sent: RecordingDispatcher,
) -> None:
    first = planned.recorder.record([_pod_alert(1, 1), _pod_alert(2, 1)])
    assert len(first.incidents) == 1
    assert first.runs == sent.started
    assert len(sent.started) == 1
    # An alert that matches another playbook keeps the default (per-container) key.
    shell = planned.recorder.record([_pod_alert(1, 2, rule="Terminal shell in container")])
    assert shell.incidents != first.incidents
    with planned.engine.connect() as conn:
        keys = sorted(r.key for r in conn.execute(select(incidents.c.key)))
        playbooks = sorted(r.playbook for r in conn.execute(select(runs.c.playbook)))
    assert keys[1] == "pod:shop/web-shared"
    assert keys[0].startswith("container:")
    assert playbooks == ["by-pod", "shells"]


def test_a_playbook_window_closes_its_incidents_sooner(planned: Backends) -> None:
    first = planned.recorder.record([_pod_alert(1, 1)])
    same = planned.recorder.record([_pod_alert(2, 2)])
    time.sleep(1.5)
    later = planned.recorder.record([_pod_alert(1, 3)])
    assert first.incidents == same.incidents
    assert later.incidents != first.incidents
    assert later.opened == later.incidents
    assert len(later.runs) == 1



DROPS = Playbook.model_validate({
    "name": "drops", "precedence": 200,
    "match": {"rules": ["Drop and execute new binary in container"]},
    "steps": [{"id": "n", "uses": "core.note", "with": {"message": "z"}}],
})


def test_a_later_alert_for_another_playbook_starts_that_playbook_once(
    backend_kind: str, request: pytest.FixtureRequest, sent: RecordingDispatcher,
) -> None:
    backends = open_backends(make_settings(backend_kind, request),
                             planner=RunPlanner([DROPS, OTHER]), dispatcher=sent)
    try:
        shell = backends.recorder.record([parse_alert(
            drift_alert(5, seq=1, rule="Terminal shell in container"))])
        # The attack chain: a shell first, then a dropped binary in the same container.
        drop = backends.recorder.record([parse_alert(drift_alert(5, seq=2)),
                                         parse_alert(drift_alert(5, seq=3))])
        again = backends.recorder.record([parse_alert(drift_alert(5, seq=4))])
        with backends.engine.connect() as conn:
            playbooks = sorted(r.playbook for r in conn.execute(select(runs.c.playbook)))
    finally:
        backends.close()
    assert drop.incidents == shell.incidents  # one incident for the container
    assert len(shell.runs) == 1
    assert len(drop.runs) == 1  # the new rule starts its own playbook
    assert again.runs == []  # once per incident and playbook
    assert playbooks == ["drops", "shells"]
    assert sent.started == shell.runs + drop.runs
