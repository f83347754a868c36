"""Evidence steps go to the queue of their node's agent while it is alive, and to the run queue
(where the plug-in falls back or fails saying why) when it is not."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from responder.intake.backends import Backends, open_backends
from responder.intake.planning import RunPlanner
from responder.models.alerts import parse_alert
from responder.models.times import now_ns
from responder.playbooks.schema import Playbook
from responder.plugins.registry import load_all
from responder.store import agents, runs
from responder.workers.agent import Heartbeat
from responder.workers.executing import Executor
from tests.conftest import make_settings
from tests.support.dispatching import RecordingDispatcher
from tests.support.samples import drift_alert


def evidence_playbook(via: str = "auto") -> Playbook:
    return Playbook.model_validate({
        "name": "evidence", "match": {"rules": ["Drop and execute new binary in container"]},
        "steps": [{"id": "tree", "uses": "evidence.process_tree",
                   "with": {"container_id": "{{ alert.container_full_id or alert.container_id }}",
                            "node": "{{ incident.node }}", "via": via}}],
    })


@pytest.fixture(params=["auto", "exec"])
def setup(backend_kind: str, request: pytest.FixtureRequest) -> Iterator[
        tuple[Backends, Executor, RecordingDispatcher, str]]:
    sent = RecordingDispatcher()
    backends = open_backends(make_settings(backend_kind, request),
                             planner=RunPlanner([evidence_playbook(request.param)]),
                             dispatcher=sent)
    executor = Executor(backends.engine, load_all(), sent, grace_s=0.2, agent_stale_s=5)
    yield backends, executor, sent, request.param
    backends.close()


def _start(backends: Backends, executor: Executor, n: int) -> tuple[str, str]:
    alert = parse_alert(drift_alert(n))
    [run_id] = backends.recorder.record([alert]).runs
    executor.start(run_id)
    assert alert.node
    return run_id, alert.node


def test_a_step_goes_to_the_agent_queue_of_its_node_only_while_that_agent_beats(
        setup: Any) -> None:
    backends, executor, sent, via = setup
    node = parse_alert(drift_alert(1)).node
    assert node
    Heartbeat(backends.engine, node, interval_s=60).beat()
    _start(backends, executor, 1)
    expected = None if via == "exec" else f"evidence.{node}"
    assert ("tree", expected) in sent.routed()


def test_a_silent_agent_is_gone_and_its_steps_stay_on_the_run_queue(setup: Any) -> None:
    backends, executor, sent, _ = setup
    node = parse_alert(drift_alert(2)).node
    assert node
    Heartbeat(backends.engine, node, interval_s=60).beat(at_ns=now_ns() - 60 * 10**9)
    _start(backends, executor, 2)
    assert ("tree", None) in sent.routed()


def test_an_agent_that_stops_cleanly_is_withdrawn_at_once(setup: Any) -> None:
    backends, executor, sent, _ = setup
    node = parse_alert(drift_alert(3)).node
    assert node
    heartbeat = Heartbeat(backends.engine, node, interval_s=60)
    heartbeat.start()
    heartbeat.stop()
    with backends.engine.connect() as conn:
        assert not agents.live(conn, node, now_ns=now_ns(), stale_ns=5 * 10**9)
    _start(backends, executor, 3)
    assert ("tree", None) in sent.routed()


def test_the_beat_routes_an_unclaimed_step_again_when_its_agent_died(setup: Any) -> None:
    backends, executor, sent, via = setup
    if via == "exec":
        pytest.skip("exec steps never go to an agent")
    node = parse_alert(drift_alert(4)).node
    assert node
    heartbeat = Heartbeat(backends.engine, node, interval_s=60)
    heartbeat.beat()
    run_id, _ = _start(backends, executor, 4)
    assert ("tree", f"evidence.{node}") in sent.routed()
    heartbeat.beat(at_ns=1)  # the agent went away before it took the message
    sent.sent.clear()
    time.sleep(0.25)  # past the dispatch grace
    assert executor.sweep()["redispatched"] == 1
    assert ("tree", None) in sent.routed()
    with backends.engine.connect() as conn:
        record = runs.load_run(conn, run_id)
    assert record is not None
    assert record.status == "running"
