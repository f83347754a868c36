"""One contract, two backends: embedded (SQLite + SQL correlator) and production (PostgreSQL +
Redis correlator). Storms open one incident per container and count every alert exactly."""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from responder.intake.backends import Backends, open_backends
from responder.models.alerts import parse_alert
from responder.settings import Settings
from responder.store import audit, incidents
from responder.store.schema import incidents as incidents_table
from tests.conftest import opened_backends
from tests.support.samples import drift_alert


def _alerts(container: int, n: int, **kw: Any) -> list[Any]:
    return [parse_alert(drift_alert(container, seq=i, **kw)) for i in range(n)]


def _incident_rows(backends: Backends) -> list[Any]:
    with backends.engine.connect() as conn:
        return conn.execute(select(incidents_table).order_by(incidents_table.c.key)).all()


def test_alerts_of_one_container_share_one_incident(backends: Backends) -> None:
    first = backends.recorder.record(_alerts(1, 3))
    second = backends.recorder.record(_alerts(1, 2))
    assert len(set(first.incident_ids + second.incident_ids)) == 1
    assert first.opened == first.incidents
    assert second.opened == []
    rows = _incident_rows(backends)
    assert [(r.alert_count, r.status) for r in rows] == [(5, "open")]


def test_different_containers_open_different_incidents(backends: Backends) -> None:
    result = backends.recorder.record(_alerts(1, 2) + _alerts(2, 2) + _alerts(1, 1))
    assert len(result.incidents) == 2
    assert result.incident_ids[0] == result.incident_ids[4] != result.incident_ids[2]
    assert sorted(r.alert_count for r in _incident_rows(backends)) == [2, 3]


def test_an_alert_after_the_window_opens_a_new_incident(
    backend_kind: str, request: pytest.FixtureRequest,
) -> None:
    with opened_backends(backend_kind, request, correlation_window_seconds=1.0) as backends:
        first = backends.recorder.record(_alerts(7, 1))
        again = backends.recorder.record(_alerts(7, 1))
        time.sleep(1.5)
        later = backends.recorder.record(_alerts(7, 1))
    assert first.incidents == again.incidents
    assert later.incidents != first.incidents
    assert later.opened == later.incidents


def test_incident_keeps_highest_priority_rules_and_first_known_context(
    backends: Backends,
) -> None:
    legacy_like = drift_alert(3, priority="Warning", rule="Terminal shell in container")
    legacy_like["output_fields"]["k8s.ns.name"] = "<NA>"
    backends.recorder.record([parse_alert(legacy_like)])
    backends.recorder.record(_alerts(3, 2, priority="Critical") + _alerts(3, 1, priority="Debug"))
    with backends.engine.connect() as conn:
        [view] = incidents.list_incidents(conn)
        detail = incidents.get_incident(conn, view.id)
    assert view.priority.label == "Critical"
    assert view.namespace == "shop"  # the first alert had <NA>; a later one filled it in
    assert view.alert_count == 4
    assert detail is not None
    assert detail.rule_counts == {"Terminal shell in container": 1,
                                  "Drop and execute new binary in container": 3}


def test_context_missing_from_a_batchs_first_alerts_comes_from_a_later_one_in_it(
    backends: Backends,
) -> None:
    alerts = [drift_alert(5, seq=i) for i in range(4)]
    for alert in alerts[:3]:
        alert["output_fields"]["k8s.ns.name"] = "<NA>"
        alert["output_fields"]["container.image.repository"] = "<NA>"
    alerts[2]["output_fields"]["container.image.repository"] = "registry.example.com/third"
    backends.recorder.record([parse_alert(a) for a in alerts])  # one group, one write
    with backends.engine.connect() as conn:
        [view] = incidents.list_incidents(conn)
    assert view.namespace == "shop"  # only the last alert had it
    assert view.image is not None
    assert view.image.startswith("registry.example.com/third:")
    assert view.pod == drift_alert(5)["output_fields"]["k8s.pod.name"]


def test_sample_keeps_the_first_and_the_last_alerts(backends: Backends) -> None:
    for start in range(0, 100, 7):  # uneven batches
        backends.recorder.record([parse_alert(drift_alert(4, seq=i))
                                  for i in range(start, min(start + 7, 100))])
    with backends.engine.connect() as conn:
        [view] = incidents.list_incidents(conn)
        detail = incidents.get_incident(conn, view.id)
    assert detail is not None
    ordinals = [s.ordinal for s in detail.samples]
    assert ordinals == list(range(1, 21)) + list(range(81, 101))
    assert detail.samples[0].payload["uuid"] == drift_alert(4, seq=0)["uuid"]
    assert detail.samples[-1].payload["uuid"] == drift_alert(4, seq=99)["uuid"]


def test_a_storm_is_audited_in_aggregate_not_per_alert(
    backend_kind: str, request: pytest.FixtureRequest,
) -> None:
    with opened_backends(backend_kind, request, audit_every_alerts=100) as backends:
        for _ in range(50):
            backends.recorder.record(_alerts(5, 10))
        with backends.engine.connect() as conn:
            records = list(audit.iter_records(conn))
            assert audit.verify(conn).ok
    kinds = [r.kind for r in records]
    assert kinds[0] == "incident.opened"
    assert kinds.count("incident.opened") == 1
    received = [r for r in records if r.kind == "alerts.received"]
    assert 3 <= len(received) <= 5  # 500 alerts in aggregates of >= 100, not 499 records
    assert records[0].data["alerts"] + sum(r.data["alerts"] for r in received) <= 500
    assert all(r.data["rules"] == ["Drop and execute new binary in container"]
               for r in received)


def test_incidents_due_in_one_write_each_get_their_own_received_record_in_order(
    backend_kind: str, request: pytest.FixtureRequest,
) -> None:
    with opened_backends(backend_kind, request, audit_every_alerts=3) as backends:
        shell = "Terminal shell in container"
        backends.recorder.record(_alerts(7, 1) + _alerts(8, 1, rule=shell) + _alerts(9, 1))
        backends.recorder.record(_alerts(7, 1, rule=shell))  # 7 has two rules now
        # One write: 7 and 8 come due, 9 does not (2 new of 3), 10 opens.
        backends.recorder.record(_alerts(7, 2) + _alerts(8, 3, rule=shell) + _alerts(9, 1)
                                 + _alerts(10, 1))
        with backends.engine.connect() as conn:
            records = list(audit.iter_records(conn))
            keys = {v.id: v.key for v in incidents.list_incidents(conn)}
            assert audit.verify(conn).ok
    last_write = records[3:]
    by_key = {keys[r.incident_id].removeprefix("container:")[:12]: r for r in last_write}
    assert sorted(by_key) == [f"{c:012x}" for c in (7, 8, 10)]
    assert by_key[f"{7:012x}"].data == {
        "alerts": 3, "total": 4, "rules": ["Drop and execute new binary in container", shell]}
    assert by_key[f"{8:012x}"].data == {"alerts": 3, "total": 4, "rules": [shell]}
    assert by_key[f"{10:012x}"].kind == "incident.opened"
    # The records of one write follow their incidents' order (the order rows are locked in).
    assert [r.incident_id for r in last_write] == sorted(r.incident_id for r in last_write)


def test_quiet_incidents_get_their_owed_audit_record_from_the_sweep(
    backend_kind: str, request: pytest.FixtureRequest,
) -> None:
    with opened_backends(backend_kind, request, audit_every_seconds=1.0) as backends:
        backends.recorder.record(_alerts(6, 1))
        backends.recorder.record(_alerts(6, 4))  # within the period: no record yet
        time.sleep(1.2)
        assert backends.recorder.flush_audit() == 1
        assert backends.recorder.flush_audit() == 0  # nothing owed twice
        with backends.engine.connect() as conn:
            records = list(audit.iter_records(conn))
    assert [r.kind for r in records] == ["incident.opened", "alerts.received"]
    assert records[1].data == {"alerts": 4, "total": 5,
                               "rules": ["Drop and execute new binary in container"]}


def test_a_sweep_owing_records_to_more_incidents_than_one_query_takes_writes_each_once(
    backend_kind: str, request: pytest.FixtureRequest,
) -> None:
    containers = range(1000, 2500)  # 1,500: more than one query's worth of ids
    first = [a for c in containers for a in _alerts(c, 1)]
    then = [a for c in containers for a in _alerts(c, 2)]
    with opened_backends(backend_kind, request, audit_every_seconds=3.0) as backends:
        started = time.monotonic()
        backends.recorder.record(first)
        backends.recorder.record(then)  # owed: within the period
        assert time.monotonic() - started < 3.0
        time.sleep(max(0.0, 3.2 - (time.monotonic() - started)))
        assert backends.recorder.flush_audit() == len(containers)
        with backends.engine.connect() as conn:
            received = [r for r in audit.iter_records(conn) if r.kind == "alerts.received"]
            assert audit.verify(conn).ok
    assert len({r.incident_id for r in received}) == len(containers)
    assert all(r.data == {"alerts": 2, "total": 3,
                          "rules": ["Drop and execute new binary in container"]}
               for r in received)


def test_many_threads_open_one_incident_per_container_with_exact_counts(
    backends: Backends,
) -> None:
    containers, per_batch, batches = 10, 5, 8
    errors: list[BaseException] = []

    def storm(worker: int) -> None:
        try:
            for b in range(batches):
                alerts = [parse_alert(drift_alert(c, seq=worker * 1000 + b * 10 + i))
                          for c in range(containers) for i in range(per_batch)]
                backends.recorder.record(alerts)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=storm, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = _incident_rows(backends)
    assert len(rows) == containers
    assert {r.alert_count for r in rows} == {8 * batches * per_batch}
    with backends.engine.connect() as conn:
        opened = [r for r in audit.iter_records(conn) if r.kind == "incident.opened"]
        assert len(opened) == containers
        assert audit.verify(conn).ok


def _process_storm(settings_json: str, worker: int, barrier: Any) -> None:
    backends = open_backends(Settings.model_validate_json(settings_json), migrate=False)
    barrier.wait()
    for b in range(6):
        backends.recorder.record([parse_alert(drift_alert(c, seq=worker * 1000 + b))
                                  for c in range(12) for _ in range(3)])
    backends.close()


def test_many_processes_open_one_incident_per_container_with_exact_counts(
    backends: Backends,
) -> None:
    # Fresh processes (not forks of this one, its threads and connections), forked from a
    # server that has imported this module once, rather than each importing it from scratch.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    barrier = ctx.Barrier(4)
    settings_json = backends.settings.model_dump_json()
    procs = [ctx.Process(target=_process_storm, args=(settings_json, w, barrier))
             for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    rows = _incident_rows(backends)
    assert len(rows) == 12
    assert {r.alert_count for r in rows} == {4 * 6 * 3}
    with backends.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(incidents_table)).scalar() == 12


def test_redis_losing_its_keys_does_not_split_an_open_incident(
    request: pytest.FixtureRequest, redis_client: Any,
) -> None:
    with opened_backends("production", request) as backends:
        first = backends.recorder.record(_alerts(9, 2))
        # Redis restarted without persistence: the correlation map is gone, the store is not.
        prefix = backends.settings.redis_prefix
        for key in redis_client.scan_iter(match=f"{prefix}corr:*"):
            redis_client.delete(key)
        again = backends.recorder.record(_alerts(9, 3))
        assert redis_client.exists(f"{prefix}corr:" + f"container:{9:012x}" + "ab" * 26)
    assert again.incidents == first.incidents
    assert again.opened == []
    assert [r.alert_count for r in _incident_rows(backends)] == [5]
