"""Suppressions end to end on both backend sets: the store, the audit trail, the intake's
in-memory view of them, and HTTP intake through the real app."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, func, select
from starlette.testclient import TestClient

from responder.intake.app import create_app
from responder.intake.backends import Backends, open_backends
from responder.intake.consuming import ListConsumer
from responder.intake.planning import RunPlanner
from responder.models.alerts import parse_alert
from responder.models.priorities import Priority
from responder.models.times import now_ns
from responder.playbooks.schema import Playbook
from responder.store import audit, incidents
from responder.store import suppressions as store
from responder.store.engine import make_engine
from responder.store.schema import runs
from tests.conftest import REDIS_URL, make_settings
from tests.support.dispatching import RecordingDispatcher
from tests.support.processes import wait_for
from tests.support.samples import drift_alert

AUTH = {"Authorization": "Bearer test-token"}
RULE = "Drop and execute new binary in container"
HOUR = 3600 * store.NS
DROPS = Playbook.model_validate({
    "name": "drops", "match": {"rules": [RULE]},
    "steps": [{"id": "n", "uses": "core.note", "with": {"message": "x"}}],
})


@pytest.fixture
def sent() -> RecordingDispatcher:
    return RecordingDispatcher(starts_only=True)


@pytest.fixture
def planned(backend_kind: str, request: pytest.FixtureRequest,
            sent: RecordingDispatcher) -> Iterator[Backends]:
    opened = open_backends(make_settings(backend_kind, request), planner=RunPlanner([DROPS]),
                           dispatcher=sent)
    yield opened
    opened.close()


@pytest.fixture
def other_process(planned: Backends) -> Iterator[Engine]:
    """A second engine on the same store, as the CLI or the bot would have."""
    engine = make_engine(planned.engine.url.render_as_string(hide_password=False))
    yield engine
    engine.dispose()


def raw(container: int, *, namespace: str = "shop", seq: int = 0,
        priority: str = "Critical") -> dict[str, Any]:
    alert = drift_alert(container, seq=seq, priority=priority)
    alert["output_fields"]["k8s.ns.name"] = namespace
    return alert


def suppress(engine: Engine, match: store.Match | None = None, *, duration_ns: int = HOUR,
             created_ns: int | None = None, by: str = "cli:alice") -> store.Suppression:
    with engine.begin() as conn:
        return store.create(conn, match or store.Match(RULE, "shop"), created_by=by,
                            reason="nightly build step drops a binary", duration_ns=duration_ns,
                            now_ns=created_ns or now_ns(), source="test")


def counts(backends: Backends) -> tuple[int, int]:
    """(incidents, runs) in the store."""
    with backends.engine.connect() as conn:
        found = len(incidents.list_incidents(conn))
        run_count = int(conn.execute(select(func.count()).select_from(runs)).scalar_one())
    return found, run_count


def stored(engine: Engine, sid: str) -> store.Suppression:
    with engine.connect() as conn:
        found = store.get(conn, sid)
    assert found is not None
    return found


def test_a_suppressed_alert_is_accepted_but_opens_no_incident_and_no_run(
    planned: Backends, sent: RecordingDispatcher,
) -> None:
    made = suppress(planned.engine)
    with TestClient(create_app(planned)) as client:
        response = client.post("/v1/falco", json=raw(1), headers=AUTH)
        assert response.status_code == 202
        assert response.json() == {"accepted": 1, "incidents": [], "suppressed": 1}
        assert counts(planned) == (0, 0)

        elsewhere = client.post("/v1/falco", json=raw(2, namespace="billing"), headers=AUTH)
        assert elsewhere.status_code == 202
        assert len(elsewhere.json()["incidents"]) == 1
        assert "suppressed" not in elsewhere.json()
        assert counts(planned) == (1, 1)
        assert len(sent.started) == 1

        metrics = client.get("/metrics").text
    assert f'drift_alerts_suppressed_total{{suppression="{made.id}"}} 1.0' in metrics
    assert "drift_alerts_accepted_total 2.0" in metrics
    assert "drift_incidents_opened_total 1.0" in metrics
    assert "drift_dedup_hits_total 0.0" in metrics
    # Hit counts reach the store periodically, and at the latest when the intake stops.
    found = stored(planned.engine, made.id)
    assert found.hits == 1
    assert found.last_hit_ns is not None


def test_a_mixed_batch_records_only_what_no_suppression_covers(planned: Backends) -> None:
    suppress(planned.engine, store.Match(RULE, "shop", pod="web-1"))
    batch = [raw(1, seq=1), raw(2, seq=1), raw(1, seq=2), raw(2, seq=2), raw(3, seq=1)]
    with TestClient(create_app(planned)) as client:
        response = client.post("/v1/falco", json=batch, headers=AUTH)
    body = response.json()
    assert response.status_code == 202
    assert (body["accepted"], body["suppressed"], len(body["incidents"])) == (5, 2, 2)
    with planned.engine.connect() as conn:
        found = incidents.list_incidents(conn)
    assert sorted((i.pod, i.alert_count) for i in found) == [("web-2", 2), ("web-3", 1)]


def test_a_more_severe_alert_gets_through_a_suppression(planned: Backends) -> None:
    suppress(planned.engine)
    with TestClient(create_app(planned)) as client:
        response = client.post("/v1/falco", json=raw(1, priority="Emergency"), headers=AUTH)
    assert len(response.json()["incidents"]) == 1
    assert counts(planned) == (1, 1)


def test_a_suppression_expires_on_time_even_between_refreshes(planned: Backends) -> None:
    # Made an hour ago for an hour and a second: it lapses a second from now.
    suppress(planned.engine, created_ns=now_ns() - HOUR + store.NS)
    with TestClient(create_app(planned)) as client:
        assert client.post("/v1/falco", json=raw(1, seq=1),
                           headers=AUTH).json()["suppressed"] == 1
        time.sleep(1.1)
        response = client.post("/v1/falco", json=raw(1, seq=2), headers=AUTH)
    assert "suppressed" not in response.json()
    assert counts(planned) == (1, 1)


def test_the_intake_picks_up_suppressions_made_and_lifted_by_another_process(
    planned: Backends, other_process: Engine,
) -> None:
    cache = planned.suppressions
    assert cache is not None
    cache.refresh_s = 0.1
    with TestClient(create_app(planned)) as client:
        made = suppress(other_process)
        wait_for(lambda: len(cache.matcher) == 1, 5, 0.02, what="the refresh")
        assert client.post("/v1/falco", json=raw(1, seq=1),
                           headers=AUTH).json()["suppressed"] == 1

        with other_process.begin() as conn:
            store.lift(conn, made.id, by="slack:UALICE0001", reason="build fixed",
                       now_ns=now_ns())
        wait_for(lambda: len(cache.matcher) == 0, 5, 0.02, what="the refresh")
        response = client.post("/v1/falco", json=raw(1, seq=2), headers=AUTH)
        assert len(response.json()["incidents"]) == 1
    assert stored(other_process, made.id).hits == 1


def test_the_recorder_loads_suppressions_itself_without_the_http_app(
    planned: Backends, other_process: Engine,
) -> None:
    made = suppress(other_process)
    recorded = planned.recorder.record([parse_alert(raw(1, seq=1)), parse_alert(raw(2, seq=1))])
    assert recorded.suppressed == 2
    assert recorded.incidents == []
    assert counts(planned) == (0, 0)
    planned.recorder.flush_suppressions()
    assert stored(other_process, made.id).hits == 2


def test_the_process_that_makes_or_lifts_a_suppression_applies_it_at_once(
    planned: Backends,
) -> None:
    cache = planned.suppressions
    assert cache is not None
    cache.refresh()  # loaded: the next refresh is seconds away
    made = suppress(planned.engine)
    cache.add(made)
    assert planned.recorder.record([parse_alert(raw(1, seq=1))]).suppressed == 1
    cache.remove(made.id)
    assert planned.recorder.record([parse_alert(raw(1, seq=2))]).suppressed == 0


def test_hit_counts_of_two_intakes_add_up(planned: Backends, backend_kind: str,
                                          request: pytest.FixtureRequest) -> None:
    made = suppress(planned.engine)
    second = open_backends(make_settings(backend_kind, request))
    try:
        for backends, n in ((planned, 3), (second, 4)):
            backends.recorder.record([parse_alert(raw(1, seq=i)) for i in range(n)])
        for backends in (planned, second):
            backends.recorder.flush_suppressions()
    finally:
        second.close()
    assert stored(planned.engine, made.id).hits == 7


def test_making_and_lifting_are_audited_and_the_chain_verifies(planned: Backends) -> None:
    made = suppress(planned.engine, store.Match(RULE, "shop", pod_prefix="web-",
                                                image="registry.example.com/shop/web"))
    with planned.engine.begin() as conn:
        store.lift(conn, made.id, by="cli:bob", reason="the build no longer drops binaries",
                   now_ns=now_ns())
    with planned.engine.connect() as conn:
        records = [r for r in audit.iter_records(conn) if r.kind.startswith("suppression.")]
        assert audit.verify(conn).ok
    assert [(r.kind, r.actor) for r in records] == [
        ("suppression.created", "cli:alice"), ("suppression.lifted", "cli:bob")]
    created, lifted = records
    assert created.data["suppression"] == lifted.data["suppression"] == made.id
    assert created.data["match"] == {"rule": RULE, "namespace": "shop", "pod_prefix": "web-",
                                     "image": "registry.example.com/shop/web"}
    assert created.data["reason"] == "nightly build step drops a binary"
    assert created.data["max_priority"] == "Critical"
    assert lifted.data["reason"] == "the build no longer drops binaries"


def test_lifting_twice_an_expired_or_an_unknown_suppression_is_refused(
    planned: Backends,
) -> None:
    made = suppress(planned.engine)
    lapsed = suppress(planned.engine, created_ns=now_ns() - 2 * HOUR)
    with planned.engine.begin() as conn:
        store.lift(conn, made.id, by="cli:bob", reason="done now", now_ns=now_ns())
    for sid, error, says in ((made.id, store.NotActive, "already lifted by cli:bob"),
                             (lapsed.id, store.NotActive, "already expired"),
                             ("01NOPE", store.NotFound, "no suppression")):
        with pytest.raises(error, match=says), planned.engine.begin() as conn:
            store.lift(conn, sid, by="cli:bob", reason="done now", now_ns=now_ns())
    with planned.engine.connect() as conn:
        assert [s.id for s in store.list_suppressions(conn, now_ns=now_ns())] == []
        everything = store.list_suppressions(conn, now_ns=now_ns(), include_inactive=True)
    assert {s.id: s.status(now_ns()) for s in everything} == {
        made.id: "lifted", lapsed.id: "expired"}


@pytest.mark.parametrize(("changes", "says"), [
    ({"created_by": "mallory"}, "not an actor"),
    ({"reason": " "}, "a reason is required"),
    ({"duration_ns": 31 * 24 * HOUR}, "at most 30 days"),
    ({"match": store.Match(RULE, "")}, "a namespace is required"),
])
def test_a_suppression_without_an_actor_reason_bounds_or_scope_is_not_made(
    planned: Backends, changes: dict[str, Any], says: str,
) -> None:
    arguments: dict[str, Any] = {"match": store.Match(RULE, "shop"), "created_by": "cli:alice",
                                 "reason": "benign", "duration_ns": HOUR,
                                 "max_priority": Priority.CRITICAL, **changes}
    with pytest.raises(store.InvalidSuppression, match=says), planned.engine.begin() as conn:
        store.create(conn, now_ns=now_ns(), **arguments)
    with planned.engine.connect() as conn:
        assert store.list_suppressions(conn, now_ns=now_ns(), include_inactive=True) == []
        assert not [r for r in audit.iter_records(conn) if r.kind.startswith("suppression.")]


def test_the_redis_list_consumer_acknowledges_suppressed_alerts_without_recording_them(
    request: pytest.FixtureRequest, redis_client: redis.Redis, redis_prefix: str,
) -> None:
    backends = open_backends(make_settings("production", request))
    key = f"{redis_prefix}falco"
    try:
        made = suppress(backends.engine)
        for i in range(3):
            redis_client.rpush(key, json.dumps(raw(1, seq=i)))
        redis_client.rpush(key, json.dumps(raw(2, namespace="billing")))
        consumer = ListConsumer(redis.Redis.from_url(REDIS_URL), backends.recorder, key=key,
                                prefix=redis_prefix, batch_size=2)
        consumer.run(should_stop=lambda: redis_client.llen(key) == 0)  # flushes hits on return
        assert (consumer.stats.recorded, consumer.stats.suppressed) == (1, 3)
        assert counts(backends)[0] == 1
        assert stored(backends.engine, made.id).hits == 3
    finally:
        backends.close()
