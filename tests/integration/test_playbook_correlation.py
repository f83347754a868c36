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
from tests.support.samples import drift_alert

BY_POD = Playbook.model_validate({
    "name": "by-pod", "match": {"rules": ["Drop and execute new binary in container"]},
    "correlation": {"key": "pod", "window_seconds": 0.3},
    "steps": [{"id": "n", "uses": "core.note", "with": {"message": "x"}}],
})
OTHER = Playbook.model_validate({
    "name": "shells", "match": {"rules": ["Terminal shell in container"]},
    "steps": [{"id": "n", "uses": "core.note", "with": {"message": "y"}}],
})


class _Sent:
    def __init__(self) -> None:
        self.started: list[str] = []

    def start(self, run_id: str) -> None:
        self.started.append(run_id)

    def run_step(self, run_id: str, step_id: str, attempt: int, timeout_s: float) -> None:
        raise AssertionError("not expected")

    def notify(self, incident_id: str) -> None:
        raise AssertionError("not expected")


@pytest.fixture
def sent() -> _Sent:
    return _Sent()


@pytest.fixture
def planned(backend_kind: str, request: pytest.FixtureRequest,
            sent: _Sent) -> Iterator[Backends]:
    opened = open_backends(make_settings(backend_kind, request),
                           planner=RunPlanner([BY_POD, OTHER]), dispatcher=sent)
    yield opened
    opened.close()


def _pod_alert(container: int, seq: int, rule: str | None = None) -> Any:
    raw = drift_alert(container, seq=seq, rule=rule)
    raw["output_fields"]["k8s.pod.name"] = "web-shared"
    return parse_alert(raw)


def test_a_playbook_can_group_a_pods_containers_into_one_incident(
    planned: Backends, sent: _Sent,
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
    time.sleep(0.5)
    later = planned.recorder.record([_pod_alert(1, 3)])
    assert first.incidents == same.incidents
    assert later.incidents != first.incidents
    assert later.opened == later.incidents
    assert len(later.runs) == 1
